"""The fused update from float32 coefficient rows: ddpm, ddim(η) and DPM-Solver++(2M), one pass.

Every Triton reverse step runs ``_update_kernel``, which reads its per-step scalars from a
float32 table ``coef`` [R, C] instead of computing them:

- loop (``LOOP``): the row is the step index k read from device memory (``ctl`` = int64
  [k, offset, seed]); the noise of step k is stream k + 1 at global offset ``offset`` + element,
  so a captured CUDA graph replays every step and batch by writing ``ctl`` only;
- ddpm_step/ddim_step (``step_update``): one row for the call, or (``ROW_PER_SAMPLE``) row
  e // D for element e; the rows are kernels/coefficients.py's, evaluated in float64 on the
  data's device (torch ops over B entries, no host sync) and rounded once to float32.

Columns: kernels.coefficients.COLUMNS (the layout is documented there and in docs/sampling.md);
NUM_COLUMNS below is this kernel's own reading of it (its column indices), checked against
COLUMNS by tests/triton/test_triton_loop.py. x̂0 = cx·x_t + cm·out (the output itself for
prediction "sample"), clipped when asked. Bytes per element (float32): 12 for ddpm/ddim (read
x_t and out, write x′), 20 for dpmpp2m.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import coefficients as KC
from .utils import NO_SPECIALIZE, grid_size, index_bits, launch_config, normal_tile, on_device, philox_seed, tile, tile_at

SAMPLER_CODE = {"ddpm": 0, "ddim": 1, "dpmpp2m": 2}
NUM_COLUMNS = {"ddpm": 5, "ddim": 7, "dpmpp2m": 5}


class _TorchMath:
    """The array namespace kernels.coefficients expects, on torch tensors (any device)."""

    sqrt = staticmethod(torch.sqrt)
    where = staticmethod(torch.where)
    zeros_like = staticmethod(torch.zeros_like)
    ones_like = staticmethod(torch.ones_like)

    @staticmethod
    def maximum(x, floor):
        return torch.clamp(x, min=floor)

    @staticmethod
    def stack(arrays, axis):
        return torch.stack(arrays, dim=axis)


@triton.jit
def _column(coef_ptr, r, j, mask, ROW_PER_SAMPLE: tl.constexpr):
    if ROW_PER_SAMPLE:
        return tl.load(coef_ptr + r + j, mask=mask, other=1.0)  # 1: no 0/0 in masked lanes
    return tl.load(coef_ptr + r + j)


@triton.jit(do_not_specialize=NO_SPECIALIZE + ["last_row"])
def _update_kernel(x_ptr, m_ptr, out_ptr, x0p_ptr, noise_ptr, coef_ptr, ctl_ptr, key_ptr,
                   n, per_sample, last_row, seed_word, stream_word, ctr_lo, ctr_hi, clip,
                   SAMPLER: tl.constexpr, PRED: tl.constexpr, HAS_CLIP: tl.constexpr, C: tl.constexpr,
                   ROW_PER_SAMPLE: tl.constexpr, NOISE: tl.constexpr, LOOP: tl.constexpr,
                   KEY_ON_DEVICE: tl.constexpr, SHIFT: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    if LOOP:
        step = tl.load(ctl_ptr)
        k, mask, counters = tile_at(n, tl.load(ctl_ptr + 1) >> 2, SHIFT, IDX64, BLOCK)
        # seed64 = stream·2³² + seed with stream k + 1 (the seed is stored in [0, 2³²))
        seed64 = (((step + 1) << 32) | tl.load(ctl_ptr + 2)).to(tl.uint64, bitcast=True)
        r = tl.minimum(tl.maximum(step, 0), last_row) * C
    else:
        k, mask, counters = tile(n, ctr_lo, ctr_hi, SHIFT, IDX64, BLOCK)
        seed64 = philox_seed(key_ptr, seed_word, stream_word, KEY_ON_DEVICE)
        if ROW_PER_SAMPLE:
            r = (k // per_sample) * C
        else:  # one row for the whole call: scalar loads, once per program
            r = 0
    x = tl.load(x_ptr + k, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + k, mask=mask).to(tl.float32)
    if PRED == 1:
        x0 = m
    else:
        x0 = _column(coef_ptr, r, 0, mask, ROW_PER_SAMPLE) * x + _column(coef_ptr, r, 1, mask, ROW_PER_SAMPLE) * m
    if SAMPLER == 1:  # ε̂ from the unclipped x̂0 (diffusers' use_clipped_model_output=False)
        if PRED == 0:
            eps = m
        else:
            eps = (x - _column(coef_ptr, r, 2, mask, ROW_PER_SAMPLE) * x0) / _column(coef_ptr, r, 3, mask,
                                                                                      ROW_PER_SAMPLE)
    if HAS_CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    if SAMPLER == 0:
        y = _column(coef_ptr, r, 2, mask, ROW_PER_SAMPLE) * x0 + _column(coef_ptr, r, 3, mask, ROW_PER_SAMPLE) * x
    elif SAMPLER == 1:
        y = _column(coef_ptr, r, 4, mask, ROW_PER_SAMPLE) * x0 + _column(coef_ptr, r, 5, mask, ROW_PER_SAMPLE) * eps
    else:
        x0_prev = tl.load(x0p_ptr + k, mask=mask).to(tl.float32)
        y = (_column(coef_ptr, r, 2, mask, ROW_PER_SAMPLE) * x + _column(coef_ptr, r, 3, mask, ROW_PER_SAMPLE) * x0
             + _column(coef_ptr, r, 4, mask, ROW_PER_SAMPLE) * x0_prev)
        tl.store(x0p_ptr + k, x0.to(x0p_ptr.dtype.element_ty), mask=mask)
    if NOISE != 0:
        if NOISE == 1:
            z = tl.load(noise_ptr + k, mask=mask).to(tl.float32)
        else:  # drawn here, rounded through the data dtype (as the reference's noise is)
            z = normal_tile(seed64, counters).to(out_ptr.dtype.element_ty).to(tl.float32)
        y = y + _column(coef_ptr, r, C - 1, mask, ROW_PER_SAMPLE) * z  # sigma: the last column
    tl.store(out_ptr + k, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows_of(sampler: str, ac: torch.Tensor, t: torch.Tensor, p: torch.Tensor, options: dict) -> torch.Tensor:
    """kernels.coefficients rows of steps (t, p) in float64 on ac's device, rounded once to float32."""
    t, p = torch.broadcast_tensors(t, p)
    ab_t, ab_p, final = KC.step_alphas(ac, t, p, xp=_TorchMath)
    return KC.rows(sampler, ab_t, ab_p, final, xp=_TorchMath, **options).to(torch.float32).contiguous()


