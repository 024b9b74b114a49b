"""The one fused update of every sampler on the GPU: any row of the generic layout, one pass.

Per element (kernels/coefficients.py; docs/sampling.md "Step math"):

    x̂0c = clip(cx·x + cm·m)
    x′  = yx·x + y0·x̂0c + ym·m + ys·s + y1·h1 + y2·h2 + y3·h3 + σ·z,   σ = yz (· exp(vg·v + vb) | · √v)
    s′  = sx·x + s0·x̂0c + sm·m + ss·s + s1·h1 + s2·h2 + s3·h3            (runs that use s: every row)
    q   = qx·x + q0·x̂0c + qm·m  → the history ring slot of the row        (rows that push)

``_update_kernel`` reads its scalars from a float32 table ``coef`` [R, C] and computes none; it
never learns which sampler wrote the table. Which buffers a launch touches are constexprs
derived from the table (HAS_S, H = history depth, VAR, NOISE), so a run reads and writes only
what its sampler needs.

- loop (``LOOP``, :class:`LoopUpdate`): the row is the call index k read from device memory
  (``ctl`` = int64 [k, offset, seed]), and so are the ring slots of row k (``slots`` int64
  [K, 4]: the slot to push to, −1 for none, then those of h1 … h3); the noise of call k is
  stream k + 1 at global offset ``offset`` + element. A captured CUDA graph replays every call
  and batch by writing ``ctl`` only.
- the public ops ddpm_step / ddim_step (:func:`step_update`): one row for the call, or
  (``ROW_PER_SAMPLE``) row e // D for element e; their rows are built on the data's device in
  float64 by kernels/samplers/{ddpm,ddim}.py (torch ops over B entries, no host sync) and rounded
  once to float32.

Bytes per element (float32): 12 for ddpm/ddim (x, m in; x′ out), +4 per history value read,
+4 for a pushed q, +8 for the state s.

Classifier-free guidance (``GUIDE``, the loop only; docs/sampling.md, "Guidance"): the network ran
once over 2B rows (conditional outputs c first, unconditional u ``u_off`` elements later) and the
kernel uses m = (c + (w_k − 1)·(c − u))·r_b, w_k − 1 read from the device table ``gw`` [K] at the
call index (0 outside a guidance interval: exactly c), r_b guidance_rescale's per-sample factor
(``RESCALE``: ``gr`` [B], written just before by :func:`_guide_scales_kernel` from the same
table). ``MIRROR``: x′ is also stored n elements after x, the second half of the 2B-row network
input whose first half x is. +4 bytes per element for u, +4 for the mirror.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import coefficients as KC
from .utils import NO_SPECIALIZE, grid_size, index_bits, launch_config, normal_tile, on_device, philox_seed, tile, tile_at

NOISE_NONE, NOISE_GIVEN, NOISE_DRAWN = 0, 1, 2
VAR_MODES = {None: 0, "log": 1, "sqrt": 2}
assert KC.COLUMNS == ("cx", "cm", "yx", "y0", "ym", "ys", "y1", "y2", "y3", "yz", "sx", "s0", "sm", "ss", "s1",
                      "s2", "s3", "qx", "q0", "qm", "vg", "vb"), "kernels/triton/update.py reads the columns by position"


class TorchMath:
    """The array namespace kernels/coefficients and kernels/samplers expect, on torch tensors."""

    sqrt = staticmethod(torch.sqrt)
    log = staticmethod(torch.log)
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
def _c(coef_ptr, r, j: tl.constexpr, mask, ROW_PER_SAMPLE: tl.constexpr):
    """Column j of row r (r is per element with ROW_PER_SAMPLE, else a scalar: one load per program)."""
    if ROW_PER_SAMPLE:
        return tl.load(coef_ptr + r + j, mask=mask, other=0.0)
    return tl.load(coef_ptr + r + j)


@triton.jit(do_not_specialize=NO_SPECIALIZE + ["last_row"])
def _update_kernel(x_ptr, m_ptr, out_ptr, s_ptr, ring_ptr, slots_ptr, noise_ptr, coef_ptr, ctl_ptr, key_ptr,
                   gw_ptr, gr_ptr, n, per_sample, last_row, seed_word, stream_word, ctr_lo, ctr_hi, clip, u_off,
                   HAS_CLIP: tl.constexpr, C: tl.constexpr, ROW_PER_SAMPLE: tl.constexpr, HAS_S: tl.constexpr,
                   H: tl.constexpr, NOISE: tl.constexpr, VAR: tl.constexpr, LOOP: tl.constexpr,
                   KEY_ON_DEVICE: tl.constexpr, SHIFT: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr,
                   GUIDE: tl.constexpr = False, RESCALE: tl.constexpr = False, MIRROR: tl.constexpr = False):
    if LOOP:
        step = tl.minimum(tl.maximum(tl.load(ctl_ptr), 0), last_row)
        k, mask, counters = tile_at(n, tl.load(ctl_ptr + 1) >> 2, SHIFT, IDX64, BLOCK)
        # seed64 = stream·2³² + seed with stream k + 1 (the seed is stored in [0, 2³²))
        seed64 = (((step + 1) << 32) | tl.load(ctl_ptr + 2)).to(tl.uint64, bitcast=True)
        r = step * C
    else:
        k, mask, counters = tile(n, ctr_lo, ctr_hi, SHIFT, IDX64, BLOCK)
        seed64 = philox_seed(key_ptr, seed_word, stream_word, KEY_ON_DEVICE)
        if ROW_PER_SAMPLE:
            r = (k // per_sample) * C
        else:  # one row for the whole call: scalar loads, once per program
            r = 0
    x = tl.load(x_ptr + k, mask=mask).to(tl.float32)
    if VAR != 0:  # m holds [mean D | variance D] per sample
        mk = k + (k // per_sample) * per_sample
        m = tl.load(m_ptr + mk, mask=mask).to(tl.float32)
        v = tl.load(m_ptr + mk + per_sample, mask=mask, other=1.0).to(tl.float32)
    else:
        mk = k
        m = tl.load(m_ptr + k, mask=mask).to(tl.float32)
    if GUIDE:  # the unconditional half of the same output; m = c + (w − 1)·(c − u) (· r_b)
        u = tl.load(m_ptr + mk + u_off, mask=mask).to(tl.float32)
        m = m + tl.load(gw_ptr + step) * (m - u)
        if RESCALE:
            m = m * tl.load(gr_ptr + k // per_sample, mask=mask, other=1.0)
    x0 = _c(coef_ptr, r, 0, mask, ROW_PER_SAMPLE) * x + _c(coef_ptr, r, 1, mask, ROW_PER_SAMPLE) * m
    if HAS_CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    y = (_c(coef_ptr, r, 2, mask, ROW_PER_SAMPLE) * x + _c(coef_ptr, r, 3, mask, ROW_PER_SAMPLE) * x0
         + _c(coef_ptr, r, 4, mask, ROW_PER_SAMPLE) * m)
    if HAS_S:
        sv = tl.load(s_ptr + k, mask=mask).to(tl.float32)
        y += _c(coef_ptr, r, 5, mask, ROW_PER_SAMPLE) * sv
        sn = (_c(coef_ptr, r, 10, mask, ROW_PER_SAMPLE) * x + _c(coef_ptr, r, 11, mask, ROW_PER_SAMPLE) * x0
              + _c(coef_ptr, r, 12, mask, ROW_PER_SAMPLE) * m + _c(coef_ptr, r, 13, mask, ROW_PER_SAMPLE) * sv)
    if H >= 1:
        slot = tl.load(slots_ptr + step * 4 + 1)
        a1 = tl.load(ring_ptr + slot * n + k, mask=mask).to(tl.float32)
        y += _c(coef_ptr, r, 6, mask, ROW_PER_SAMPLE) * a1
        if HAS_S:
            sn += _c(coef_ptr, r, 14, mask, ROW_PER_SAMPLE) * a1
    if H >= 2:
        slot = tl.load(slots_ptr + step * 4 + 2)
        a2 = tl.load(ring_ptr + slot * n + k, mask=mask).to(tl.float32)
        y += _c(coef_ptr, r, 7, mask, ROW_PER_SAMPLE) * a2
        if HAS_S:
            sn += _c(coef_ptr, r, 15, mask, ROW_PER_SAMPLE) * a2
    if H >= 3:
        slot = tl.load(slots_ptr + step * 4 + 3)
        a3 = tl.load(ring_ptr + slot * n + k, mask=mask).to(tl.float32)
        y += _c(coef_ptr, r, 8, mask, ROW_PER_SAMPLE) * a3
        if HAS_S:
            sn += _c(coef_ptr, r, 16, mask, ROW_PER_SAMPLE) * a3
    if NOISE != 0:
        if NOISE == 1:
            z = tl.load(noise_ptr + k, mask=mask).to(tl.float32)
        else:  # drawn here, rounded through the data dtype (as the reference's noise is)
            z = normal_tile(seed64, counters).to(out_ptr.dtype.element_ty).to(tl.float32)
        if VAR == 1:
            z = z * tl.exp(_c(coef_ptr, r, 20, mask, ROW_PER_SAMPLE) * v + _c(coef_ptr, r, 21, mask, ROW_PER_SAMPLE))
        elif VAR == 2:
            z = z * tl.sqrt(v)
        y += _c(coef_ptr, r, 9, mask, ROW_PER_SAMPLE) * z
    if H >= 1:  # a row that pushes (its slot ≥ 0) stores q into the ring
        w = tl.load(slots_ptr + step * 4)
        if w >= 0:
            q = (_c(coef_ptr, r, 17, mask, ROW_PER_SAMPLE) * x + _c(coef_ptr, r, 18, mask, ROW_PER_SAMPLE) * x0
                 + _c(coef_ptr, r, 19, mask, ROW_PER_SAMPLE) * m)
            tl.store(ring_ptr + w * n + k, q.to(ring_ptr.dtype.element_ty), mask=mask)
    if HAS_S:
        tl.store(s_ptr + k, sn.to(s_ptr.dtype.element_ty), mask=mask)
    if MIRROR:  # the second half of the 2B-row network input
        tl.store(out_ptr + n + k, y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + k, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["per_sample", "row", "u_off", "last_row"])
def _guide_scales_kernel(m_ptr, gw_ptr, ctl_ptr, gr_ptr, per_sample, row, u_off, last_row, phi,
                         BLOCK: tl.constexpr):
    """gr[b] = φ·σ(c_b)/σ(g_b) + 1 − φ for sample b = program id, g = c + (w_k − 1)·(c − u) with
    w_k − 1 = gw[ctl[0]]: guidance_rescale's factors (Bessel-corrected σ; float64 sums; 1 where
    σ(g) = 0 or D = 1). One read of both halves of the call's output."""
    b = tl.program_id(0).to(tl.int64)
    step = tl.minimum(tl.maximum(tl.load(ctl_ptr), 0), last_row)
    w1 = tl.load(gw_ptr + step)
    base = b * row
    sc = tl.zeros((BLOCK,), dtype=tl.float64)
    sc2 = tl.zeros((BLOCK,), dtype=tl.float64)
    sg = tl.zeros((BLOCK,), dtype=tl.float64)
    sg2 = tl.zeros((BLOCK,), dtype=tl.float64)
    for j0 in range(0, per_sample, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        mask = j < per_sample
        c = tl.load(m_ptr + base + j, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(m_ptr + base + u_off + j, mask=mask, other=0.0).to(tl.float32)
        g = c + w1 * (c - u)
        c64 = c.to(tl.float64)
        g64 = g.to(tl.float64)
        sc += c64
        sc2 += c64 * c64
        sg += g64
        sg2 += g64 * g64
    d = per_sample.to(tl.float64)
    tc = tl.sum(sc, axis=0)
    tg = tl.sum(sg, axis=0)
    var_c = tl.maximum((tl.sum(sc2, axis=0) - tc * tc / d) / (d - 1.0), 0.0)
    var_g = tl.maximum((tl.sum(sg2, axis=0) - tg * tg / d) / (d - 1.0), 0.0)
    ok = (var_g > 0.0) & (d > 1.0)
    r = tl.where(ok, phi * tl.sqrt(var_c / tl.where(ok, var_g, 1.0)) + (1.0 - phi), 1.0)
    tl.store(gr_ptr + b, r.to(tl.float32))


# ----------------------------------------------------------------------------------------
# The public ops: ddpm_step / ddim_step
# ----------------------------------------------------------------------------------------


def _chain_rows(row_fn, ac: torch.Tensor, options: dict):
    """The rows of every (t, t − 1), row t, per ᾱ table (Schedule.tables caches it per device)
    and options, built once on the device. A prev_t=None call then gathers its rows (one
    index_select: 24–28 µs of host time per call, CPU tensors, loaded 2-core EPYC) instead of
    running the ~40 small float64 ops of the row functions (285–325 µs; on a GPU each is a
    launch). None during a CUDA-graph capture before the table exists (never cache memory of
    a graph's private pool)."""
    def build():
        if ac.is_cuda and torch.cuda.is_current_stream_capturing():
            return None
        t = torch.arange(ac.shape[0], dtype=torch.int64, device=ac.device)
        return _rows_of(row_fn, ac, t, t - 1, options)
    return KC.cached(ac, ("triton", row_fn.__module__, tuple(sorted(options.items()))), build)


def _rows_of(row_fn, ac: torch.Tensor, t: torch.Tensor, p: torch.Tensor, options: dict) -> torch.Tensor:
    """Rows of steps (t, p) in float64 on ac's device, rounded once to float32."""
    t, p = torch.broadcast_tensors(t, p)
    ab_t = ac[t]
    ab_p = torch.where(p >= 0, ac[p.clamp(min=0)], torch.ones_like(ab_t))
    return row_fn(ab_t, ab_p, p < 0, xp=TorchMath, **options).to(torch.float32).contiguous()


def step_update(row_fn, launch, *, clip=None, **options) -> None:
    """ddpm_step/ddim_step: the call's coefficient rows (``row_fn(ab_t, ab_p, final, …)`` of the
    op's sampler module), then one fused pass. ``launch``: utils.StepLaunch of the call.
    t and t′ are clamped into the table, so a bad device value (unchecked: no sync) can never
    read out of bounds."""
    L = launch
    with on_device(L.x):
        t = L.t.to(torch.int64).clamp(0, L.last_step)
        rows = None
        if L.prev_is_t_minus_1:
            chain = _chain_rows(row_fn, L.alphas_cumprod, options)
            if chain is not None:
                rows = chain.index_select(0, t)
        if rows is None:
            p = t - 1 if L.prev_is_t_minus_1 else L.prev_t.to(torch.int64).clamp(-1, L.last_step)
            rows = _rows_of(row_fn, L.alphas_cumprod, t, p, options)
        _update_kernel[L.grid](
            L.x, L.m, L.out, L.x, L.x, L.x, L.noise, rows, L.key, L.key, rows, rows, L.n, L.per_sample,
            rows.shape[0] - 1, L.seed_word, L.stream_word, L.ctr_lo, L.ctr_hi, float(clip or 0.0), 0,
            HAS_CLIP=clip is not None, C=KC.NUM_COLUMNS, ROW_PER_SAMPLE=rows.shape[0] > 1, HAS_S=False, H=0,
            NOISE=L.noise_mode, VAR=0, LOOP=False, KEY_ON_DEVICE=L.key_on_device, SHIFT=L.shift, IDX64=L.idx64,
            BLOCK=L.block, num_warps=L.num_warps)


# ----------------------------------------------------------------------------------------
# The sampling loop
# ----------------------------------------------------------------------------------------


@dataclass
class LoopBuffers:
    """Per-batch device buffers of a run: the state s ([N], or None) and the history ring
    ([ring, N], or None), zero-filled by ``reset``."""

    s: torch.Tensor | None
    ring: torch.Tensor | None

    def reset(self) -> None:
        for b in (self.s, self.ring):
            if b is not None:
                b.zero_()


class LoopUpdate:
    """The sampling loop's update for batches of one shape: one launch per network call, in place.

    coef: float32 [K, C] and slots: int64 [K, 4] on the data's device (row k for call k);
    ctl: int64 [3] on the same device holding (k, offset, seed) — read by the kernel, so nothing
    about a call is a launch argument and a CUDA graph of it replays for every call and batch.
    ``shift`` = offset & 3 is fixed per instance (a constexpr that keeps the loads aligned).
    The table's properties say which buffers exist (``has_state``, ``depth``, ``noise``,
    ``variance``). ``noise="given"``: the call's normals come as a tensor like x (``__call__``'s
    ``noise``; the drop-in schedulers' ``variance_noise``) instead of being drawn from stream k + 1.
    ``guidance``: float32 [K] on coef's device, w_k − 1 of call k (a guided run: every call's
    output has 2B rows, x is the first half of the 2B-row network input and the update mirrors x′
    into its second half); ``rescale``: guidance_rescale's φ (0: off).
    Arguments are validated by the caller once per run; a call does no checks.
    """

    def __init__(self, coef: torch.Tensor, slots: torch.Tensor, ctl: torch.Tensor, numel: int, per_sample: int, *,
                 clip=None, noise: bool | str, has_state: bool, depth: int, variance=None, shift: int = 0,
                 guidance: torch.Tensor | None = None, rescale: float = 0.0):
        if coef.dtype != torch.float32 or coef.ndim != 2 or coef.shape[1] != KC.NUM_COLUMNS:
            raise ValueError(f"coef must be float32 [K, {KC.NUM_COLUMNS}], got {coef.dtype} {tuple(coef.shape)}")
        if slots.dtype != torch.int64 or slots.shape != (coef.shape[0], 4) or slots.device != coef.device:
            raise ValueError(f"slots must be int64 [K, 4] = [{coef.shape[0]}, 4] on coef's device")
        if ctl.dtype != torch.int64 or ctl.shape != (3,) or ctl.device != coef.device:
            raise ValueError("ctl must be an int64 tensor [3] (k, offset, seed) on coef's device")
        if shift not in (0, 1, 2, 3):
            raise ValueError(f"shift must be offset & 3, got {shift!r}")
        if depth not in (0, 1, 2, 3) or variance not in VAR_MODES:
            raise ValueError(f"depth must be 0-3 and variance one of {tuple(VAR_MODES)}")
        self.coef, self.slots, self.ctl = coef.contiguous(), slots.contiguous(), ctl
        self.numel, self.per_sample, self.depth, self.has_state = int(numel), int(per_sample), depth, has_state
        self.clip = float(clip or 0.0)
        block, warps = launch_config(self.numel)
        self.grid = grid_size(self.numel, shift, block)
        guided = guidance is not None
        if guided and (guidance.dtype != torch.float32 or guidance.shape != (coef.shape[0],)
                       or guidance.device != coef.device):
            raise ValueError(f"guidance must be float32 [K] = [{coef.shape[0]}] (w_k − 1) on coef's device")
        self.guidance, self.rescale = guidance, float(rescale) if guided else 0.0
        # the furthest element a launch touches: the ring's slots, or a guided output's second half
        # (4n with a variance channel), or the mirror (2n)
        reach = max(1, depth + 1, (4 if variance is not None else 2) if guided else 1)
        self.u_off = (2 * self.numel if variance is not None else self.numel) if guided else 0
        self.kwargs = dict(HAS_CLIP=clip is not None, C=KC.NUM_COLUMNS, ROW_PER_SAMPLE=False, HAS_S=has_state,
                           H=depth, NOISE=NOISE_GIVEN if noise == "given" else (NOISE_DRAWN if noise else NOISE_NONE),
                           VAR=VAR_MODES[variance], LOOP=True,
                           KEY_ON_DEVICE=False, SHIFT=shift, IDX64=index_bits(self.numel * reach, shift),
                           BLOCK=block, num_warps=warps, GUIDE=guided, RESCALE=guided and self.rescale != 0.0,
                           MIRROR=guided)
        self.last_row = coef.shape[0] - 1
        self.batch = self.numel // max(1, self.per_sample)
        self.scales = torch.ones(max(1, self.batch), dtype=torch.float32, device=coef.device) \
            if self.kwargs["RESCALE"] else None

    def buffers(self, like: torch.Tensor) -> LoopBuffers:
        """Zeroed per-batch buffers for x = ``like`` (state and ring, as this run needs)."""
        s = torch.zeros_like(like) if self.has_state else None
        ring = torch.zeros((self.depth + 1,) + tuple(like.shape), dtype=like.dtype, device=like.device) \
            if self.depth else None
        return LoopBuffers(s, ring)

    def __call__(self, x: torch.Tensor, model_output: torch.Tensor, bufs: LoopBuffers, noise=None) -> None:
        """x ← the update of call ctl[0] from the model output (s and the ring updated too);
        ``noise``: the normals (like x) of an instance made with noise="given"."""
        if self.numel == 0:
            return
        with on_device(x):
            gw = self.coef if self.guidance is None else self.guidance
            if self.scales is not None:  # guidance_rescale: one read of both halves → r [B] first
                row = 2 * self.per_sample if self.kwargs["VAR"] else self.per_sample
                _guide_scales_kernel[(self.batch,)](model_output, gw, self.ctl, self.scales, self.per_sample, row,
                                                    self.u_off, self.last_row, self.rescale,
                                                    BLOCK=min(1024, triton.next_power_of_2(max(16, self.per_sample))))
            _update_kernel[self.grid](
                x, model_output, x, x if bufs.s is None else bufs.s, x if bufs.ring is None else bufs.ring,
                self.slots, x if noise is None else noise, self.coef, self.ctl, self.ctl, gw,
                gw if self.scales is None else self.scales, self.numel, self.per_sample, self.last_row, 0, 0, 0,
                0, self.clip, self.u_off, **self.kwargs)
