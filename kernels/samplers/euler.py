"""Euler and Euler ancestral (Karras et al. 2022; k-diffusion), as diffusers' EulerDiscreteScheduler
and EulerAncestralDiscreteScheduler.

Both step in the variance-exploding variable X = x/α with σ = √((1 − ᾱ)/ᾱ) (k-diffusion's σ):
the state stays x = α·X, the network is fed x (diffusers' ``scale_model_input``), and a row
maps x back and forth. With d = (X − x̂0c)/σ:

    euler            X′ = X + d·(σ′ − σ)
    euler-ancestral  X′ = X + d·(σ↓ − σ) + σ↑·z,  σ↑ = min(σ′, η·√(σ′²(σ² − σ′²)/σ²)), σ↓ = √(σ′² − σ↑²)

then x′ = α′·X′. Euler is the same map as DDIM(η = 0); euler-ancestral with η = 1 is diffusers'.
"""
from __future__ import annotations

import math

import numpy as np

from .. import coefficients as KC
from ._table import Table

NAMES = ("euler", "euler-ancestral")
CONVENTION = "euler"  # timesteps as EulerDiscreteScheduler.set_timesteps (σ interpolated between integers)
DEFAULTS = {"euler": {"steps": 20, "spacing": "karras"}, "euler-ancestral": {"steps": 20, "spacing": "karras"}}
DESCRIPTION = {"euler": "Euler (k-diffusion / diffusers' EulerDiscreteScheduler)",
               "euler-ancestral": "Euler ancestral: adds noise every step (eta scales it)"}


def table(name: str, grid, prediction: str, *, eta: float = 1.0) -> Table:
    if name == "euler" and eta != 1.0:
        raise ValueError("eta applies to euler-ancestral only")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    ab, alpha, sig = grid.alpha_bar, grid.alpha, grid.sigma_ve
    if ab[0] == 0.0:
        raise ValueError("euler needs alpha_bar > 0 at the first point (sigma = inf); clamp the zero-SNR "
                         "terminal step as diffusers does")
    K = grid.steps
    cx, cm = KC.x0_coefficients(ab[:-1], prediction)
    rows = []
    for i in range(K):
        s, s_next, a_next = sig[i], sig[i + 1], alpha[i + 1]
        X = KC.X / alpha[i]
        d = (X - KC.X0) / s
        if name == "euler":
            Xn = X + d * (s_next - s)
        else:
            up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
            down = math.sqrt(s_next ** 2 - up ** 2)
            Xn = X + d * (down - s) + KC.Z * up
        rows.append(KC.rows(cx[i:i + 1], cm[i:i + 1], Xn * a_next))
    return Table(t=grid.t, rows=np.concatenate(rows))
