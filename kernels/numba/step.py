"""Fused reverse steps (DDPM ancestral and DDIM(η)): x̂0 → clip → update → noise, one pass.

The kernels compute no coefficient: they read float64 rows built by kernels/coefficients.py
(the sampling loop passes its plan's row; the public ops a cached table of every (t, t − 1)
read by t, or for an explicit prev_t one row per call or per sample) and round them to the
data dtype. A chunk whose samples all share (t, t′) — always in the sampling loop,
where t is a stride-0 scalar — is one branch-free vectorised loop over its elements whatever D
is; otherwise the chunk is walked sample by sample, reading each sample's row.
"""
import numba
import numpy as np
from numba import njit

from .. import coefficients as KC
from .common import CHUNK, kernel, num_chunks, philox_key
from .philox import chunk_normals


@njit(inline="always", cache=True, error_model="numpy")
def _clip(x0, lo_clip, hi_clip, has_clip):
    return min(max(x0, lo_clip), hi_clip) if has_clip else x0


@njit(inline="always", cache=True, error_model="numpy")
def _ddpm_update(x, m, z, cx, cm, c1, c2, sg, lo_clip, hi_clip, has_clip):
    """x_prev = c1·clip(x̂0) + c2·x + σ·z with x̂0 = cx·x + cm·m (cx = 0, cm = 1 for "sample").

    The zero term is exact for finite x, so every prediction type takes the same branch-free
    path (a per-element branch on the type would keep LLVM from vectorising).
    """
    x0 = _clip(cx * x + cm * m, lo_clip, hi_clip, has_clip)
    return (c1 * x0 + c2 * x) + sg * z


@njit(inline="always", cache=True, error_model="numpy")
def _ddim_update(x, m, z, cx, cm, sab, s1mab, sab_p, dirc, sg, lo_clip, hi_clip, has_clip, is_eps):
    """√ᾱ_p·clip(x̂0) + dir·ε̂ + σ·z; ε̂ from the unclipped x̂0 unless the output is ε."""
    x0 = cx * x + cm * m
    eps = m if is_eps else (x - sab * x0) / s1mab
    x0 = _clip(x0, lo_clip, hi_clip, has_clip)
    return (sab_p * x0 + dirc * eps) + sg * z


@njit(inline="always", cache=True, error_model="numpy")
def _chunk_is_uniform(t, t_stride, prev, p_stride, b_first, b_last):
    """True when samples b_first … b_last share (t, t′): a scalar t (stride 0) or equal rows.

    O(samples in the chunk) reads of t, so the per-sample path pays ≤ one scan per chunk.
    """
    if t_stride == 0 and p_stride == 0:
        return True
    t0, p0 = t[b_first * t_stride], prev[b_first * p_stride]
    for b in range(b_first + 1, b_last + 1):
        if t[b * t_stride] != t0 or prev[b * p_stride] != p0:
            return False
    return True


@njit(inline="always", cache=True, error_model="numpy")
def _ddpm_row(coef, r, dt):
    return dt(coef[r, 0]), dt(coef[r, 1]), dt(coef[r, 2]), dt(coef[r, 3]), dt(coef[r, 4])


@njit(inline="always", cache=True, error_model="numpy")
def _ddpm_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, cx, cm, c1, c2, sg,
               lo_clip, hi_clip, has_clip):
    """out[k] for start ≤ k < stop with one set of coefficients; buf[k − base] is noise k.

    Three loops rather than one with a per-element branch on the noise source: each is
    branch-free (selects only) and vectorises.
    """
    dt = x_t.dtype.type
    if noise_given:
        for k in range(start, stop):
            out[k] = _ddpm_update(x_t[k], m[k], noise[k], cx, cm, c1, c2, sg, lo_clip, hi_clip, has_clip)
    elif noise_needed:
        for k in range(start, stop):
            out[k] = _ddpm_update(x_t[k], m[k], dt(buf[k - base]), cx, cm, c1, c2, sg, lo_clip, hi_clip, has_clip)
    else:
        for k in range(start, stop):
            out[k] = _ddpm_update(x_t[k], m[k], dt(0.0), cx, cm, c1, c2, sg, lo_clip, hi_clip, has_clip)


