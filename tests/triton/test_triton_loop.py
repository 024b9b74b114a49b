"""The Triton sampling loop (the CUDA code, graphs aside) on CPU tensors under TRITON_INTERPRET=1,
and the coefficient-row update kernel against the NumPy oracles.

The interpreter runs a kernel in NumPy, slowly: tiny batches, few steps.
"""
import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import reference as R
from fastddpm.kernels.triton.update import LoopUpdate
from fastddpm.sampling import sample
from fastddpm.sampling.plan import make_plan

from _triton_helpers import assert_close32, tensor, to_numpy

S = fastddpm.Schedule.linear(100)

LOOP_SETTINGS = [
    dict(sampler="ddpm", steps=6),
    dict(sampler="ddpm", steps=5, spacing="trailing", variance="fixed_large", clip=1.0),
    dict(sampler="ddim", steps=5, eta=0.0),
    dict(sampler="ddim", steps=5, eta=0.7, prediction="v_prediction"),
    dict(sampler="dpmpp2m", steps=5),
    dict(sampler="dpmpp2m", steps=4, prediction="sample", clip=1.5),
]


def _mlp(dim=3):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 16), torch.nn.SiLU(), torch.nn.Linear(16, dim))

    class Eps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.t_strides = []

        def forward(self, x, t):
            self.t_strides.append(t.shape[0] == 1 or t.stride(0) == 0)
            tt = (t.to(torch.float32) / 100.0).reshape(-1, 1).expand(x.shape[0], 1)
            return self.net(torch.cat([x.float(), tt], dim=1))
    return Eps().eval()


@pytest.fixture
def cpu_only(device):
    if device.type != "cpu":
        pytest.skip("the interpreter loop runs on CPU tensors")
    return device


@pytest.mark.parametrize("settings", LOOP_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_triton_loop_equals_numba_loop(cpu_only, settings):
    """Same samples as the Numba loop to float32 rounding, batches of 3 (a ragged last one,
    offsets not multiples of 4: D = 3)."""
    model = _mlp()
    host = sample(model, S, 7, sample_shape=(3,), seed=4, batch_size=3, progress=False, **settings)
    model.t_strides.clear()
    dev = sample(model, S, 7, sample_shape=(3,), seed=4, batch_size=3, progress=False, backend="triton",
                 **settings)
    assert isinstance(dev, torch.Tensor) and dev.dtype == torch.float32
    np.testing.assert_allclose(dev.numpy(), host, rtol=1e-5, atol=1e-5)
    assert np.isfinite(host).all()
    # The network saw t as a stride-0 view of one device scalar.
    assert all(model.t_strides)


def test_triton_loop_bfloat16_and_float16(cpu_only):
    model = _mlp()
    ref = sample(model, S, 4, sample_shape=(3,), seed=1, sampler="ddim", steps=4, eta=0.5, progress=False)
    for dtype in (torch.float16, torch.bfloat16):
        x = sample(model, S, 4, sample_shape=(3,), seed=1, sampler="ddim", steps=4, eta=0.5, progress=False,
                   backend="triton", dtype=dtype)
        assert x.dtype == dtype
        # Storage rounding per step (4 steps), float32 math.
        np.testing.assert_allclose(x.float().numpy(), ref, atol=8 * torch.finfo(dtype).eps * np.abs(ref).max())


def test_triton_loop_trajectory_and_nonfinite(cpu_only):
    model = _mlp()
    x, traj = sample(model, S, 2, sample_shape=(3,), seed=2, sampler="ddpm", steps=3, progress=False,
                     backend="triton", return_trajectory=True)
    assert traj.positions == [0, 1, 2, 3]
    np.testing.assert_array_equal(traj.x[-1].numpy(), x.numpy())
    np.testing.assert_allclose(traj.x[0].numpy(), R.randn(6, seed=2, stream=0).reshape(2, 3), atol=2e-6)

    class Bad(torch.nn.Module):
        def forward(self, x, t):
            return torch.where(t[:, None] < 50, torch.nan, 0.0) * x
    with pytest.raises(FloatingPointError, match="step"):
        sample(Bad(), S, 2, sample_shape=(3,), steps=4, sampler="ddim", progress=False, backend="triton")


def test_expanded_t_takes_the_uniform_path(device, rng):
    """A stride-0 t [B] (what the loop hands nets) equals the scalar t."""
    x, m = (tensor(rng.standard_normal((6, 4)), device) for _ in range(2))
    t = torch.tensor([40], device=device).expand(6)
    a = fastddpm.ddpm_step(S, x, m, t, seed=3)
    b = fastddpm.ddpm_step(S, x, m, 40, seed=3)
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    from fastddpm.backends import BackendUnavailableError

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        sample(_mlp(), S, 2, sample_shape=(3,), steps=2, progress=False, backend="triton")
