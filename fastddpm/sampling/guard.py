"""The NaN/inf guard: a one-pass check of the model output with no temporary array."""
from __future__ import annotations

import numpy as np

try:
    import numba

    # reassoc only (no nnan): lets LLVM vectorise the sum without folding x − x to 0.
    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
    def _all_finite(flat):
        # x − x is 0 for finite x and NaN for NaN/inf.
        acc = flat.dtype.type(0.0)
        for i in range(flat.shape[0]):
            acc += flat[i] - flat[i]
        return acc == 0.0

    def all_finite(x: np.ndarray) -> bool:
        return bool(_all_finite(x.reshape(-1)))
except ImportError:  # pragma: no cover - numba is a core dependency
    def all_finite(x: np.ndarray) -> bool:
        return bool(np.isfinite(x).all())


def nonfinite_error(k: int, t: int, num_steps: int, first: int, last: int) -> FloatingPointError:
    return FloatingPointError(
        f"the model returned NaN or inf at step {k + 1}/{num_steps} (t={t}) for a sample in "
        f"[{first}, {last}]; check the checkpoint/model (pass check_finite=False to skip this guard)"
    )