@njit(inline="always", cache=True, error_model="numpy")
def _ddim_row(coef, r, dt):
    return (dt(coef[r, 0]), dt(coef[r, 1]), dt(coef[r, 2]), dt(coef[r, 3]), dt(coef[r, 4]), dt(coef[r, 5]),
            dt(coef[r, 6]))


@njit(inline="always", cache=True, error_model="numpy")
def _ddim_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, cx, cm, sab, s1mab,
               sab_p, dirc, sg, lo_clip, hi_clip, has_clip, is_eps):
    """Same conventions as _ddpm_span."""
    dt = x_t.dtype.type
    if noise_given:
        for k in range(start, stop):
            out[k] = _ddim_update(x_t[k], m[k], noise[k], cx, cm, sab, s1mab, sab_p, dirc, sg,
                                  lo_clip, hi_clip, has_clip, is_eps)
    elif noise_needed:
        for k in range(start, stop):
            out[k] = _ddim_update(x_t[k], m[k], dt(buf[k - base]), cx, cm, sab, s1mab, sab_p, dirc, sg,
                                  lo_clip, hi_clip, has_clip, is_eps)
    else:
        for k in range(start, stop):
            out[k] = _ddim_update(x_t[k], m[k], dt(0.0), cx, cm, sab, s1mab, sab_p, dirc, dt(0.0),
                                  lo_clip, hi_clip, has_clip, is_eps)


@njit(inline="always", cache=True, error_model="numpy")
def _span(is_ddim, x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, coef, r,
          lo_clip, hi_clip, has_clip, is_eps):
    """out[k] for start ≤ k < stop with the coefficients of row r (a branch per span, not per element)."""
    dt = x_t.dtype.type
    if is_ddim:
        cx, cm, sab, s1mab, sab_p, dirc, sg = _ddim_row(coef, r, dt)
        _ddim_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, cx, cm, sab, s1mab,
                   sab_p, dirc, sg, lo_clip, hi_clip, has_clip, is_eps)
    else:
        cx, cm, c1, c2, sg = _ddpm_row(coef, r, dt)
        _ddpm_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, cx, cm, c1, c2, sg,
                   lo_clip, hi_clip, has_clip)


