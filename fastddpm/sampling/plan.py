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
from .timesteps import resolve_spacing, step_pairs, timesteps

DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp2m": 20}  # None: all T steps
# The spacing a sampler gets when none is given (spacing=None: fastddpm.sample, Pipeline.sample,
# `fastddpm sample`, make_plan, the demo). From the quality-vs-steps table of docs/sampling.md
# (butterfly, the default ResMLP v-prediction net, 4000 samples; p90 distance to the curve / SW
# over the data-vs-data floor): dpmpp2m-20 logsnr 0.049 / 1.12 against leading 0.115 / 1.25 and
# trailing 0.123 / 1.27 (its uniform spacings end at t = 47 and return that step's blurred x̂0);
# ddim-50 leading 0.072 / 1.46, logsnr 0.054 / 1.84 — logsnr is sharper but spends too few
# steps at high noise, which moves mass between the lobes (SW), so ddim keeps leading, as does
# ddpm (ddpm-250 leading 0.042 / 0.88, trailing 0.044 / 0.87, logsnr 0.041 / 1.12).
DEFAULT_SPACING = {"ddpm": "leading", "ddim": "leading", "dpmpp2m": "logsnr"}


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


def make_plan(schedule, sampler: str = "ddpm", steps: int | None = None, spacing=None, *,
              eta: float = 0.0, prediction: str = "epsilon", variance: str = "fixed_small",
              clip: float | None = None) -> Plan:
    """Validate the sampler settings and build the plan (see the module docstring).

    spacing: None (the sampler's :data:`DEFAULT_SPACING`), "leading" | "trailing" | "linspace" |
    "logsnr" or a list of timesteps (fastddpm.sampling.timesteps)."""
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
    steps, spacing = resolve_spacing(schedule, sampler, steps, spacing)
    if steps is None and isinstance(spacing, str):
        steps = DEFAULT_STEPS[sampler] or T
        steps = min(steps, T)
    convention = "dpmsolver" if sampler == "dpmpp2m" else "ddim"
    t, prev = step_pairs(timesteps(T, steps, spacing, convention=convention))
    ab_t, ab_p, final = KC.step_alphas(np.asarray(schedule.alphas_cumprod, dtype=np.float64), t, prev)
    coef = KC.rows(sampler, ab_t, ab_p, final, prediction=prediction, variance=variance, eta=float(eta))
    return Plan(sampler, t, prev, np.ascontiguousarray(coef), prediction, variance, float(eta),
                None if clip is None else float(clip))

