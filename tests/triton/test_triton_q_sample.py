"""q_sample on the Triton backend against the NumPy reference."""
import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import reference as R

from _triton_helpers import SHAPES, assert_close32, per_sample_steps, tensor, to_numpy

SCHEDULE = fastddpm.Schedule.cosine(100)
AC = SCHEDULE.alphas_cumprod


@pytest.mark.parametrize("shape", SHAPES)
def test_q_sample_drawn_noise_per_sample_t(device, rng, shape):
    x0 = rng.standard_normal(shape).astype(np.float32)
    t = per_sample_steps(rng, shape[0], 100)
    x_t, eps = fastddpm.q_sample(SCHEDULE, tensor(x0, device), tensor(t, device, torch.int64),
                                 seed=3, stream=2, offset=5, backend="triton")
    ref_xt, ref_eps = R.q_sample(AC, x0, t, None, 3, 2, 5)
    assert x_t.device.type == device.type and x_t.shape == shape and eps.shape == shape
    assert_close32(eps, ref_eps)
    assert_close32(x_t, ref_xt)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0, 99, "0d"])
def test_q_sample_given_noise_scalar_t(device, rng, shape, t):
    x0 = rng.standard_normal(shape).astype(np.float32)
    noise = rng.standard_normal(shape).astype(np.float32)
    t_arg = torch.tensor(57, device=device) if t == "0d" else t
    t_val = 57 if t == "0d" else t
    x_t, eps = fastddpm.q_sample(SCHEDULE, tensor(x0, device), t_arg, tensor(noise, device), backend="triton")
    ref_xt, _ = R.q_sample(AC, x0, np.full(shape[0], t_val), noise)
    assert_close32(x_t, ref_xt)
    np.testing.assert_array_equal(to_numpy(eps), noise)


def test_q_sample_in_place_and_int32_t(device, rng):
    x0 = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    t = np.array([0, 99, 50, 1, 98])
    x = tensor(x0, device)
    x_t, eps = fastddpm.q_sample(SCHEDULE, x, tensor(t, device, torch.int32), seed=1, offset=2**33 + 2,
                                 out=x, backend="triton")
    assert x_t.data_ptr() == x.data_ptr()
    ref_xt, ref_eps = R.q_sample(AC, x0, t, None, 1, 0, 2**33 + 2)
    assert_close32(x_t, ref_xt)
    assert_close32(eps, ref_eps)


def test_q_sample_matches_numba(device, rng):
    """Same seed → same noise and x_t on the Triton and the Numba backend."""
    x0 = rng.standard_normal((7, 3)).astype(np.float32)
    t = per_sample_steps(rng, 7, 100)
    x_t, eps = fastddpm.q_sample(SCHEDULE, tensor(x0, device), tensor(t, device, torch.int64), seed=8,
                                 stream=6, backend="triton")
    cpu_xt, cpu_eps = fastddpm.q_sample(SCHEDULE, x0, t, seed=8, stream=6, backend="numba")
    np.testing.assert_allclose(to_numpy(eps), cpu_eps, rtol=0, atol=1e-5)
    np.testing.assert_allclose(to_numpy(x_t), cpu_xt, rtol=0, atol=1e-5)
