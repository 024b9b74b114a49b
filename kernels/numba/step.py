"""The public reverse-step ops on the CPU, ddpm_step and ddim_step: their rows, then the one fused update.

Rows come from the samplers' own modules (kernels/samplers/ddpm.py, ddim.py; float64), rounded
once to the data dtype: a cached table of every (t, t − 1) read by t, or for an explicit prev_t
one row per call (a uniform step) or per sample. The update is kernels/numba/update.py, which
runs a chunk whose samples share a row as one vectorised loop whatever D is, and otherwise
walks the chunk sample by sample.
"""
import numpy as np

from .. import coefficients as KC
from ..samplers import ddim as _ddim
from ..samplers import ddpm as _ddpm
from .update import update


def _step_alphas(alphas_cumprod, t, prev_t):
    ab_t = alphas_cumprod[t]
    ab_p = np.where(prev_t >= 0, alphas_cumprod[np.maximum(prev_t, 0)], 1.0)
    return ab_t, ab_p, prev_t < 0


def step_rows(row_fn, alphas_cumprod, t, prev_t, dtype, **options):
    """(rows [R, C] in ``dtype``, row index per sample int64 [1] or [B]) for t, prev_t [1] or [B].

    prev_t = t − 1 everywhere: the cached rows of every (t, t − 1) of this ᾱ table, read by t
    (no per-call row math: B rows of float64 math cost 55–66 ms at B = 2¹⁹, more than the step
    itself at D = 2). Otherwise one row for a uniform (t, t′), else one per sample.
    """
    t = np.atleast_1d(np.asarray(t, dtype=np.int64))
    prev_t = np.atleast_1d(np.asarray(prev_t, dtype=np.int64))
    if prev_t.shape == t.shape and np.array_equal(prev_t, t - 1):
        def build():
            ts = np.arange(alphas_cumprod.shape[0])
            return np.ascontiguousarray(row_fn(*_step_alphas(alphas_cumprod, ts, ts - 1), **options), dtype=dtype)
        key = ("numba", row_fn.__module__, np.dtype(dtype).name, tuple(sorted(options.items())))
        return KC.cached(alphas_cumprod, key, build), t
    t, prev_t = np.broadcast_arrays(t, prev_t)
    rows = np.ascontiguousarray(row_fn(*_step_alphas(alphas_cumprod, t, prev_t), **options), dtype=dtype)
    return rows, np.arange(rows.shape[0], dtype=np.int64)


def _step(row_fn, x_t, model_output, out, t, prev_t, alphas_cumprod, clip, noise, seed, stream, offset, per_sample,
          noise_wanted, **options):
    rows, ridx = step_rows(row_fn, alphas_cumprod, t, prev_t, x_t.dtype, **options)
    needed = noise_wanted and bool((np.atleast_1d(prev_t) >= 0).any())
    update(x_t, model_output, rows, ridx, out=None if out is x_t else out, clip=clip,
           noise=noise if needed else None, draw_noise=needed and noise is None, seed=seed, stream=stream,
           offset=offset, per_sample=per_sample)


def ddpm_step(x_t, model_output, out, t, prev_t, alphas_cumprod, prediction, variance, clip, noise,
              seed, stream, offset, per_sample):
    """Flat contiguous x_t, model_output, out (out may be x_t); t, prev_t int or int64 [B].

    Bytes per element: 12 (read x_t and the model output, write x_prev).
    """
    _step(_ddpm.step_rows, x_t, model_output, out, t, prev_t, alphas_cumprod, clip, noise, seed, stream, offset,
          per_sample, True, prediction=prediction, variance=variance)


def ddim_step(x_t, model_output, out, t, prev_t, alphas_cumprod, prediction, eta, clip, noise,
              seed, stream, offset, per_sample):
    """Same conventions as ddpm_step; noise is drawn only when η > 0. Bytes per element: 12."""
    _step(_ddim.step_rows, x_t, model_output, out, t, prev_t, alphas_cumprod, clip, noise, seed, stream, offset,
          per_sample, eta > 0, prediction=prediction, eta=float(eta))
