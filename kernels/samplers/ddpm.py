"""DDPM ancestral sampling (Ho et al. 2020), respaced as improved-diffusion and diffusers' DDPMScheduler.

A step t → t′ (ᾱ_p = ᾱ[t′]; 1 after the last step), with α_c = ᾱ_t/ᾱ_p and β_c = 1 − α_c:

    x′ = √ᾱ_p·β_c/(1 − ᾱ_t) · x̂0  +  √α_c·(1 − ᾱ_p)/(1 − ᾱ_t) · x  +  σ·z,   no noise after the last step

σ² by ``variance``: fixed_small β̃ = max((1 − ᾱ_p)/(1 − ᾱ_t)·β_c, 1e−20); fixed_large β_c; for a
network whose output carries a variance channel v (twice the channels, diffusers' split):
learned_range exp(frac·log β_c + (1 − frac)·log β̃) with frac = (v + 1)/2 (Nichol & Dhariwal 2021)
and learned v itself (σ = √v, as diffusers' DDPMScheduler reads it). The *_log names are the same
variances computed in log space (diffusers' fixed_small_log; Glide's fixed_large_log).

Its table (T = 1000 linear, 4 steps "leading", ε-prediction, fixed_small), from ``Table.describe()``:
    k=0 t=750: cx=17.4073 cm=-17.3786 yx=0.190568 y0=0.267973 yz=0.94128
    k=1 t=500: cx=3.58525 cm=-3.44297 yx=0.200452 y0=0.666186 yz=0.664471
    k=2 t=250: cx=1.38486 cm=-0.958034 yx=0.000150892 y0=0.999841 yz=0.00999946
    k=3 t=0: cx=1.00005 cm=-0.0100005 y0=1
Row k reads x and m only: 12 bytes per element in float32.
"""
from __future__ import annotations

import numpy as np

from .. import coefficients as KC
from .._checks import check_choice
from ._table import Table

NAMES = ("ddpm",)
CONVENTION = "ddim"  # timesteps as DDPMScheduler.set_timesteps
DEFAULTS = {"ddpm": {"steps": None, "spacing": "leading"}}  # steps None: all T
DESCRIPTION = {"ddpm": "ancestral DDPM (Ho et al. 2020); steps < T respaces"}
VARIANCES = ("fixed_small", "fixed_large", "fixed_small_log", "fixed_large_log", "learned", "learned_range")
VARIANCE_CHANNEL = ("learned", "learned_range")  # the network outputs [mean, variance] (2× the channels)


def step_rows(ab_t, ab_p, final, prediction: str, variance: str = "fixed_small", xp=np):
    """[N, NUM_COLUMNS] rows of steps (ᾱ_t, ᾱ_p, final) [N]; also the public op ``ddpm_step``'s."""
    check_choice(variance, "variance", VARIANCES)
    cx, cm = KC.x0_coefficients(ab_t, prediction, xp)
    alpha_c = ab_t / ab_p
    beta_c = 1.0 - alpha_c
    small = xp.maximum((1.0 - ab_p) / (1.0 - ab_t) * beta_c, KC.MIN_VARIANCE)
    y = KC.X0 * (xp.sqrt(ab_p) * beta_c / (1.0 - ab_t)) + KC.X * (xp.sqrt(alpha_c) * (1.0 - ab_p) / (1.0 - ab_t))
    live = xp.where(final, 0.0, 1.0)  # no noise after the last step
    var = None
    if variance in ("fixed_small", "fixed_small_log"):
        sigma = xp.sqrt(small)
    elif variance in ("fixed_large", "fixed_large_log"):
        sigma = xp.sqrt(beta_c)
    elif variance == "learned_range":
        # σ = exp(½·(frac·log β_c + (1 − frac)·log β̃)), frac = (v + 1)/2 → exp(vg·v + vb)
        log_big, log_small = xp.log(xp.maximum(beta_c, KC.MIN_VARIANCE)), xp.log(small)
        sigma, var = xp.ones_like(ab_t), (0.25 * (log_big - log_small), 0.25 * (log_big + log_small))
    else:  # learned: σ = √v (kernels: yz·√v when vg = vb = 0 and the table says so)
        sigma, var = xp.ones_like(ab_t), (xp.zeros_like(ab_t), xp.zeros_like(ab_t))
    return KC.rows(cx, cm, y + KC.Z * (sigma * live), var=var, xp=xp)


def table(name: str, grid, prediction: str, *, variance: str = "fixed_small") -> Table:
    ab = grid.alpha_bar
    final = np.zeros(grid.steps, dtype=bool)
    final[-1] = True
    rows = step_rows(ab[:-1], ab[1:], final, prediction, variance)
    return Table(t=grid.t, rows=rows, variance="sqrt" if variance == "learned" else
                 ("log" if variance == "learned_range" else None))
