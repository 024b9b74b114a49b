"""Fused reverse steps (DDPM ancestral and DDIM(η)): x̂0 → clip → update → noise, one pass.

Coefficients are computed in float64 from ᾱ, then rounded to the data dtype, in the same order
as kernels/reference.py. A chunk whose samples all share (t, t′) — always in the sampling loop,
where t is a stride-0 scalar — is one branch-free vectorised loop over its elements whatever D
is; otherwise the chunk is walked sample by sample, recomputing the coefficients only when
(t, t′) changes.
"""
import math

import numba
import numpy as np
from numba import njit

from .common import CHUNK, kernel, num_chunks, philox_key
from .philox import chunk_normals

PRED_EPSILON, PRED_SAMPLE, PRED_V = 0, 1, 2
VAR_FIXED_SMALL, VAR_FIXED_LARGE = 0, 1
_MIN_VARIANCE = 1e-20


@njit(inline="always", cache=True, error_model="numpy")
def _x0_coefficients(ab_t, pred):
    """x̂0 = cx·x_t + cm·out."""
    if pred == PRED_EPSILON:
        return math.sqrt(1.0 / ab_t), -math.sqrt(1.0 / ab_t - 1.0)
    if pred == PRED_V:
        return math.sqrt(ab_t), -math.sqrt(1.0 - ab_t)
    return 0.0, 1.0


@njit(inline="always", cache=True, error_model="numpy")
def _alphas(ac, tb, pb):
    ab_t = ac[tb]
    ab_p = ac[pb] if pb >= 0 else 1.0
    return ab_t, ab_p


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
def _ddpm_coefficients(ac, tb, pb, pred, var, dt):
    ab_t, ab_p = _alphas(ac, tb, pb)
    alpha_c = ab_t / ab_p
    beta_c = 1.0 - alpha_c
    fx, fm = _x0_coefficients(ab_t, pred)
    if var == VAR_FIXED_SMALL:
        variance = max((1.0 - ab_p) / (1.0 - ab_t) * beta_c, _MIN_VARIANCE)
    else:
        variance = beta_c
    c1 = dt(math.sqrt(ab_p) * beta_c / (1.0 - ab_t))
    c2 = dt(math.sqrt(alpha_c) * (1.0 - ab_p) / (1.0 - ab_t))
    sg = dt(math.sqrt(variance)) if pb >= 0 else dt(0.0)
    return dt(fx), dt(fm), c1, c2, sg


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


@kernel
def _ddpm_kernel(x_t, m, out, t, t_stride, prev, p_stride, ac, pred, var, clip, has_clip,
                 noise, noise_given, noise_needed, key0, key1, offset, per_sample, n_chunks):
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
            cx, cm, c1, c2, sg = _ddpm_coefficients(ac, t[b * t_stride], prev[b * p_stride], pred, var, dt)
            _ddpm_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, lo, hi, cx, cm, c1, c2, sg,
                       lo_clip, hi_clip, has_clip)
            continue
        start = lo
        last_t, last_p = np.int64(-2), np.int64(-2)
        cx = cm = c1 = c2 = sg = dt(0.0)
        while start < hi:
            stop = min(hi, (b + 1) * per_sample)
            tb = t[b * t_stride]
            pb = prev[b * p_stride]
            if tb != last_t or pb != last_p:
                cx, cm, c1, c2, sg = _ddpm_coefficients(ac, tb, pb, pred, var, dt)
                last_t, last_p = tb, pb
            _ddpm_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, cx, cm, c1, c2, sg,
                       lo_clip, hi_clip, has_clip)
            start = stop
            b += 1


@njit(inline="always", cache=True, error_model="numpy")
def _ddim_coefficients(ac, tb, pb, pred, eta, dt):
    ab_t, ab_p = _alphas(ac, tb, pb)
    beta_c = 1.0 - ab_t / ab_p
    fx, fm = _x0_coefficients(ab_t, pred)
    sigma = eta * math.sqrt((1.0 - ab_p) / (1.0 - ab_t)) * math.sqrt(beta_c)
    if pb < 0:
        sigma = 0.0
    return (dt(fx), dt(fm), dt(math.sqrt(ab_t)), dt(math.sqrt(1.0 - ab_t)), dt(math.sqrt(ab_p)),
            dt(math.sqrt(max(1.0 - ab_p - sigma * sigma, 0.0))), dt(sigma))


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


