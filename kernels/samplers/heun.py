"""Heun's second-order method (Karras et al. 2022), as diffusers' HeunDiscreteScheduler.

In the variance-exploding variable X = x/α (σ = √((1 − ᾱ)/ᾱ)), a step σ_i → σ_{i+1} costs two
network calls, so N steps are 2N − 1 rows (the last step, to σ = 0, is a plain Euler step):

    row 2i     (at σ_i):    d = (X − x̂0c)/σ_i;  X₂ = X + d·(σ_{i+1} − σ_i);  S′ = x;  push d
    row 2i + 1 (at σ_{i+1}): d₂ = (X₂ − x̂0c)/σ_{i+1};  X′ = S/α_i + ½·(h1 + d₂)·(σ_{i+1} − σ_i)

with x = α·X the state the network is fed. The second call is made at timestep t_{i+1}, the
same as the first call of the next step (diffusers' repeated timesteps).
"""
from __future__ import annotations

import numpy as np

from .. import coefficients as KC
from ._table import Table

NAMES = ("heun",)
CONVENTION = "euler"
DEFAULTS = {"heun": {"steps": 10, "spacing": "karras"}}
DESCRIPTION = {"heun": "Heun (2nd order, 2 network calls per step; diffusers' HeunDiscreteScheduler)"}


def table(name: str, grid, prediction: str) -> Table:
    ab, alpha, sig = grid.alpha_bar, grid.alpha, grid.sigma_ve
    if ab[0] == 0.0:
        raise ValueError("heun needs alpha_bar > 0 at the first point (sigma = inf)")
    K = grid.steps
    cx_all, cm_all = KC.x0_coefficients(ab, prediction)  # per point, the final one included (row 2i + 1)
    t, rows, push = [], [], []
    for i in range(K):
        s, s_next = sig[i], sig[i + 1]
        X = KC.X / alpha[i]
        d = (X - KC.X0) / s
        X2 = X + d * (s_next - s)
        t.append(grid.t[i])
        last = i == K - 1 and s_next == 0.0
        if last:  # to σ = 0: Euler
            rows.append(KC.rows(cx_all[i:i + 1], cm_all[i:i + 1], X2 * alpha[i + 1]))
            push.append(False)
            continue
        rows.append(KC.rows(cx_all[i:i + 1], cm_all[i:i + 1], X2 * alpha[i + 1], s=KC.X, q=d))
        push.append(True)
        # second call, at σ_{i+1}, on x₂ = α_{i+1}·X₂ (the state after row 2i)
        X_2 = KC.X / alpha[i + 1]
        d2 = (X_2 - KC.X0) / s_next
        Xn = KC.S / alpha[i] + (KC.H1 + d2) * (0.5 * (s_next - s))
        t.append(grid.t[i + 1] if i + 1 < K else 0)  # a final sigma_min point is t = 0
        rows.append(KC.rows(cx_all[i + 1:i + 2], cm_all[i + 1:i + 2], Xn * alpha[i + 1]))
        push.append(False)
    return Table(t=np.asarray(t), rows=np.concatenate(rows), push=np.asarray(push))
