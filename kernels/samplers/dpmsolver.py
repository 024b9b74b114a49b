"""DPM-Solver++ multistep (Lu et al. 2022): 2M, 3M and their SDE variants, as diffusers'
DPMSolverMultistepScheduler (``algorithm_type="dpmsolver++"`` / ``"sde-dpmsolver++"``).

With α = √ᾱ, σ = √(1 − ᾱ), λ = log α − log σ, a step s0 → t (h = λ_t − λ_s0) from the data
predictions D0 = x̂0c (this call) and D1 = x̂0 of the previous calls (the history ring):

    first order   x′ = σ_t/σ_s0·x − α_t(e^−h − 1)·D0                                  (= DDIM)
    2M (midpoint) x′ = σ_t/σ_s0·x − α_t(e^−h − 1)·(D0 + ½·(D0 − h1)/r0),  r0 = h_0/h
    3M            x′ = σ_t/σ_s0·x − α_t(e^−h − 1)·D0 + α_t((e^−h − 1)/h + 1)·D1 − α_t((e^−h − 1 + h)/h² − ½)·D2
    SDE           x′ = σ_t/σ_s0·e^−h·x + α_t(1 − e^−2h)·(…) + σ_t·√(1 − e^−2h)·z

with D1, D2 the divided differences of diffusers. The 3M SDE's D2 term is α_t·(½ − (e^−2h − 1 + 2h)/(2h)²)
= −α_t·φ₃(2h) (``d2_coefficient="exact"``, the default; k-diffusion's sample_dpmpp_3m_sde at η = 1):
the SDE's exponential integrator is the ODE's with h → 2h, and this coefficient → 0 as h → 0.
diffusers (0.42, scheduling_dpmsolver_multistep.py) writes ``… − 0.5``, a coefficient that
tends to −1: a first-order error each step, so dpmpp3m-sde diverges as the steps grow (default
butterfly model, 10,000 samples: 25 % of samples beyond 0.5 data units at 200 steps, against
0.02 % with the exact term; docs/sampling.md). ``d2_coefficient="diffusers"`` keeps diffusers'
term, for the drop-in FusedDPMSolverMultistepScheduler and the anchor tests. The first call is first order, the second at
most second order (warm-up); the last step is first order when the run ends at σ = 0 (x′ = x̂0)
or with ``lower_order_final`` and fewer than 15 steps (the second-to-last then at most second
order), as diffusers. ``algorithm="dpmsolver"`` is the noise-prediction form (diffusers'
``algorithm_type="dpmsolver"`` / ``"sde-dpmsolver"``), which needs a final σ > 0.

A null step (two equal points, as diffusers' karras grids with final_sigmas_type="sigma_min"
end) is the identity, the h → 0 limit (diffusers' third-order step returns NaN there).

Every row pushes its D0 (x̂0c, or ε̂ for the noise form) onto the history ring; 2M reads one
earlier value, 3M two: 16 / 20 bytes per element in float32 (x, m, ring in; x, ring out).
"""
from __future__ import annotations

import math

import numpy as np

from .. import coefficients as KC
from .._checks import check_choice
from ._table import Table

NAMES = ("dpmpp2m", "dpmpp3m", "dpmpp2m-sde", "dpmpp3m-sde")
CONVENTION = "dpmsolver"  # timesteps as DPMSolverMultistepScheduler.set_timesteps (steps + 1 points)
DEFAULTS = {name: {"steps": 20, "spacing": "logsnr"} for name in NAMES}
DESCRIPTION = {
    "dpmpp2m": "DPM-Solver++(2M), deterministic (diffusers' DPMSolverMultistepScheduler)",
    "dpmpp3m": "DPM-Solver++(3M), deterministic",
    "dpmpp2m-sde": "DPM-Solver++(2M) SDE: adds noise every step",
    "dpmpp3m-sde": "DPM-Solver++(3M) SDE",
}
SOLVER_TYPES = ("midpoint", "heun")
ALGORITHMS = ("dpmsolver++", "dpmsolver")
D2_COEFFICIENTS = ("exact", "diffusers")  # the 3M SDE's D2 term (module docstring)


