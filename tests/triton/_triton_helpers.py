"""Shared helpers of the Triton tests (imported by name: pytest puts this folder on sys.path)."""
import numpy as np
import pytest
import torch

from fastddpm.backends import interpreting_triton

HAS_CUDA = torch.cuda.is_available()
DEVICES = (["cpu"] if interpreting_triton() else []) + (["cuda"] if HAS_CUDA else [])

# The ragged shapes of the core tests: a lone element, D not a multiple of 4, images, many samples.
SHAPES = [(1,), (7, 3), (5, 1, 8, 8), (1000, 2)]

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def tensor(array, device, dtype=torch.float32):
    """A copy on device (never a view of the NumPy array, which in-place kernels would change)."""
    return torch.tensor(np.asarray(array)).to(device=device, dtype=dtype)


def to_numpy(x):
    return x.detach().float().cpu().numpy()


def per_sample_steps(rng, batch, num_steps):
    """t for each sample, always covering 0 and T − 1 when the batch has room."""
    t = rng.integers(0, num_steps, size=batch)
    t[0] = num_steps - 1
    if batch > 1:
        t[1] = 0
    return t


def assert_close32(actual, expected):
    """float32 results: a few ulps of the result, plus the ≤ 1e-6 by which a GPU's normals may
    differ from the reference's (docs/core.md, "Reproducibility promise")."""
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=2e-6, atol=2e-6)


def assert_close_low(actual, expected, dtype):
    """float16/bfloat16 out, float32 math: rounding of the output and of the noise to dtype."""
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=2 * eps, atol=2 * eps)
