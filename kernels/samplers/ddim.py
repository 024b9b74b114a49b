"""DDIM(η) (Song et al. 2021), as diffusers' DDIMScheduler.step.

A step t → t′ (ᾱ_p = ᾱ[t′], or the grid's final ᾱ after the last step):

    σ  = η·√((1 − ᾱ_p)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_p)
    x′ = √ᾱ_p · x̂0c  +  √(1 − ᾱ_p − σ²) · ε̂  +  σ·z

ε̂ comes from the network output (diffusers' ``use_clipped_model_output=False``), or from the
clipped x̂0 with ``clipped_eps=True``. η = 0 is deterministic (no noise is drawn); with the
final ᾱ = 1 the last step's σ is 0 for any η.
"""
from __future__ import annotations

import math

import numpy as np

from .. import coefficients as KC
from ._table import Table

NAMES = ("ddim",)
CONVENTION = "ddim"
DEFAULTS = {"ddim": {"steps": 50, "spacing": "leading"}}
DESCRIPTION = {"ddim": "DDIM (Song et al. 2021); eta > 0 adds noise"}


def check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def step_rows(ab_t, ab_p, final, prediction: str, eta: float = 0.0, clipped_eps: bool = False, xp=np):
    """[N, NUM_COLUMNS] rows of steps (ᾱ_t, ᾱ_p) [N]; also the public op ``ddim_step``'s. (``final``
    is not needed: σ vanishes by itself when the run ends at ᾱ_p = 1.)"""
    cx, cm = KC.x0_coefficients(ab_t, prediction, xp)
    beta_c = 1.0 - ab_t / ab_p
    sigma = eta * xp.sqrt((1.0 - ab_p) / (1.0 - ab_t)) * xp.sqrt(xp.maximum(beta_c, 0.0))
    direction = xp.sqrt(xp.maximum(1.0 - ab_p - sigma * sigma, 0.0))
    eps = KC.eps_hat(ab_t, prediction, from_clipped=clipped_eps, xp=xp)
    return KC.rows(cx, cm, KC.X0 * xp.sqrt(ab_p) + eps * direction + KC.Z * sigma, xp=xp)


def table(name: str, grid, prediction: str, *, eta: float = 0.0, clipped_eps: bool = False) -> Table:
    ab = grid.alpha_bar
    return Table(t=grid.t, rows=step_rows(ab[:-1], ab[1:], None, prediction, check_eta(eta), bool(clipped_eps)))