def table(name: str, grid, prediction: str, *, solver_type: str = "midpoint", lower_order_final: bool = True,
          euler_at_final: bool = False, algorithm: str = "dpmsolver++", clipped_eps: bool = True, d2_coefficient: str = "exact") -> Table:
    """``clipped_eps`` (noise form only): ε̂ from the clipped x̂0 (diffusers' thresholding path);
    ``d2_coefficient`` (dpmpp3m-sde): "exact" | "diffusers" (module docstring)."""
    check_choice(solver_type, "solver_type", SOLVER_TYPES)
    check_choice(d2_coefficient, "d2_coefficient", D2_COEFFICIENTS)
    check_choice(algorithm, "algorithm", ALGORITHMS)
    order = 3 if "3m" in name else 2
    sde = name.endswith("-sde")
    data = algorithm == "dpmsolver++"
    if sde and order == 3 and not data:
        raise ValueError("algorithm='dpmsolver' has no third-order SDE form (diffusers neither); use dpmpp3m-sde")
    ab = grid.alpha_bar
    alpha, sigma, lam = grid.alpha, grid.sigma, grid.lam
    K = grid.steps
    ends_clean = ab[-1] == 1.0
    if not data and ends_clean:
        raise ValueError("algorithm='dpmsolver' (noise prediction) needs a final sigma > 0: end the grid at "
                         "alpha_bar[0] (diffusers' final_sigmas_type='sigma_min')")
    cx, cm = KC.x0_coefficients(ab[:-1], prediction)
    rows = []
    for i in range(K):
        at, st = alpha[i + 1], sigma[i + 1]
        a0, s0 = alpha[i], sigma[i]
        h = lam[i + 1] - lam[i]
        # the order of this step: warm-up, then lower order at the end (diffusers' step())
        o = min(order, i + 1)
        if i == K - 1 and (euler_at_final or (lower_order_final and K < 15) or ends_clean):
            o = 1
        elif i == K - 2 and lower_order_final and K < 15:
            o = min(o, 2)
        # D0 as a form: x̂0c, or ε̂ for the noise-prediction algorithm
        D0 = KC.X0 if data else KC.eps_hat(ab[i], prediction, from_clipped=clipped_eps)
        if h == 0.0:  # a null step (equal points: karras + final="sigma_min"): the h → 0 limit, x′ = x
            rows.append(KC.rows(cx[i:i + 1], cm[i:i + 1], KC.X, q=D0))
            continue
        if o >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            D1 = (D0 - KC.H1) / r0
        if o == 3:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            D1_0, D1_1 = (D0 - KC.H1) / r0, (KC.H1 - KC.H2) / r1
            D1 = D1_0 + (D1_0 - D1_1) * (r0 / (r0 + r1))
            D2 = (D1_0 - D1_1) / (r0 + r1)
        em1 = math.expm1(-h) if math.isfinite(h) else -1.0  # e^−h − 1 (−1 at σ_t = 0)
        if data and not sde:
            y = KC.X * (st / s0) - D0 * (at * em1)
            if o == 2:
                y = y - D1 * (0.5 * at * em1) if solver_type == "midpoint" else y + D1 * (at * (em1 / h + 1.0))
            elif o == 3:
                y = y + D1 * (at * (em1 / h + 1.0)) - D2 * (at * ((em1 + h) / h**2 - 0.5))
        elif data:  # sde-dpmsolver++
            e2 = -math.expm1(-2.0 * h) if math.isfinite(h) else 1.0  # 1 − e^−2h
            y = KC.X * (st / s0 * math.exp(-h)) + D0 * (at * e2) + KC.Z * (st * math.sqrt(e2))
            if o == 2:
                y = y + D1 * (0.5 * at * e2) if solver_type == "midpoint" else y + D1 * (at * (e2 / (-2.0 * h) + 1.0))
            elif o == 3:
                half = 0.5 if d2_coefficient == "exact" else -0.5  # diffusers: − ½
                y = (y + D1 * (at * (e2 / (-2.0 * h) + 1.0))
                     + D2 * (at * ((e2 - 2.0 * h) / (2.0 * h) ** 2 + half)))
        elif not sde:  # dpmsolver (noise prediction)
            ep1 = math.expm1(h)
            y = KC.X * (at / a0) - D0 * (st * ep1)
            if o == 2:
                y = y - D1 * (0.5 * st * ep1) if solver_type == "midpoint" else y - D1 * (st * (ep1 / h - 1.0))
            elif o == 3:
                y = y - D1 * (st * (ep1 / h - 1.0)) - D2 * (st * ((ep1 - h) / h**2 - 0.5))
        else:  # sde-dpmsolver
            ep1 = math.expm1(h)
            y = KC.X * (at / a0) - D0 * (2.0 * st * ep1) + KC.Z * (st * math.sqrt(math.expm1(2.0 * h)))
            if o == 2:
                y = y - D1 * (st * ep1) if solver_type == "midpoint" else y - D1 * (2.0 * st * (ep1 / h - 1.0))
        rows.append(KC.rows(cx[i:i + 1], cm[i:i + 1], y, q=D0))
    return Table(t=grid.t, rows=np.concatenate(rows), push=np.ones(K, dtype=bool))
