"""randn: counter-based standard normals, element k ← global index offset + k."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (NO_SPECIALIZE, grid_size, index_bits, launch_config, noise_args, normal_tile, on_device, philox_seed,
                    tile)

_RANDN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _randn_kernel(out_ptr, key_ptr, n, seed_word, stream_word, ctr_lo, ctr_hi,
                  KEY_ON_DEVICE: tl.constexpr, SHIFT: tl.constexpr, IDX64: tl.constexpr,
                  BLOCK: tl.constexpr):
    k, mask, counters = tile(n, ctr_lo, ctr_hi, SHIFT, IDX64, BLOCK)
    z = normal_tile(philox_seed(key_ptr, seed_word, stream_word, KEY_ON_DEVICE), counters)
    tl.store(out_ptr + k, z.to(out_ptr.dtype.element_ty), mask=mask)


def randn(out: torch.Tensor, seed, stream, offset: int) -> torch.Tensor:
    """Fill the contiguous tensor ``out`` in place (any shape; float32/16, bfloat16 or float64).

    seed, stream: ints in [0, 2³²) or one-element integer tensors on out's device.
    Bytes per element: 4 written (float32).
    """
    from .utils import check_data

    out = check_data(out, "out", dtypes=_RANDN_DTYPES, dtype_names="float32, float16, bfloat16 or float64")
    n = out.numel()
    args = noise_args(seed, stream, offset, n, out.device)
    if n == 0:
        return out
    block, warps = launch_config(n)
    with on_device(out):
        _randn_kernel[grid_size(n, args["SHIFT"], block)](
            out, args["key"] if args["key"] is not None else out, n, args["seed_word"], args["stream_word"],
            args["ctr_lo"], args["ctr_hi"], KEY_ON_DEVICE=args["KEY_ON_DEVICE"], SHIFT=args["SHIFT"],
            IDX64=index_bits(n, args["SHIFT"]), BLOCK=block, num_warps=warps)
    return out
