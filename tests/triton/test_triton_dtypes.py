"""float16/bfloat16 in and out (math in float32) against the float32 reference on the same
(rounded) inputs. Runs on the interpreter as well as on CUDA."""
import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import reference as R

from _triton_helpers import assert_close_low, to_numpy

S = fastddpm.Schedule.linear(100)
LOW = [torch.float16, torch.bfloat16]


def _rounded(rng, shape, dtype):
    """Inputs representable in dtype, as float32 NumPy and as dtype tensors."""
    x = torch.tensor(rng.standard_normal(shape).astype(np.float32)).to(dtype)
    return x.float().numpy(), x


@pytest.mark.parametrize("dtype", LOW)
def test_q_sample_low_precision(device, rng, dtype):
    x0, x0_t = _rounded(rng, (5, 1, 8, 8), dtype)
    t = np.array([0, 99, 3, 50, 70])
    x_t, eps = fastddpm.q_sample(S, x0_t.to(device), torch.tensor(t, device=device), seed=5, backend="triton")
    assert x_t.dtype == dtype and eps.dtype == dtype
    ref_eps = R.randn(x0.size, 5, 0, 0).reshape(x0.shape)
    assert_close_low(eps, ref_eps, dtype)
    # x_t is exactly consistent with the ε written out (rounded before use).
    ref_xt, _ = R.q_sample(S.alphas_cumprod, x0, t, to_numpy(eps))
    assert_close_low(x_t, ref_xt, dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("prediction", R.PREDICTIONS)
def test_ddpm_step_low_precision(device, rng, dtype, prediction):
    x, x_t = _rounded(rng, (7, 3), dtype)
    m, m_t = _rounded(rng, (7, 3), dtype)
    z, z_t = _rounded(rng, (7, 3), dtype)
    t = np.array([99, 0, 5, 50, 1, 2, 98])
    y = fastddpm.ddpm_step(S, x_t.to(device), m_t.to(device), torch.tensor(t, device=device),
                           prediction=prediction, clip=2.0, noise=z_t.to(device), backend="triton")
    assert y.dtype == dtype
    assert_close_low(y, R.ddpm_step(S.alphas_cumprod, x, m, t, t - 1, prediction, clip=2.0, noise=z), dtype)


@pytest.mark.parametrize("dtype", LOW)
def test_ddim_step_low_precision_drawn_noise(device, rng, dtype):
    x, x_t = _rounded(rng, (5, 1, 8, 8), dtype)
    m, m_t = _rounded(rng, (5, 1, 8, 8), dtype)
    y = fastddpm.ddim_step(S, x_t.to(device), m_t.to(device), 60, prev_t=40, eta=0.8, seed=3, stream=2,
                           out=x_t.to(device), backend="triton")
    z = torch.tensor(R.randn(x.size, 3, 2, 0).reshape(x.shape)).to(dtype).float().numpy()
    assert_close_low(y, R.ddim_step(S.alphas_cumprod, x, m, 60, 40, 0.8, noise=z), dtype)
