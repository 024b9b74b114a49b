"""A sampling plan: the visited timesteps and every per-step coefficient, computed once in float64.

A loop reads row k of ``plan.coef`` [K, C] for step k; on a GPU the table is copied to the
device once, so the loop never syncs. The rows and their columns come from
kernels/coefficients.py (``rows``, ``COLUMNS``), the one home of the step math; the formulas
and the layout are in docs/sampling.md ("Step math").

No torch here: the ONNX runtime path reuses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels import coefficients as KC
from ..kernels.coefficients import COLUMNS, PREDICTIONS, SAMPLERS, VARIANCES  # noqa: F401 (COLUMNS: re-exported)
from .timesteps import step_pairs, timesteps

DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp2m": 20}  # None: all T steps


@dataclass(frozen=True)
class Plan:
    """Everything a loop needs besides the model: [K] timesteps, [K] targets, [K, C] coefficients."""

    sampler: str
    t: np.ndarray          # int64 [K], descending
    prev_t: np.ndarray     # int64 [K], the next visited step, −1 at the end
    coef: np.ndarray       # float64 [K, C], columns COLUMNS[sampler]
    prediction: str
    variance: str
    eta: float
    clip: float | None

    @property
    def num_steps(self) -> int:
        return int(self.t.shape[0])

    @property
    def noisy(self) -> bool:
        """Whether any step adds noise (stream k for step k)."""
        if self.sampler == "dpmpp2m":
            return False
        return bool(np.any(self.coef[:, -1] > 0))


def make_plan(schedule, sampler: str = "ddpm", steps: int | None = None, spacing="leading", *,
              eta: float = 0.0, prediction: str = "epsilon", variance: str = "fixed_small",
              clip: float | None = None) -> Plan:
    """Validate the sampler settings and build the plan (see the module docstring)."""
    KC.check_choice(sampler, "sampler", SAMPLERS)
    KC.check_choice(prediction, "prediction", PREDICTIONS)
    KC.check_choice(variance, "variance", VARIANCES)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if eta and sampler != "ddim":
        raise ValueError(f"eta applies to sampler='ddim' only; got eta={eta} with sampler={sampler!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not (clip > 0 and math.isfinite(clip))):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    T = schedule.num_steps
    if steps is None and isinstance(spacing, str):
        steps = DEFAULT_STEPS[sampler] or T
        steps = min(steps, T)
    convention = "dpmsolver" if sampler == "dpmpp2m" else "ddim"
    t, prev = step_pairs(timesteps(T, steps, spacing, convention=convention))
    ab_t, ab_p, final = KC.step_alphas(np.asarray(schedule.alphas_cumprod, dtype=np.float64), t, prev)
    coef = KC.rows(sampler, ab_t, ab_p, final, prediction=prediction, variance=variance, eta=float(eta))
    return Plan(sampler, t, prev, np.ascontiguousarray(coef), prediction, variance, float(eta),
                None if clip is None else float(clip))

