"""A sampling plan: the grid a run visits and its sampler's coefficient table, computed once in float64.

``make_plan`` places the points (fastddpm.sampling.timesteps.make_grid) and asks the sampler's
own module (fastddpm.kernels.samplers) for its table; a loop reads row k of ``plan.coef``
[K, C] for network call k (on a GPU the table is copied to the device once, so the loop never
syncs). Nothing here knows a sampler's name: what a run needs around the kernel (history
depth, network calls, state buffer, noise, variance channel) comes from the table itself.
The formulas and the layout are in docs/sampling.md ("Step math").

No torch here: the ONNX Runtime path reuses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..kernels import samplers
from ..kernels.coefficients import COLUMNS  # noqa: F401 (re-exported: the row layout)
from .timesteps import make_grid

SAMPLERS = samplers.NAMES


@dataclass(frozen=True)
class Plan:
    """Everything a loop needs besides the model: the sampler's table on its grid."""

    sampler: str
    grid: samplers.Grid
    table: samplers.Table
    prediction: str
    clip: float | None
    options: dict = field(default_factory=dict)  # the sampler options given (e.g. eta, order)

    @property
    def t(self) -> np.ndarray:
        """int64 [K]: the timestep of network call k."""
        return self.table.t

    @property
    def coef(self) -> np.ndarray:
        """float64 [K, C]: row k of network call k (kernels.coefficients.COLUMNS)."""
        return self.table.rows

    @property
    def num_steps(self) -> int:
        """Network calls of a run (rows of the table; 2N − 1 for Heun's N steps)."""
        return self.table.calls

    @property
    def noisy(self) -> bool:
        """Whether any call adds noise (call k draws stream k + 1)."""
        return self.table.noisy

    def settings(self) -> dict:
        """What identifies the run's math (for resume records and caches)."""
        return {"sampler": self.sampler, "prediction": self.prediction, "clip": self.clip,
                "options": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in sorted(self.options.items())}}


def check_clip(clip) -> float | None:
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not (clip > 0 and math.isfinite(clip))):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    return None if clip is None else float(clip)


def make_plan(schedule, sampler: str = "ddpm", steps: int | None = None, spacing=None, *,
              prediction: str = "epsilon", clip: float | None = None, final: str | None = None,
              **options) -> Plan:
    """Validate the sampler settings and build the plan.

    sampler: one of :data:`SAMPLERS`; steps: the sampler's steps (None: its default; Heun's N
    steps are 2N − 1 network calls); spacing: None (the sampler's default), one of
    fastddpm.sampling.timesteps.ALL_SPACINGS or a list of timesteps; final: "zero" | "sigma_min"
    (None: the sampler's default); ``options``: the sampler's own (``eta``, ``variance``,
    ``order``, ``solver_type``, …; fastddpm.kernels.samplers.options(sampler) lists them).
    An option set to None is left at the sampler's default.
    """
    samplers.module(sampler)  # a clear error naming the samplers
    options = {k: v for k, v in options.items() if v is not None}
    allowed = samplers.options(sampler)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} {'does' if len(unknown) == 1 else 'do'} not apply to "
                         f"sampler={sampler!r} (its options: {', '.join(allowed) or 'none'})")
    clip = check_clip(clip)
    grid = make_grid(schedule, sampler, steps, spacing, final=final)
    table = samplers.compile(sampler, grid, prediction, **options)
    return Plan(sampler, grid, table, prediction, clip, options)
