"""Schedule tables on the device: cumulative product in float64, then every derived table,
cast once to the requested dtype — so a schedule (and a respaced one) can be built on the GPU
with no host round trip.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastddpm.schedule import TABLE_NAMES

from .utils import NO_SPECIALIZE, check_data, on_device

_ROW = {name: i for i, name in enumerate(TABLE_NAMES)}
# One program holds the whole scan in registers; for sm_90 it compiles in ~7 s at T = 8192
# (130 s at 16384).
MAX_STEPS = 1 << 13


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _schedule_kernel(betas_ptr, out_ptr, T, BLOCK: tl.constexpr,
                     BETAS: tl.constexpr, ALPHAS: tl.constexpr, AC: tl.constexpr, AC_PREV: tl.constexpr,
                     SQRT_AC: tl.constexpr, SQRT_1MAC: tl.constexpr, SQRT_RECIP: tl.constexpr,
                     SQRT_RECIPM1: tl.constexpr, POST_VAR: tl.constexpr, POST_LOGVAR: tl.constexpr,
                     COEF1: tl.constexpr, COEF2: tl.constexpr, SNR: tl.constexpr):
    r = tl.arange(0, BLOCK)
    mask = r < T
    beta = tl.load(betas_ptr + r, mask=mask, other=0.0).to(tl.float64)
    alpha = 1.0 - beta
    ac = tl.cumprod(alpha, 0)
    tl.store(out_ptr + AC * T + r, ac, mask=mask)
    # ᾱ_prev is ᾱ shifted by one, read back so that it equals ᾱ bit for bit.
    tl.debug_barrier()
    prev = tl.load(out_ptr + AC * T + r - 1, mask=mask & (r > 0), other=1.0)
    post_var = beta * (1.0 - prev) / (1.0 - ac)
    tl.store(out_ptr + BETAS * T + r, beta, mask=mask)
    tl.store(out_ptr + ALPHAS * T + r, alpha, mask=mask)
    tl.store(out_ptr + AC_PREV * T + r, prev, mask=mask)
    tl.store(out_ptr + SQRT_AC * T + r, tl.sqrt(ac), mask=mask)
    tl.store(out_ptr + SQRT_1MAC * T + r, tl.sqrt(1.0 - ac), mask=mask)
    tl.store(out_ptr + SQRT_RECIP * T + r, tl.sqrt(1.0 / ac), mask=mask)
    tl.store(out_ptr + SQRT_RECIPM1 * T + r, tl.sqrt(1.0 / ac - 1.0), mask=mask)
    tl.store(out_ptr + POST_VAR * T + r, post_var, mask=mask)
    tl.store(out_ptr + COEF1 * T + r, beta * tl.sqrt(prev) / (1.0 - ac), mask=mask)
    tl.store(out_ptr + COEF2 * T + r, (1.0 - prev) * tl.sqrt(alpha) / (1.0 - ac), mask=mask)
    tl.store(out_ptr + SNR * T + r, ac / (1.0 - ac), mask=mask)
    tl.debug_barrier()
    # Clipped posterior variance (β̃_1 in place of β̃_0); its log is taken after the kernel.
    first = tl.where((r == 0) & (T > 1), 1, r)
    clipped = tl.load(out_ptr + POST_VAR * T + first, mask=mask)
    tl.store(out_ptr + POST_LOGVAR * T + r, clipped, mask=mask)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _respace_kernel(ac_ptr, steps_ptr, out_ptr, S, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    mask = r < S
    ab = tl.load(ac_ptr + tl.load(steps_ptr + r, mask=mask, other=0), mask=mask, other=1.0).to(tl.float64)
    prev_step = tl.load(steps_ptr + r - 1, mask=mask & (r > 0), other=0)
    ab_prev = tl.load(ac_ptr + prev_step, mask=mask & (r > 0), other=1.0).to(tl.float64)
    tl.store(out_ptr + r, 1.0 - ab / ab_prev, mask=mask)


def schedule_tables(betas: torch.Tensor, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Every table of the design (fastddpm.schedule.TABLE_NAMES, each [T]) from betas [T] on
    betas' device, computed in float64 and cast once to ``dtype``. No host round trip.
    """
    betas = check_data(betas, "betas", dtypes=(torch.float32, torch.float64),
                       dtype_names="float32 or float64")
    if betas.ndim != 1 or not 1 <= betas.shape[0] <= MAX_STEPS:
        raise ValueError(f"betas must have shape [T] with 1 <= T <= {MAX_STEPS}, got {tuple(betas.shape)}")
    T = betas.shape[0]
    out = torch.empty((len(TABLE_NAMES), T), dtype=torch.float64, device=betas.device)
    block = triton.next_power_of_2(T)
    with on_device(betas):
        _schedule_kernel[(1,)](betas, out, T, BLOCK=block, num_warps=4 if block <= 1024 else 8,
                               **{key: _ROW[name] for key, name in _KERNEL_ROWS.items()})
    out[_ROW["posterior_log_variance_clipped"]].log_()
    out = out.to(dtype)
    return {name: out[i] for i, name in enumerate(TABLE_NAMES)}


def respaced_betas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Betas [S] (float64) of the schedule that visits ``timesteps`` (increasing, int tensor [S]
    on the same device): β′_j = 1 − ᾱ[s_j]/ᾱ[s_{j−1}] (ᾱ[s_{−1}] = 1), as improved-diffusion's
    respacing. Feed them to :func:`schedule_tables`. Values are not range-checked (no sync).
    """
    alphas_cumprod = check_data(alphas_cumprod, "alphas_cumprod", dtypes=(torch.float32, torch.float64),
                                dtype_names="float32 or float64")
    if not isinstance(timesteps, torch.Tensor) or timesteps.dtype.is_floating_point or timesteps.ndim != 1:
        raise TypeError("timesteps must be a 1-D integer tensor")
    if timesteps.device != alphas_cumprod.device:
        raise ValueError(f"timesteps is on {timesteps.device} but alphas_cumprod is on "
                         f"{alphas_cumprod.device}")
    S = timesteps.shape[0]
    if not 1 <= S <= MAX_STEPS:
        raise ValueError(f"timesteps must have 1 … {MAX_STEPS} entries, got {S}")
    out = torch.empty(S, dtype=torch.float64, device=timesteps.device)
    with on_device(timesteps):
        _respace_kernel[(1,)](alphas_cumprod, timesteps.contiguous(), out, S, BLOCK=triton.next_power_of_2(S))
    return out


_KERNEL_ROWS = {
    "BETAS": "betas", "ALPHAS": "alphas", "AC": "alphas_cumprod", "AC_PREV": "alphas_cumprod_prev",
    "SQRT_AC": "sqrt_alphas_cumprod", "SQRT_1MAC": "sqrt_one_minus_alphas_cumprod",
    "SQRT_RECIP": "sqrt_recip_alphas_cumprod", "SQRT_RECIPM1": "sqrt_recipm1_alphas_cumprod",
    "POST_VAR": "posterior_variance", "POST_LOGVAR": "posterior_log_variance_clipped",
    "COEF1": "posterior_mean_coef1", "COEF2": "posterior_mean_coef2", "SNR": "snr",
}
