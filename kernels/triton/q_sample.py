"""q_sample: x_t = √ᾱ[t_b]·x0 + √(1−ᾱ[t_b])·ε in one pass, ε given or drawn in-kernel and written out."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import (NO_SPECIALIZE, batch_shape, check_data, check_like, grid_size, index_bits, launch_config,
                    load_steps, on_device, noise_args, normal_tile, philox_seed, steps, tile)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _q_sample_kernel(x0_ptr, noise_ptr, out_ptr, t_ptr, sqrt_ab_ptr, sqrt_1mab_ptr, key_ptr,
                     n, per_sample, last_step, seed_word, stream_word, ctr_lo, ctr_hi,
                     T_PER_SAMPLE: tl.constexpr, NOISE_GIVEN: tl.constexpr, KEY_ON_DEVICE: tl.constexpr,
                     SHIFT: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    k, mask, counters = tile(n, ctr_lo, ctr_hi, SHIFT, IDX64, BLOCK)
    t = load_steps(t_ptr, k, mask, per_sample, last_step, T_PER_SAMPLE, 0)
    # Float32 tables (√ᾱ rounded once from float64), as the reference rounds its coefficients.
    a = tl.load(sqrt_ab_ptr + t)
    s = tl.load(sqrt_1mab_ptr + t)
    x0 = tl.load(x0_ptr + k, mask=mask).to(tl.float32)
    if NOISE_GIVEN:
        eps = tl.load(noise_ptr + k, mask=mask).to(tl.float32)
    else:
        # Rounded to the data dtype first, so x_t is exactly a·x0 + s·(the ε written out).
        eps = normal_tile(philox_seed(key_ptr, seed_word, stream_word, KEY_ON_DEVICE), counters)
        eps = eps.to(noise_ptr.dtype.element_ty)
        tl.store(noise_ptr + k, eps, mask=mask)
        eps = eps.to(tl.float32)
    tl.store(out_ptr + k, (a * x0 + s * eps).to(out_ptr.dtype.element_ty), mask=mask)


def q_sample(schedule, x0, t, noise, seed, stream, offset, out):
    """Shapes: x0 [B, …] (float32/float16/bfloat16, contiguous); t int or int tensor [B] on
    x0's device; noise like x0 or None (then drawn from (seed, stream, offset) and returned).
    ``out`` may be x0 (in place). Returns (x_t, noise). Bytes per element: 12 (float32).
    """
    x0 = check_data(x0, "x0")
    batch, per_sample = batch_shape(x0, "x0")
    if noise is not None:
        noise = check_like(noise, "noise", x0, "x0")
    out = torch.empty_like(x0) if out is None else check_like(out, "out", x0, "x0")
    n = x0.numel()
    ts = steps(t, "t", batch, schedule.num_steps, x0.device)
    args = noise_args(seed, stream, offset, n, x0.device)
    eps = noise if noise is not None else torch.empty_like(x0)
    if n == 0:
        return out, eps
    tables = schedule.tables(x0.device, torch.float32)
    block, warps = launch_config(n)
    with on_device(x0):
        _q_sample_kernel[grid_size(n, args["SHIFT"], block)](
            x0, eps, out, ts.tensor, tables["sqrt_alphas_cumprod"], tables["sqrt_one_minus_alphas_cumprod"],
            args["key"] if args["key"] is not None else x0,
            n, per_sample, schedule.num_steps - 1, args["seed_word"], args["stream_word"], args["ctr_lo"],
            args["ctr_hi"], T_PER_SAMPLE=ts.per_sample, NOISE_GIVEN=noise is not None,
            KEY_ON_DEVICE=args["KEY_ON_DEVICE"], SHIFT=args["SHIFT"], IDX64=index_bits(n, args["SHIFT"]),
            BLOCK=block, num_warps=warps)
    return out, eps
