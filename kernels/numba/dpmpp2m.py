"""Fused DPM-Solver++(2M) update: x̂0 → clip → x′ = a·x_t + b·x̂0 + c·x̂0_prev, and x̂0_prev ← x̂0.

One pass, 20 bytes per element in float32 (read x_t, the model output and x̂0_prev; write x′
and x̂0). The per-step scalars are a row of kernels/coefficients.py (``dpmpp2m_rows``, float64,
rounded to the data dtype here); the NumPy oracle is kernels/reference.py ``dpmpp2m_update``.
Small batches run the serial compile (see kernels.numba.common.kernel).
"""
import numba
from numba import njit

from ..coefficients import PRED_SAMPLE
from .common import kernel


@njit(inline="always", cache=True)
def _element(x, mk, x0p, cx, cm, a, b, c, pred_sample, lo_clip, hi_clip, has_clip):
    x0 = mk if pred_sample else cx * x + cm * mk
    if has_clip:
        x0 = min(max(x0, lo_clip), hi_clip)
    return a * x + b * x0 + c * x0p, x0


@kernel
def _dpmpp2m_kernel(x_t, m, out, x0_prev, cx, cm, a, b, c, pred_sample, clip, has_clip):
    dt = x_t.dtype.type
    cx, cm, a, b, c, lo, hi = dt(cx), dt(cm), dt(a), dt(b), dt(c), dt(-clip), dt(clip)
    for i in numba.prange(x_t.shape[0]):
        out[i], x0_prev[i] = _element(x_t[i], m[i], x0_prev[i], cx, cm, a, b, c, pred_sample, lo, hi, has_clip)


def dpmpp2m_update(x_t, model_output, out, x0_prev, cx, cm, a, b, c, pred, clip):
    """Flat contiguous arrays of one dtype (out may be x_t); pred is the index in coefficients.PREDICTIONS."""
    _dpmpp2m_kernel(x_t.shape[0], x_t, model_output, out, x0_prev, float(cx), float(cm), float(a),
                    float(b), float(c), pred == PRED_SAMPLE, float(clip or 0.0), clip is not None)