def _chain_rows(sampler: str, ac: torch.Tensor, options: dict):
    """The rows of every (t, t − 1), row t, per ᾱ table (Schedule.tables caches it per device)
    and options, built once on the device. A prev_t=None call then gathers its rows (one
    index_select: 24–28 µs of host time per call for the rows, CPU tensors, loaded 2-core EPYC)
    instead of running the ~38 small float64 ops of _rows_of (285–325 µs; on a GPU each is a
    launch). None during a CUDA-graph capture before the table exists (never cache memory of a
    graph's private pool)."""
    def build():
        if ac.is_cuda and torch.cuda.is_current_stream_capturing():
            return None
        t = torch.arange(ac.shape[0], dtype=torch.int64, device=ac.device)
        return _rows_of(sampler, ac, t, t - 1, options)
    return KC.cached(ac, ("triton", sampler, tuple(sorted(options.items()))), build)


def step_rows(sampler: str, launch, **options) -> torch.Tensor:
    """The float32 [R, C] rows of a ddpm_step/ddim_step call on the data's device: R = 1 for a
    uniform (t, t′), else B; ``options`` are kernels.coefficients.rows'. t and t′ are clamped
    into the table, so a bad device value (unchecked: no sync) can never read out of bounds."""
    _, args, kw = launch
    t, p, ac, last_step = args[4], args[5], args[6], args[10]
    t = t.to(torch.int64).clamp(0, last_step)
    if kw["PREV_IS_T_MINUS_1"]:
        chain = _chain_rows(sampler, ac, options)
        if chain is not None:
            return chain.index_select(0, t)
        p = t - 1
    else:
        p = p.to(torch.int64).clamp(-1, last_step)
    return _rows_of(sampler, ac, t, p, options)


