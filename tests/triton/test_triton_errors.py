"""Bad input on the Triton backend gets a clear error naming the argument."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import triton as KT

from _triton_helpers import needs_cuda

S = fastddpm.Schedule.linear(50)


def _x(device, shape=(4, 3), dtype=torch.float32):
    return torch.zeros(shape, device=device, dtype=dtype)


def test_cpu_tensor_outside_interpreter_is_refused():
    """backend='triton' on CPU tensors without TRITON_INTERPRET raises and says why."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import torch, fastddpm\n"
        "x = torch.zeros(4, 3)\n"
        "try:\n"
        "    fastddpm.ddpm_step(fastddpm.Schedule.linear(10), x, x, 5, backend='triton')\n"
        "except fastddpm.BackendUnavailableError as e:\n"
        "    print('REFUSED:', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "REFUSED:" in res.stdout and "TRITON_INTERPRET=1" in res.stdout


def test_numpy_input_is_refused(device):
    with pytest.raises(TypeError, match="torch tensors"):
        fastddpm.ddpm_step(S, np.zeros((4, 3), np.float32), _x(device), 5, backend="triton")


def test_float64_is_refused(device):
    x = _x(device, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"x_t must be float32, float16 or bfloat16.*float64 runs on"):
        fastddpm.ddpm_step(S, x, x, 5, backend="triton")


def test_dtype_mismatch(device):
    with pytest.raises(TypeError, match="model_output has dtype torch.float16 but x_t has dtype "
                                        "torch.float32"):
        fastddpm.ddpm_step(S, _x(device), _x(device, dtype=torch.float16), 5, backend="triton")
    with pytest.raises(TypeError, match="noise has dtype"):
        fastddpm.q_sample(S, _x(device), 5, _x(device, dtype=torch.bfloat16), backend="triton")


def test_shape_mismatch_and_non_contiguous(device):
    with pytest.raises(ValueError, match=r"model_output has shape \(3, 4\) but x_t has shape \(4, 3\)"):
        fastddpm.ddim_step(S, _x(device), _x(device, (3, 4)), 5, backend="triton")
    x = _x(device, (3, 4)).t()
    with pytest.raises(ValueError, match="x_t must be contiguous"):
        fastddpm.ddpm_step(S, x, x, 5, backend="triton")
    with pytest.raises(ValueError, match="out must be contiguous"):
        fastddpm.ddpm_step(S, _x(device), _x(device), 5, out=x, backend="triton")


def test_bad_timesteps(device):
    x = _x(device)
    with pytest.raises(TypeError, match="t must have an integer dtype"):
        fastddpm.ddpm_step(S, x, x, torch.ones(4, device=device), backend="triton")
    with pytest.raises(ValueError, match=r"t must be an integer or have shape \[B\] = \[4\]"):
        fastddpm.ddpm_step(S, x, x, torch.ones(3, dtype=torch.int64, device=device), backend="triton")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 50\)"):
        fastddpm.q_sample(S, x, 50, backend="triton")
    with pytest.raises(ValueError, match=r"prev_t must lie in \[-1, 50\)"):
        fastddpm.ddpm_step(S, x, x, 5, prev_t=-2, backend="triton")
    with pytest.raises(ValueError, match="prev_t must be smaller than t"):
        fastddpm.ddim_step(S, x, x, 5, prev_t=torch.tensor([1, 2, 5, 0], device=device), backend="triton")
    if device.type == "cpu":  # host values are free to check; CUDA tensors only with check_finite
        with pytest.raises(ValueError, match=r"t must lie in \[0, 50\)"):
            fastddpm.ddpm_step(S, x, x, torch.tensor([0, 1, 2, 60]), backend="triton")


@needs_cuda
def test_cuda_timesteps_range_checked_on_request():
    x = _x("cuda")
    t = torch.tensor([0, 1, 2, 60], device="cuda")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 50\)"):
        fastddpm.ddpm_step(S, x, x, t, check_finite=True, backend="triton")


def test_check_finite(device):
    x = _x(device)
    m = _x(device)
    m[2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="model_output contains NaN or inf"):
        fastddpm.ddpm_step(S, x, m, 5, check_finite=True, backend="triton")


def test_bad_seed_and_offset(device):
    x = _x(device)
    with pytest.raises(TypeError, match="seed must be an int or a one-element integer tensor"):
        fastddpm.ddpm_step(S, x, x, 5, seed=torch.tensor(1.0, device=device), backend="triton")
    with pytest.raises(ValueError, match=r"stream must lie in \[0, 2\*\*32\)"):
        fastddpm.ddpm_step(S, x, x, 5, stream=2**32, backend="triton")
    with pytest.raises(ValueError, match="offset must lie in"):
        fastddpm.q_sample(S, x, 5, offset=-1, backend="triton")
    with pytest.raises(TypeError, match="out must be float32, float16, bfloat16 or float64"):
        KT.randn(torch.zeros(3, dtype=torch.int32, device=device), 1, 0, 0)


def test_mismatched_devices_are_named():
    """A tensor on another device (here the 'meta' device, so this runs without CUDA too)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and not fastddpm.backends.interpreting_triton():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    x = _x(dev)
    other = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match=r"model_output is on meta but x_t is on"):
        fastddpm.ddpm_step(S, x, other, 5, backend="triton")
    with pytest.raises(ValueError, match=r"noise is on meta but x0 is on"):
        fastddpm.q_sample(S, x, 5, other, backend="triton")
    with pytest.raises(ValueError, match=r"t is on meta but the data are on"):
        fastddpm.ddpm_step(S, x, x, torch.zeros(4, dtype=torch.int64, device="meta"), backend="triton")


@needs_cuda
def test_cpu_and_cuda_mixed():
    x = _x("cuda")
    with pytest.raises(ValueError, match="model_output is on cpu but x_t is on cuda"):
        fastddpm.ddpm_step(S, x, torch.zeros(4, 3), 5)
    with pytest.raises(ValueError, match="t is on cpu but the data are on cuda"):
        fastddpm.ddpm_step(S, x, x, torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="seed is on cpu but the data are on cuda"):
        fastddpm.ddpm_step(S, x, x, 5, seed=torch.tensor(3))
    with pytest.raises(ValueError, match="backend='numba' runs on the CPU"):
        fastddpm.ddpm_step(S, x, x, 5, backend="numba")


def test_low_precision_needs_triton():
    x = torch.zeros(4, 3, dtype=torch.float16)
    with pytest.raises(TypeError, match="float16 and bfloat16 run on backend='triton'"):
        fastddpm.ddpm_step(S, x, x, 5, backend="numba")


def test_tensor_seed_only_on_triton():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="seed as a tensor is accepted by backend='triton' only"):
        fastddpm.ddpm_step(S, x, x, 5, seed=torch.tensor(3), backend="numba")
