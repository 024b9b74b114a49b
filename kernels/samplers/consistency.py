"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1), in the
variance-preserving discrete time of fastddpm's schedules.

A consistency model f(x_t, t) maps any point of a probability-flow trajectory to its end, x̂0.
Sampling with N points denoises, then re-noises the estimate to the next (lower) noise level with
fresh noise and denoises again:

    x′ = √ᾱ_p · x̂0c  +  √(1 − ᾱ_p) · z,    ᾱ_p = ᾱ at the next point (1 after the last: x′ = x̂0c)

(openai/consistency_models ``stochastic_iterative_sampler``: x = x0 + √(t² − t_min²)·z in the
variance-exploding form). No term in x itself: unlike DDIM, the state is forgotten and only the
model's x̂0 is carried, so an error of one step is not propagated as a deterministic offset.
The network is the one ``fastddpm.distill(method="consistency")`` trains: x̂0 through the usual
prediction parametrisation (v: √ᾱ·x − √(1 − ᾱ)·v̂), so any prediction type works.

Its table (T = 1000 linear, spacing [999, 499], v-prediction), from ``Table.describe()``:
    k=0 t=999: cx=0.00635282 cm=-0.99998 y0=0.280334 yz=0.959902
    k=1 t=499: cx=0.280334 cm=-0.959902 y0=1
Row k reads x and m and draws z: 12 bytes per element and one normal (as ddpm's rows).
"""
from __future__ import annotations

import numpy as np

from .. import coefficients as KC
from ._table import Table

NAMES = ("consistency",)
CONVENTION = "ddim"  # string spacings place timesteps as DDIMScheduler.set_timesteps
# A consistency model samples in 1–4 steps; "trailing" starts at t = T − 1 (x_T is pure noise).
# Distilled students record their own timesteps (fastddpm.distill), which override these.
DEFAULTS = {"consistency": {"steps": 2, "spacing": "trailing"}}
DESCRIPTION = {"consistency": "multistep consistency sampling (Song et al. 2023): denoise, re-noise, repeat; "
                              "for consistency-distilled models"}


def table(name: str, grid, prediction: str) -> Table:
    ab = grid.alpha_bar
    cx, cm = KC.x0_coefficients(ab[:-1], prediction)
    ab_p = ab[1:]
    return Table(t=grid.t, rows=KC.rows(cx, cm, KC.X0 * np.sqrt(ab_p) + KC.Z * np.sqrt(1.0 - ab_p)))
