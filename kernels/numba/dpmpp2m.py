"""Fused DPM-Solver++(2M) update: x̂0 → clip → x′ = a·x_t + b·x̂0 + c·x̂0_prev, and x̂0_prev ← x̂0.

One pass, 20 bytes per element in float32 (read x_t, the model output and x̂0_prev; write x′
and x̂0). The per-step scalars come from fastddpm.sampling.plan (float64, rounded to the data
dtype here); the NumPy oracle is fastddpm.sampling.steppers.dpmpp2m_update_reference.
"""
import numba
from numba import njit

PRED_SAMPLE = 1  # index of "sample" in kernels.reference.PREDICTIONS


@njit(parallel=True, cache=True)
def _dpmpp2m_kernel(x_t, m, out, x0_prev, cx, cm, a, b, c, pred_sample, clip, has_clip):
    dt = x_t.dtype.type
    cx, cm, a, b, c = dt(cx), dt(cm), dt(a), dt(b), dt(c)
    lo_clip, hi_clip = dt(-clip), dt(clip)
    for i in numba.prange(x_t.shape[0]):
        x = x_t[i]
        if pred_sample:
            x0 = m[i]
        else:
            x0 = cx * x + cm * m[i]
        if has_clip:
            x0 = min(max(x0, lo_clip), hi_clip)
        y = a * x + b * x0 + c * x0_prev[i]
        x0_prev[i] = x0
        out[i] = y


def dpmpp2m_update(x_t, model_output, out, x0_prev, cx, cm, a, b, c, pred, clip):
    """Flat contiguous arrays of one dtype (out may be x_t); pred is the PREDICTIONS index."""
    _dpmpp2m_kernel(x_t, model_output, out, x0_prev, float(cx), float(cm), float(a), float(b), float(c),
                    pred == PRED_SAMPLE, float(clip or 0.0), clip is not None)