@kernel
def _step_kernel(x_t, m, out, t, t_stride, prev, p_stride, coef, row_stride, by_t, is_ddim, is_eps, clip, has_clip,
                 noise, noise_given, noise_needed, key0, key1, offset, per_sample, n_chunks):
    """ddpm (is_ddim False) or ddim rows [R, C]: sample b reads row t_b (by_t: a table of every
    (t, t − 1)) or row b·row_stride."""
    n = x_t.shape[0]
    dt = x_t.dtype.type
    for c in numba.prange(n_chunks):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        if noise_given or not noise_needed:
            buf, shift = np.empty(0, dtype=np.float32), np.int64(0)
        else:
            buf, shift = chunk_normals(key0, key1, offset + lo, hi - lo)
        base = lo - shift
        lo_clip = dt(-clip)
        hi_clip = dt(clip)
        b = lo // per_sample
        if _chunk_is_uniform(t, t_stride, prev, p_stride, b, (hi - 1) // per_sample):
            # The sampling loop's case: the whole chunk is one vectorised loop whatever D is.
            r = t[b * t_stride] if by_t else b * row_stride
            _span(is_ddim, x_t, m, out, noise, noise_given, noise_needed, buf, base, lo, hi, coef, r,
                  lo_clip, hi_clip, has_clip, is_eps)
            continue
        start = lo
        while start < hi:  # sample by sample: a row read (5–7 loads) per sample, no coefficient math
            stop = min(hi, (b + 1) * per_sample)
            r = t[b * t_stride] if by_t else b * row_stride
            _span(is_ddim, x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, coef, r,
                  lo_clip, hi_clip, has_clip, is_eps)
            start = stop
            b += 1


def _index_arrays(t, prev_t):
    """Scalars become length-1 arrays with stride 0 (no per-step allocation of [B])."""
    t = np.atleast_1d(np.asarray(t, dtype=np.int64))
    prev_t = np.atleast_1d(np.asarray(prev_t, dtype=np.int64))
    return t, int(t.shape[0] > 1), prev_t, int(prev_t.shape[0] > 1)


def step_rows(sampler, alphas_cumprod, t, prev_t, **options):
    """(rows [R, C] float64, row stride, by_t) for index arrays t, prev_t of 1 or B entries.

    prev_t = t − 1 everywhere: the cached rows of every (t, t − 1) of this ᾱ table, read by t
    (no per-call row math: B rows of float64 math cost 55–66 ms at B = 2¹⁹, more than the step
    itself at D = 2). Otherwise one row for a scalar (t, t′) (stride 0), else one per sample.
    """
    if prev_t.shape == t.shape and np.array_equal(prev_t, t - 1):
        def build():
            ts = np.arange(alphas_cumprod.shape[0])
            return np.ascontiguousarray(KC.rows(sampler, *KC.step_alphas(alphas_cumprod, ts, ts - 1), **options))
        return KC.cached(alphas_cumprod, ("numba", sampler, tuple(sorted(options.items()))), build), 0, True
    t, prev_t = np.broadcast_arrays(t, prev_t)
    ab_t, ab_p, final = KC.step_alphas(alphas_cumprod, t, prev_t)
    rows = np.ascontiguousarray(KC.rows(sampler, ab_t, ab_p, final, **options))
    return rows, int(rows.shape[0] > 1), False


def ddpm_step(x_t, model_output, out, t, prev_t, alphas_cumprod, prediction, variance, clip, noise,
              seed, stream, offset, per_sample):
    """Flat contiguous x_t, model_output, out (out may be x_t); t, prev_t int or int64 [B].

    Bytes per element: 12 (read x_t and the model output, write x_prev).
    """
    t, ts, prev_t, ps = _index_arrays(t, prev_t)
    coef, rs, by_t = step_rows("ddpm", alphas_cumprod, t, prev_t, prediction=prediction, variance=variance)
    k0, k1 = philox_key(seed, stream)
    given = noise is not None
    needed = bool((prev_t >= 0).any())
    if not given:
        noise = x_t[:0]
    _step_kernel(x_t.shape[0],
                 x_t, model_output, out, t, ts, prev_t, ps, coef, rs, by_t, False, False,
                 float(clip or 0.0), clip is not None, noise, given, needed, k0, k1,
                 np.int64(offset), per_sample, num_chunks(x_t.shape[0]))


def ddim_step(x_t, model_output, out, t, prev_t, alphas_cumprod, prediction, eta, clip, noise,
              seed, stream, offset, per_sample):
    """Same conventions as ddpm_step; noise is drawn only when η > 0. Bytes per element: 12."""
    t, ts, prev_t, ps = _index_arrays(t, prev_t)
    coef, rs, by_t = step_rows("ddim", alphas_cumprod, t, prev_t, prediction=prediction, eta=float(eta))
    k0, k1 = philox_key(seed, stream)
    given = noise is not None and eta > 0
    needed = eta > 0 and bool((prev_t >= 0).any())
    noise = noise if given else x_t[:0]
    _step_kernel(x_t.shape[0],
                 x_t, model_output, out, t, ts, prev_t, ps, coef, rs, by_t, True, prediction == "epsilon",
                 float(clip or 0.0), clip is not None, noise, given, needed, k0, k1,
                 np.int64(offset), per_sample, num_chunks(x_t.shape[0]))
