"""DEIS (Zhang & Chen 2023), the log-ρ multistep form of diffusers' DEISMultistepScheduler, orders 1–3.

DEIS integrates the noise prediction ε̂ (from the clipped x̂0 when clipping) in ρ = σ/α, with
the earlier ε̂ on the history ring: a step s0 → t is

    x′ = α_t·(x/α_s0 + Σ_j c_j·ε̂_j),   c_j = ∫_{ρ_s0}^{ρ_t} ℓ_j(log ρ) dρ

where ℓ_j is the Lagrange basis polynomial in log ρ through the points of ε̂_0 … ε̂_{order−1}
(diffusers' ``ind_fn`` closed forms); the first order is DDIM: x′ = α_t/α_s0·x − σ_t(e^h − 1)·ε̂.
Warm-up and ``lower_order_final`` (fewer than 15 steps) as diffusers. DEIS ends at the noise
level of t = 0 (diffusers' only choice: ε̂ needs σ > 0), so its default grid's final ᾱ is ᾱ_0.
"""
from __future__ import annotations

import math

import numpy as np

from .. import coefficients as KC
from ._table import Table

NAMES = ("deis",)
CONVENTION = "dpmsolver"
DEFAULTS = {"deis": {"steps": 10, "spacing": "logsnr", "final": "sigma_min"}}
DESCRIPTION = {"deis": "DEIS multistep (log-rho, order 1-3), ends at the noise level of t = 0"}


def _ind2(t, b, c):
    """∫ (log t − log c)/(log b − log c) dt, as diffusers."""
    return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))


def _ind3(t, b, c, d):
    """∫ (log t − log c)(log t − log d)/((log b − log c)(log b − log d)) dt, as diffusers."""
    lc, ld, lt = math.log(c), math.log(d), math.log(t)
    num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt ** 2 - 2 * lt + 2)
    return num / ((math.log(b) - lc) * (math.log(b) - ld))


def table(name: str, grid, prediction: str, *, order: int = 2, lower_order_final: bool = True) -> Table:
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3 for deis, got {order!r}")
    ab, alpha, sigma, lam = grid.alpha_bar, grid.alpha, grid.sigma, grid.lam
    if ab[-1] == 1.0:
        raise ValueError("deis integrates the noise prediction and needs a final sigma > 0: end the grid at "
                         "alpha_bar[0] (final='sigma_min', its default)")
    K = grid.steps
    rho = sigma / alpha
    cx, cm = KC.x0_coefficients(ab[:-1], prediction)
    rows = []
    for i in range(K):
        o = min(order, i + 1)
        if i == K - 1 and lower_order_final and K < 15:
            o = 1
        elif i == K - 2 and lower_order_final and K < 15:
            o = min(o, 2)
        eps = KC.eps_hat(ab[i], prediction, from_clipped=True)  # diffusers: ε from the (thresholded) x̂0
        at, a0 = alpha[i + 1], alpha[i]
        if ab[i + 1] == ab[i]:  # a null step (equal points): the identity
            y = KC.X
        elif o == 1:
            y = KC.X * (at / a0) - eps * (sigma[i + 1] * math.expm1(lam[i + 1] - lam[i]))
        elif o == 2:
            rt, r0, r1 = rho[i + 1], rho[i], rho[i - 1]
            c1 = _ind2(rt, r0, r1) - _ind2(r0, r0, r1)
            c2 = _ind2(rt, r1, r0) - _ind2(r0, r1, r0)
            y = (KC.X / a0 + eps * c1 + KC.H1 * c2) * at
        else:
            rt, r0, r1, r2 = rho[i + 1], rho[i], rho[i - 1], rho[i - 2]
            c1 = _ind3(rt, r0, r1, r2) - _ind3(r0, r0, r1, r2)
            c2 = _ind3(rt, r1, r2, r0) - _ind3(r0, r1, r2, r0)
            c3 = _ind3(rt, r2, r0, r1) - _ind3(r0, r2, r0, r1)
            y = (KC.X / a0 + eps * c1 + KC.H1 * c2 + KC.H2 * c3) * at
        rows.append(KC.rows(cx[i:i + 1], cm[i:i + 1], y, q=eps))
    return Table(t=grid.t, rows=np.concatenate(rows), push=np.ones(K, dtype=bool))