@kernel
def _ddim_kernel(x_t, m, out, t, t_stride, prev, p_stride, ac, pred, eta, clip, has_clip,
                 noise, noise_given, noise_needed, key0, key1, offset, per_sample, n_chunks):
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
        is_eps = pred == PRED_EPSILON
        b = lo // per_sample
        if _chunk_is_uniform(t, t_stride, prev, p_stride, b, (hi - 1) // per_sample):
            cx, cm, sab, s1mab, sab_p, dirc, sg = _ddim_coefficients(ac, t[b * t_stride], prev[b * p_stride],
                                                                      pred, eta, dt)
            _ddim_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, lo, hi, cx, cm, sab, s1mab,
                       sab_p, dirc, sg, lo_clip, hi_clip, has_clip, is_eps)
            continue
        start = lo
        last_t, last_p = np.int64(-2), np.int64(-2)
        cx = cm = sab = s1mab = sab_p = dirc = sg = dt(0.0)
        while start < hi:
            stop = min(hi, (b + 1) * per_sample)
            tb = t[b * t_stride]
            pb = prev[b * p_stride]
            if tb != last_t or pb != last_p:
                cx, cm, sab, s1mab, sab_p, dirc, sg = _ddim_coefficients(ac, tb, pb, pred, eta, dt)
                last_t, last_p = tb, pb
            _ddim_span(x_t, m, out, noise, noise_given, noise_needed, buf, base, start, stop, cx, cm, sab, s1mab,
                       sab_p, dirc, sg, lo_clip, hi_clip, has_clip, is_eps)
            start = stop
            b += 1


def _index_arrays(t, prev_t):
    """Scalars become length-1 arrays with stride 0 (no per-step allocation of [B])."""
    t = np.atleast_1d(np.asarray(t, dtype=np.int64))
    prev_t = np.atleast_1d(np.asarray(prev_t, dtype=np.int64))
    return t, int(t.shape[0] > 1), prev_t, int(prev_t.shape[0] > 1)


def ddpm_step(x_t, model_output, out, t, prev_t, alphas_cumprod, pred, var, clip, noise,
              seed, stream, offset, per_sample):
    """Flat contiguous x_t, model_output, out (out may be x_t); t, prev_t int or int64 [B].

    Bytes per element: 12 (read x_t and the model output, write x_prev).
    """
    t, ts, prev_t, ps = _index_arrays(t, prev_t)
    k0, k1 = philox_key(seed, stream)
    given = noise is not None
    needed = bool((prev_t >= 0).any())
    if not given:
        noise = x_t[:0]
    _ddpm_kernel(x_t.shape[0],
                 x_t, model_output, out, t, ts, prev_t, ps, alphas_cumprod, pred, var,
                 float(clip or 0.0), clip is not None, noise, given, needed, k0, k1,
                 np.int64(offset), per_sample, num_chunks(x_t.shape[0]))


def ddim_step(x_t, model_output, out, t, prev_t, alphas_cumprod, pred, eta, clip, noise,
              seed, stream, offset, per_sample):
    """Same conventions as ddpm_step; noise is drawn only when η > 0. Bytes per element: 12."""
    t, ts, prev_t, ps = _index_arrays(t, prev_t)
    k0, k1 = philox_key(seed, stream)
    given = noise is not None and eta > 0
    needed = eta > 0 and bool((prev_t >= 0).any())
    noise = noise if given else x_t[:0]
    _ddim_kernel(x_t.shape[0],
                 x_t, model_output, out, t, ts, prev_t, ps, alphas_cumprod, pred, float(eta),
                 float(clip or 0.0), clip is not None, noise, given, needed, k0, k1,
                 np.int64(offset), per_sample, num_chunks(x_t.shape[0]))
