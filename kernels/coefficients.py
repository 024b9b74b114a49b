"""The step math in one place: schedule tables and every sampler's per-step coefficient row.

Everything here is float64 and written with array operators plus the few functions of an
array namespace ``xp`` (``sqrt``, ``maximum(x, scalar)``, ``where``, ``stack(…, axis=1)``,
``zeros_like``, ``ones_like``, ``clip``). NumPy is the default; kernels/triton passes a torch
shim so that per-sample rows are built on the device without a host sync. Who consumes what:

- the sampling plan (``make_plan``): a run's [K, C] table (``rows``), read row by row by every loop;
- kernels/numba/step.py: the public ops' rows (a cached table of every (t, t − 1), or for an
  explicit prev_t one row per call or per sample), read by the fused kernels, which compute no
  coefficient themselves;
- kernels/triton/ddpm_step.py, ddim_step.py: the same rows on device tensors, then the one
  fused update kernel of kernels/triton/update.py;
- ``apply_row``: the update x′ from a row written once in operators — the torch reference
  stepper and the plain torch benchmark loop use it (the fused kernels restate it in their
  own languages, and are tested against kernels/reference.py).

kernels/reference.py is the oracle and restates all of this independently: it must not
import this module. The formulas and the row layouts are documented in docs/sampling.md
("Step math").
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from ._checks import check_choice

PREDICTIONS = ("epsilon", "sample", "v_prediction")
PRED_CODE = {name: i for i, name in enumerate(PREDICTIONS)}  # what the kernels receive
PRED_EPSILON, PRED_SAMPLE, PRED_V = (PRED_CODE[p] for p in PREDICTIONS)
VARIANCES = ("fixed_small", "fixed_large")
SAMPLERS = ("ddpm", "ddim", "dpmpp2m")

# Floor of the fixed_small posterior variance (β̃ is 0 at t = 0): diffusers' clamp.
MIN_VARIANCE = 1e-20

# The row layout of each sampler (x̂0 = cx·x_t + cm·out, sigma multiplies the noise z):
#   ddpm:    x′ = c1·x̂0 + c2·x_t + sigma·z
#   ddim:    ε̂ = out (epsilon) or (x_t − sab·x̂0)/s1mab from the unclipped x̂0;
#            x′ = sab_p·x̂0 + dirc·ε̂ + sigma·z
#   dpmpp2m: x′ = a·x_t + b·x̂0 + c·x̂0_prev, then x̂0_prev ← x̂0
COLUMNS = {
    "ddpm": ("cx", "cm", "c1", "c2", "sigma"),
    "ddim": ("cx", "cm", "sab", "s1mab", "sab_p", "dirc", "sigma"),
    "dpmpp2m": ("cx", "cm", "a", "b", "c"),
}

TABLE_NAMES = (
    "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
    "posterior_mean_coef2", "snr",
)


# ----------------------------------------------------------------------------------------
# Schedule tables
# ----------------------------------------------------------------------------------------


def schedule_tables(betas) -> dict[str, np.ndarray]:
    """Every table of TABLE_NAMES, each float64 [T], from betas [T].

    ᾱ is a sequential product (np.cumprod multiplies left to right), ᾱ_prev is ᾱ shifted by
    one, and the log of the posterior variance takes β̃_1 in place of β̃_0 (which is 0).
    """
    beta = np.ascontiguousarray(betas, dtype=np.float64)
    alpha = 1.0 - beta
    ac = np.cumprod(alpha)
    prev = np.concatenate(([1.0], ac[:-1]))
    one_m = 1.0 - ac
    post_var = beta * (1.0 - prev) / one_m
    log_src = post_var.copy()
    log_src[0] = post_var[1] if beta.shape[0] > 1 else post_var[0]
    with np.errstate(divide="ignore"):  # T = 1: β̃_0 = 0, log −inf (as the reference)
        log_var = np.log(log_src)
    values = (beta, alpha, ac, prev, np.sqrt(ac), np.sqrt(one_m), np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1.0),
              post_var, log_var, beta * np.sqrt(prev) / one_m, (1.0 - prev) * np.sqrt(alpha) / one_m,
              ac / one_m)
    return dict(zip(TABLE_NAMES, values))


# ----------------------------------------------------------------------------------------
# Coefficient rows
# ----------------------------------------------------------------------------------------


def step_alphas(alphas_cumprod, t, prev_t, xp=np):
    """(ᾱ_t, ᾱ_p, final) for index arrays t, prev_t of one shape; ᾱ_p = 1 where prev_t < 0."""
    ab_t = alphas_cumprod[t]
    ab_p = xp.where(prev_t >= 0, alphas_cumprod[xp.maximum(prev_t, 0)], 1.0)
    return ab_t, ab_p, prev_t < 0


def x0_coefficients(ab_t, prediction: str, xp=np):
    """(cx, cm) with x̂0 = cx·x_t + cm·out: epsilon (x_t − √(1−ᾱ)·ε̂)/√ᾱ, v √ᾱ·x_t − √(1−ᾱ)·v̂,
    sample (0, 1) — exact for finite x_t, so a kernel needs no branch on the prediction."""
    if prediction == "epsilon":
        return xp.sqrt(1.0 / ab_t), -xp.sqrt(1.0 / ab_t - 1.0)
    if prediction == "v_prediction":
        return xp.sqrt(ab_t), -xp.sqrt(1.0 - ab_t)
    check_choice(prediction, "prediction", PREDICTIONS)
    return xp.zeros_like(ab_t), xp.ones_like(ab_t)


def ddpm_rows(ab_t, ab_p, final, prediction: str, variance: str, xp=np):
    """[N, 5] rows (COLUMNS["ddpm"]): the posterior mean and σ of an ancestral step t → t′."""
    check_choice(variance, "variance", VARIANCES)
    cx, cm = x0_coefficients(ab_t, prediction, xp)
    alpha_c = ab_t / ab_p
    beta_c = 1.0 - alpha_c
    c1 = xp.sqrt(ab_p) * beta_c / (1.0 - ab_t)
    c2 = xp.sqrt(alpha_c) * (1.0 - ab_p) / (1.0 - ab_t)
    if variance == "fixed_small":
        var = xp.maximum((1.0 - ab_p) / (1.0 - ab_t) * beta_c, MIN_VARIANCE)
    else:
        var = beta_c
    sigma = xp.where(final, 0.0, xp.sqrt(var))
    return xp.stack([cx, cm, c1, c2, sigma], axis=1)


def ddim_rows(ab_t, ab_p, final, prediction: str, eta: float, xp=np):
    """[N, 7] rows (COLUMNS["ddim"]) of a DDIM(η) step t → t′; σ = 0 at the end."""
    cx, cm = x0_coefficients(ab_t, prediction, xp)
    beta_c = 1.0 - ab_t / ab_p
    sigma = eta * xp.sqrt((1.0 - ab_p) / (1.0 - ab_t)) * xp.sqrt(beta_c)
    sigma = xp.where(final, 0.0, sigma)
    dirc = xp.sqrt(xp.maximum(1.0 - ab_p - sigma * sigma, 0.0))
    return xp.stack([cx, cm, xp.sqrt(ab_t), xp.sqrt(1.0 - ab_t), xp.sqrt(ab_p), dirc, sigma], axis=1)


def dpmpp2m_rows(ab_t, ab_p, final, prediction: str):
    """[K, 5] rows (COLUMNS["dpmpp2m"]) of a whole run (NumPy only: row k depends on step k − 1).

    DPM-Solver++(2M) (Lu et al. 2022, the "midpoint" form of diffusers) with α = √ᾱ, σ = √(1−ᾱ),
    λ = log α − log σ, h = λ_t′ − λ_t, r = (λ_t − λ_prev)/h, φ = α_t′·(1 − e^{−h}):
    a = σ_t′/σ_t, b = φ·(1 + 1/(2r)), c = −φ/(2r); first order (b = φ, c = 0) at the first step,
    and x′ = x̂0 at the last (final σ = 0, as diffusers' ``final_sigmas_type="zero"``).
    """
    cx, cm = x0_coefficients(ab_t, prediction)
    K = ab_t.shape[0]
    with np.errstate(divide="ignore"):
        lam_s = 0.5 * (np.log(ab_t) - np.log1p(-ab_t))
        lam_t = 0.5 * (np.log(ab_p) - np.log1p(-ab_p))  # +inf after the last step
    a = np.zeros(K)
    b = np.ones(K)
    c = np.zeros(K)
    for k in range(K):
        if final[k]:
            continue
        h = lam_t[k] - lam_s[k]
        a[k] = math.sqrt(1.0 - ab_p[k]) / math.sqrt(1.0 - ab_t[k])
        phi = math.sqrt(ab_p[k]) * (-math.expm1(-h))
        if k == 0:
            b[k], c[k] = phi, 0.0
        else:
            r = (lam_s[k] - lam_s[k - 1]) / h
            b[k], c[k] = phi * (1.0 + 0.5 / r), -0.5 * phi / r
    return np.stack([cx, cm, a, b, c], axis=1)


def rows(sampler: str, ab_t, ab_p, final, *, prediction: str = "epsilon", variance: str = "fixed_small",
         eta: float = 0.0, xp=np):
    """The [N, len(COLUMNS[sampler])] float64 rows of steps (ᾱ_t, ᾱ_p, final)."""
    if sampler == "ddpm":
        return ddpm_rows(ab_t, ab_p, final, prediction, variance, xp)
    if sampler == "ddim":
        return ddim_rows(ab_t, ab_p, final, prediction, eta, xp)
    check_choice(sampler, "sampler", SAMPLERS)
    return dpmpp2m_rows(ab_t, ab_p, final, prediction)


# Per-table caches: keyed by id() and dropped with the table (arrays and tensors cannot be
# WeakKeyDictionary keys: their == is elementwise).
_CACHES: dict[int, tuple[weakref.ref, dict]] = {}


def cached(owner, key, build):
    """``build()`` once per (``owner`` object, ``key``) while ``owner`` lives; None (not built)
    when ``build`` returns None."""
    entry = _CACHES.get(id(owner))
    if entry is None or entry[0]() is not owner:
        entry = _CACHES[id(owner)] = (weakref.ref(owner, lambda _, k=id(owner): _CACHES.pop(k, None)), {})
    if key not in entry[1]:
        value = build()
        if value is None:
            return None
        entry[1][key] = value
    return entry[1][key]


def apply_row(sampler: str, row, x_t, model_output, prediction: str, clip=None, noise=None, x0_prev=None,
              xp=np):
    """One update from a row, in array operators (NumPy arrays or torch tensors): (x′, x̂0).

    ``row`` holds scalars of the data dtype; ``noise`` (ddpm, ddim) is added with the last
    column; ``x0_prev`` is dpmpp2m's multistep state. ε̂ of ddim comes from the unclipped x̂0
    (diffusers' ``use_clipped_model_output=False``).
    """
    x0 = model_output if prediction == "sample" else row[0] * x_t + row[1] * model_output
    if sampler == "ddim":
        eps = model_output if prediction == "epsilon" else (x_t - row[2] * x0) / row[3]
    if clip is not None:
        x0 = xp.clip(x0, -clip, clip)
    if sampler == "ddpm":
        y = row[2] * x0 + row[3] * x_t
    elif sampler == "ddim":
        y = row[4] * x0 + row[5] * eps
    else:
        return row[2] * x_t + row[3] * x0 + row[4] * x0_prev, x0
    if noise is not None:
        y = y + row[-1] * noise
    return y, x0
