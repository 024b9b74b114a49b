"""randn on the Triton backend against the NumPy reference (counter-based Philox normals)."""
import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import reference as R
from fastddpm.kernels import triton as KT

from _triton_helpers import assert_close32, assert_close_low, to_numpy

BIG = 2**32 - 1


@pytest.mark.parametrize("n, seed, stream, offset", [
    (1, 0, 0, 0),
    (7, 5, 3, 1),            # offset % 4 = 1: the tile is shifted
    (1003, 123, 1, 2),
    (33, 3, 0, 2**31 + 3),   # counters past int32
    (9, 1, 1, 2**32 - 5),    # crosses 2³² element indices
    (10, 1, 7, 2**34 + 6),   # high counter word c1 > 0 (an int32 offset would get this wrong)
    (6, 0, 0, 2**62 + 1),
])
def test_randn_matches_reference(device, n, seed, stream, offset):
    out = torch.empty(n, device=device)
    KT.randn(out, seed, stream, offset)
    assert_close32(out, R.randn(n, seed, stream, offset))


@pytest.mark.parametrize("seed, stream", [(2**31, 0), (BIG, 5), (17, 2**31 + 9), (BIG, BIG)])
def test_randn_large_seed_and_stream(device, seed, stream):
    out = torch.empty(21, device=device)
    KT.randn(out, seed, stream, 3)
    assert_close32(out, R.randn(21, seed, stream, 3))


@pytest.mark.parametrize("seed, stream", [(7, 2), (BIG, 2**31 + 1)])
@pytest.mark.parametrize("as_tensor", ["seed", "stream", "both"])
def test_randn_key_as_device_tensor(device, seed, stream, as_tensor):
    """Seeds and streams may live on the device (0-d int64 tensors), e.g. for CUDA graphs."""
    s = torch.tensor(seed, device=device) if as_tensor in ("seed", "both") else seed
    r = torch.tensor(stream, device=device) if as_tensor in ("stream", "both") else stream
    out = torch.empty(13, device=device)
    KT.randn(out, s, r, 2**33 + 1)
    assert_close32(out, R.randn(13, seed, stream, 2**33 + 1))


def test_randn_public_api_with_like(device):
    like = torch.empty(0, device=device)
    x = fastddpm.randn((5, 3), seed=11, stream=4, offset=6, like=like, backend="triton")
    assert x.device.type == device.type and x.shape == (5, 3) and x.dtype == torch.float32
    assert_close32(x, R.randn(15, 11, 4, 6).reshape(5, 3))


def test_randn_independent_of_chunking(device):
    """Drawing [0, 40) at once equals drawing [0, 13) and [13, 40) with offsets."""
    whole = torch.empty(40, device=device)
    KT.randn(whole, 9, 2, 0)
    a, b = torch.empty(13, device=device), torch.empty(27, device=device)
    KT.randn(a, 9, 2, 0)
    KT.randn(b, 9, 2, 13)
    np.testing.assert_array_equal(to_numpy(whole), np.concatenate([to_numpy(a), to_numpy(b)]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_randn_other_dtypes(device, dtype):
    out = torch.empty(50, device=device, dtype=dtype)
    KT.randn(out, 3, 1, 5)
    ref = R.randn(50, 3, 1, 5)
    if dtype == torch.float64:
        assert_close32(out, ref)
    else:
        assert_close_low(out, ref, dtype)


def test_randn_many_programs(device):
    """Several programs and a ragged tail (5003 elements, offset % 4 = 3)."""
    out = torch.empty(5003, device=device)
    KT.randn(out, 42, 3, 7)
    assert_close32(out, R.randn(5003, 42, 3, 7))
