"""The NaN/inf guard: one reduction over the model output, no temporary array.

A sum is finite only if every term is (NaN and ±inf propagate), so ``isfinite(sum)`` proves
the output clean in one vectorised pass (~2 µs at n = 1); only when the sum is not finite (a
NaN/inf, or a float overflow of huge but finite values) is the exact element check run.
"""
from __future__ import annotations

import numpy as np


def all_finite(x: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(x, axis=None)):
            return True
    return bool(np.isfinite(x).all())


def nonfinite_error(k: int, t: int, num_steps: int, first: int, last: int) -> FloatingPointError:
    return FloatingPointError(
        f"the model returned NaN or inf at step {k + 1}/{num_steps} (t={t}) for a sample in "
        f"[{first}, {last}]; check the checkpoint/model (pass check_finite=False to skip this guard)"
    )
