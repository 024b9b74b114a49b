"""ddpm_step and ddim_step on the Triton backend against the NumPy reference, every option."""
import itertools

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import reference as R

from _triton_helpers import SHAPES, assert_close32, per_sample_steps, tensor, to_numpy

T = 100
SCHEDULE = fastddpm.Schedule.linear(T)
AC = SCHEDULE.alphas_cumprod
OPTIONS = list(itertools.product(R.PREDICTIONS, R.VARIANCES, [None, 1.5]))


def _inputs(rng, shape, device):
    x = rng.standard_normal(shape).astype(np.float32)
    m = rng.standard_normal(shape).astype(np.float32)
    return x, m, tensor(x, device), tensor(m, device)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction, variance, clip", OPTIONS)
def test_ddpm_step_per_sample_t(device, rng, shape, prediction, variance, clip):
    """Per-sample t covering 0 (→ prev_t = −1, no noise) and T − 1; noise drawn in-kernel."""
    x, m, xd, md = _inputs(rng, shape, device)
    t = per_sample_steps(rng, shape[0], T)
    y = fastddpm.ddpm_step(SCHEDULE, xd, md, tensor(t, device, torch.int64), prediction=prediction,
                           variance=variance, clip=clip, seed=7, stream=3, offset=9, backend="triton")
    ref = R.ddpm_step(AC, x, m, t, t - 1, prediction, variance, clip, None, 7, 3, 9)
    assert y.shape == shape and y.device.type == device.type
    assert_close32(y, ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction, clip", list(itertools.product(R.PREDICTIONS, [None, 1.5])))
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_step_respaced(device, rng, shape, prediction, clip, eta):
    """A respaced step per sample (prev_t per sample, −1 included) at t = T − 1 and t = 0."""
    x, m, xd, md = _inputs(rng, shape, device)
    t = per_sample_steps(rng, shape[0], T)
    prev_t = np.where(t > 0, rng.integers(-1, np.maximum(t, 1)), -1)
    y = fastddpm.ddim_step(SCHEDULE, xd, md, tensor(t, device, torch.int64), prev_t=tensor(prev_t, device,
                           torch.int64), eta=eta, prediction=prediction, clip=clip, seed=4, stream=9,
                           offset=2, backend="triton")
    ref = R.ddim_step(AC, x, m, t, prev_t, eta, prediction, clip, None, 4, 9, 2)
    assert_close32(y, ref)


@pytest.mark.parametrize("step", ["ddpm", "ddim"])
@pytest.mark.parametrize("t, prev_t", [(T - 1, None), (60, 40), (30, -1), (0, None), (0, -1)])
def test_steps_int_t_given_noise(device, rng, step, t, prev_t):
    x, m, xd, md = _inputs(rng, (5, 1, 8, 8), device)
    z = rng.standard_normal(x.shape).astype(np.float32)
    p = t - 1 if prev_t is None else prev_t
    if step == "ddpm":
        y = fastddpm.ddpm_step(SCHEDULE, xd, md, t, prev_t=prev_t, variance="fixed_large",
                               noise=tensor(z, device), backend="triton")
        ref = R.ddpm_step(AC, x, m, t, p, "epsilon", "fixed_large", None, z)
    else:
        y = fastddpm.ddim_step(SCHEDULE, xd, md, t, prev_t=prev_t, eta=1.0, noise=tensor(z, device),
                               backend="triton")
        ref = R.ddim_step(AC, x, m, t, p, 1.0, "epsilon", None, z)
    assert_close32(y, ref)


@pytest.mark.parametrize("step", ["ddpm", "ddim"])
def test_steps_in_place_0d_t_and_large_offset(device, rng, step):
    """out = x_t, t and prev_t as 0-d device tensors, noise indices past 2³²."""
    x, m, xd, md = _inputs(rng, (7, 3), device)
    t, p = torch.tensor(80, device=device), torch.tensor(55, device=device)
    offset = 3 * 2**32 + 1
    if step == "ddpm":
        y = fastddpm.ddpm_step(SCHEDULE, xd, md, t, prev_t=p, seed=2**32 - 3, stream=2**31 + 5,
                               offset=offset, out=xd, backend="triton")
        ref = R.ddpm_step(AC, x, m, 80, 55, seed=2**32 - 3, stream=2**31 + 5, offset=offset)
    else:
        y = fastddpm.ddim_step(SCHEDULE, xd, md, t, prev_t=p, eta=0.3, seed=2**32 - 3, stream=2**31 + 5,
                               offset=offset, out=xd, backend="triton")
        ref = R.ddim_step(AC, x, m, 80, 55, 0.3, seed=2**32 - 3, stream=2**31 + 5, offset=offset)
    assert y.data_ptr() == xd.data_ptr()
    assert_close32(y, ref)


def test_ddpm_step_seed_as_device_tensor(device, rng):
    x, m, xd, md = _inputs(rng, (7, 3), device)
    y = fastddpm.ddpm_step(SCHEDULE, xd, md, 50, seed=torch.tensor(2**32 - 1, device=device),
                           stream=torch.tensor(12, device=device), backend="triton")
    assert_close32(y, R.ddpm_step(AC, x, m, 50, 49, seed=2**32 - 1, stream=12))


def test_sampling_loop_matches_numba(device):
    """A short ancestral loop (x_T from stream 0, step k's noise from stream k) gives the same
    samples on the Triton backend as on Numba for the same seed, to ≤ 1e-5."""
    # Well conditioned (samples stay O(1)), so 1e-5 absolute is a few float32 ulps.
    schedule = fastddpm.Schedule.linear(10, beta_start=1e-3, beta_end=0.2)
    shape, seed = (6, 2, 3, 3), 21
    like = torch.empty(0, device=device)
    x_gpu = fastddpm.randn(shape, seed=seed, stream=0, like=like, backend="triton")
    x_cpu = fastddpm.randn(shape, seed=seed, stream=0, backend="numba")
    for k, t in enumerate(range(schedule.num_steps - 1, -1, -1), start=1):
        # A fixed smooth "network" so both loops see the same function of x.
        x_gpu = fastddpm.ddpm_step(schedule, x_gpu, torch.tanh(x_gpu), t, seed=seed, stream=k,
                                   backend="triton")
        x_cpu = fastddpm.ddpm_step(schedule, x_cpu, np.tanh(x_cpu), t, seed=seed, stream=k, backend="numba")
    assert np.abs(x_cpu).max() < 10
    np.testing.assert_allclose(to_numpy(x_gpu), x_cpu, rtol=0, atol=1e-5)


def test_int64_index_path(device, rng, monkeypatch):
    """The int64 element-index variant (used past 2³¹ elements) on a small tensor."""
    import importlib

    for name in ("utils", "q_sample", "randn"):  # the modules, not the functions of that name
        module = importlib.import_module(f"fastddpm.kernels.triton.{name}")
        monkeypatch.setattr(module, "index_bits", lambda *args: True)
    x, m, xd, md = _inputs(rng, (1000, 2), device)
    t = per_sample_steps(rng, 1000, T)
    y = fastddpm.ddpm_step(SCHEDULE, xd, md, tensor(t, device, torch.int64), seed=1, stream=2, offset=7,
                           backend="triton")
    assert_close32(y, R.ddpm_step(AC, x, m, t, t - 1, seed=1, stream=2, offset=7))
    x_t, eps = fastddpm.q_sample(SCHEDULE, xd, tensor(t, device, torch.int64), seed=1, offset=2**35 + 3,
                                 backend="triton")
    ref_xt, ref_eps = R.q_sample(AC, x, t, None, 1, 0, 2**35 + 3)
    assert_close32(eps, ref_eps)
    assert_close32(x_t, ref_xt)
