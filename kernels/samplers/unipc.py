"""UniPC (Zhao et al. 2023): the UniP predictor with the UniC corrector, B(h) = h ("bh1") or
e^h − 1 ("bh2"), orders 1–3, as diffusers' UniPCMultistepScheduler (``predict_x0=True``).

With λ = log α − log σ and D_k the data predictions x̂0c of the calls (the history ring), call i
first corrects the point the previous predictor started from (S, kept in the state buffer):

    x_c = σ_i/σ_{i−1}·S − α_i·(e^−h − 1)·D_{i−1} − α_i·B(h)·(Σ_k ρc_k·(D_{i−1−k} − D_{i−1})/r_k + ρc_last·(D_i − D_{i−1}))

(UniC, from the new D_i at no extra network call), then predicts the next point from it:

    x′  = σ_{i+1}/σ_i·x_c − α_{i+1}·(e^−h − 1)·D_i − α_{i+1}·B(h)·Σ_k ρp_k·(D_{i−k} − D_i)/r_k

where r_k are the λ-step ratios and ρ solve the order conditions (R ρ = b; ρ = ½ for the
first-order corrector and the second-order predictor), exactly diffusers'
multistep_uni_c_bh_update / multistep_uni_p_bh_update. Warm-up and ``lower_order_final``
as diffusers; ``disable_corrector`` lists the step indices whose corrector is skipped.

The row writes S′ = x_c and pushes D_i: 28 bytes per element at order 3 (x, m, S, two or three
history values in; x, S, ring out).

At a final σ = 0 the last step is x′ = x̂0 for both B(h); a null step (equal points) is the
identity. (diffusers' bh1 returns NaN there:
B(h) = −∞ multiplies an empty residual, −∞·0.)
"""
from __future__ import annotations

import math

import numpy as np

from .. import coefficients as KC
from .._checks import check_choice
from ._table import Table

NAMES = ("unipc",)
CONVENTION = "dpmsolver"  # UniPCMultistepScheduler.set_timesteps: steps + 1 points, as DPM-Solver
DEFAULTS = {"unipc": {"steps": 10, "spacing": "logsnr"}}
DESCRIPTION = {"unipc": "UniPC (bh1/bh2, order 1-3) with the UniC corrector"}
SOLVER_TYPES = ("bh1", "bh2")


def _rhos(h, lam0, lam_earlier, order, predictor, solver_type):
    """(h·φ₁ = e^−h − 1, B(h), ρ, r_k) of one UniP (``predictor``) or UniC update of ``order``
    from the point with λ = ``lam0``; ``lam_earlier``: λ of the earlier D's used, nearest first
    (k = 1 … order − 1), r_k = (λ_k − λ0)/h."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    B_h = hh if solver_type == "bh1" else math.expm1(hh)
    rks = [(lam_k - lam0) / h for lam_k in lam_earlier] + [1.0]
    if order == 1 and predictor:
        return h_phi_1, B_h, [], rks[:-1]
    h_phi_k = h_phi_1 / hh - 1.0
    factorial, R, b = 1, [], []
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / B_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    R, b = np.array(R, dtype=np.float64), np.array(b, dtype=np.float64)
    if predictor:
        rhos = [0.5] if order == 2 else list(np.linalg.solve(R[:-1, :-1], b[:-1]))
    else:
        rhos = [0.5] if order == 1 else list(np.linalg.solve(R, b))
    return h_phi_1, B_h, rhos, rks[:-1]


def table(name: str, grid, prediction: str, *, order: int = 2, solver_type: str = "bh2",
          lower_order_final: bool = True, disable_corrector=()) -> Table:
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3 for unipc, got {order!r}")
    check_choice(solver_type, "solver_type", SOLVER_TYPES)
    skip = {int(i) for i in disable_corrector}
    ab, alpha, sigma, lam = grid.alpha_bar, grid.alpha, grid.sigma, grid.lam
    K = grid.steps
    cx, cm = KC.x0_coefficients(ab[:-1], prediction)
    D = (KC.X0, KC.H1, KC.H2, KC.H3)  # D_i, D_{i−1}, D_{i−2}, D_{i−3} as seen by row i
    rows, prev_order = [], None
    for i in range(K):
        # -- UniC: correct S (the previous predictor's start) with the new D_i
        if i > 0 and (i - 1) not in skip and lam[i] == lam[i - 1]:
            x_c = KC.S  # the previous step was null (equal points): nothing to correct
        elif i > 0 and (i - 1) not in skip:
            h = lam[i] - lam[i - 1]
            earlier = [lam[i - 1 - k] for k in range(1, prev_order)]
            h_phi_1, B_h, rhos, rks = _rhos(h, lam[i - 1], earlier, prev_order, False, solver_type)
            corr = (D[0] - D[1]) * rhos[-1]
            for k, (rho, r) in enumerate(zip(rhos[:-1], rks), start=1):
                corr = corr + (D[1 + k] - D[1]) * (rho / r)
            x_c = KC.S * (sigma[i] / sigma[i - 1]) - D[1] * (alpha[i] * h_phi_1) - corr * (alpha[i] * B_h)
        else:
            x_c = KC.X
        # -- UniP from x_c
        this_order = min(order, K - i) if lower_order_final else order
        this_order = min(this_order, i + 1)
        h = lam[i + 1] - lam[i]
        earlier = [lam[i - k] for k in range(1, this_order)]
        if h == 0.0:  # a null step (equal points): the h → 0 limit, x′ = x_c
            y = x_c
        elif math.isfinite(h):
            h_phi_1, B_h, rhos, rks = _rhos(h, lam[i], earlier, this_order, True, solver_type)
            y = x_c * (sigma[i + 1] / sigma[i]) - D[0] * (alpha[i + 1] * h_phi_1)
            pred = KC.ZERO
            for k, (rho, r) in enumerate(zip(rhos, rks), start=1):
                pred = pred + (D[k] - D[0]) * (rho / r)
            if rhos:
                y = y - pred * (alpha[i + 1] * B_h)
        elif this_order == 1:  # σ_{i+1} = 0: the limit h → ∞ of the first-order step is x̂0
            y = D[0] * alpha[i + 1]
        else:
            raise ValueError("unipc with lower_order_final=False cannot end at sigma = 0 (its last step would be "
                             "of order > 1 with h = inf); keep lower_order_final=True or end at sigma_min")
        rows.append(KC.rows(cx[i:i + 1], cm[i:i + 1], y, s=x_c, q=D[0]))
        prev_order = this_order
    return Table(t=grid.t, rows=np.concatenate(rows), push=np.ones(K, dtype=bool))