def step_update(sampler: str, launch, *, clip=None, **options) -> None:
    """ddpm_step/ddim_step: the call's coefficient rows, then one fused pass.

    ``launch`` is what utils.step_launch returns for the call (grid, args, kwargs); ``options``
    (prediction, and variance or eta) go to kernels.coefficients.rows.
    """
    grid, args, kw = launch
    x_t, m, out, noise, _, _, _, key, n, per_sample = args[:10]
    with on_device(x_t):
        rows = step_rows(sampler, launch, **options)
        _update_kernel[grid](
            x_t, m, out, x_t, noise, rows, key, key, n, per_sample, rows.shape[0] - 1, *args[11:],
            float(clip or 0.0), SAMPLER=SAMPLER_CODE[sampler], PRED=KC.PRED_CODE[options["prediction"]],
            HAS_CLIP=clip is not None, C=NUM_COLUMNS[sampler], ROW_PER_SAMPLE=rows.shape[0] > 1, NOISE=kw["NOISE"],
            LOOP=False, KEY_ON_DEVICE=kw["KEY_ON_DEVICE"], SHIFT=kw["SHIFT"], IDX64=kw["IDX64"], BLOCK=kw["BLOCK"],
            num_warps=kw["num_warps"])


class LoopUpdate:
    """The sampling loop's update for batches of one shape: one launch per step, in place.

    coef: float32 [K, C] on the data's device (row k for loop step k); ctl: int64 [3] on the
    same device holding (k, offset, seed) — the step index, the global noise offset of the
    batch's first element, and the seed — read by the kernel, so nothing about a step is a
    launch argument and a CUDA graph of it replays for every step and batch. ``shift`` =
    offset & 3 is fixed per instance (a constexpr that keeps the loads aligned). Arguments
    are validated by the caller once per run; a call does no checks.
    """

    def __init__(self, sampler: str, coef: torch.Tensor, ctl: torch.Tensor, numel: int, per_sample: int, *,
                 prediction: str, clip=None, noise: bool, shift: int = 0):
        if sampler not in SAMPLER_CODE:
            raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLER_CODE))}; got {sampler!r}")
        if coef.dtype != torch.float32 or coef.ndim != 2 or coef.shape[1] != NUM_COLUMNS[sampler]:
            raise ValueError(f"coef must be float32 [K, {NUM_COLUMNS[sampler]}] for {sampler}, got "
                             f"{coef.dtype} {tuple(coef.shape)}")
        if ctl.dtype != torch.int64 or ctl.shape != (3,) or ctl.device != coef.device:
            raise ValueError("ctl must be an int64 tensor [3] (k, offset, seed) on coef's device")
        if shift not in (0, 1, 2, 3):
            raise ValueError(f"shift must be offset & 3, got {shift!r}")
        self.coef, self.ctl, self.numel, self.per_sample = coef.contiguous(), ctl, int(numel), int(per_sample)
        self.clip = float(clip or 0.0)
        block, warps = launch_config(self.numel)
        self.grid = grid_size(self.numel, shift, block)
        self.kwargs = dict(SAMPLER=SAMPLER_CODE[sampler], PRED=KC.PRED_CODE[prediction], HAS_CLIP=clip is not None,
                           C=NUM_COLUMNS[sampler], ROW_PER_SAMPLE=False, NOISE=2 if noise else 0, LOOP=True,
                           KEY_ON_DEVICE=False, SHIFT=shift, IDX64=index_bits(self.numel, shift), BLOCK=block,
                           num_warps=warps)
        self.last_row = coef.shape[0] - 1

    def __call__(self, x: torch.Tensor, model_output: torch.Tensor, x0_prev=None) -> None:
        """x ← update(x, model_output) for step ctl[0]; dpmpp2m also x0_prev ← x̂0."""
        if self.numel == 0:
            return
        with on_device(x):
            _update_kernel[self.grid](x, model_output, x, x if x0_prev is None else x0_prev, x, self.coef, self.ctl,
                                      self.ctl, self.numel, self.per_sample, self.last_row, 0, 0, 0, 0, self.clip,
                                      **self.kwargs)
