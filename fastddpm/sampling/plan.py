"""A sampling plan: the visited timesteps and every per-step coefficient, computed once in float64.

The plan is the only place the sampler math lives outside the kernels. A loop reads row k of
``plan.coef`` [K, C] for step k; on a GPU the table is copied to the device once, so the loop
never syncs. Columns per sampler (x̂0 = cx·x_t + cm·out, ᾱ_p = 1 after the last step):

- ddpm:    cx, cm, c1, c2, sigma      x′ = c1·x̂0 + c2·x_t + sigma·z           (DESIGN.md "DDPM")
- ddim:    cx, cm, sab, s1mab, sab_p, dirc, sigma
           ε̂ = out (epsilon) or (x_t − sab·x̂0)/s1mab;  x′ = sab_p·x̂0 + dirc·ε̂ + sigma·z
- dpmpp2m: cx, cm, a, b, c            x′ = a·x_t + b·x̂0 + c·x̂0_prev
  DPM-Solver++(2M) (Lu et al. 2022, "midpoint" form of diffusers): with α = √ᾱ, σ = √(1−ᾱ),
  λ = log α − log σ, h = λ_t′ − λ_t, r = (λ_t − λ_prev)/h, φ = α_t′·(1 − e^{−h}):
  a = σ_t′/σ_t, b = φ·(1 + 1/(2r)), c = −φ/(2r); first order (b = φ, c = 0) at the first
  step and at the last (final σ = 0, as diffusers' ``final_sigmas_type="zero"``).

No torch here: the ONNX runtime path reuses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels.reference import PREDICTIONS, VARIANCES
from .timesteps import step_pairs, timesteps

SAMPLERS = ("ddpm", "ddim", "dpmpp2m")
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp2m": 20}  # None: all T steps
COLUMNS = {
    "ddpm": ("cx", "cm", "c1", "c2", "sigma"),
    "ddim": ("cx", "cm", "sab", "s1mab", "sab_p", "dirc", "sigma"),
    "dpmpp2m": ("cx", "cm", "a", "b", "c"),
}
_MIN_VARIANCE = 1e-20


@dataclass(frozen=True)
class Plan:
    """Everything a loop needs besides the model: [K] timesteps, [K] targets, [K, C] coefficients."""

    sampler: str
    t: np.ndarray          # int64 [K], descending
    prev_t: np.ndarray     # int64 [K], the next visited step, −1 at the end
    coef: np.ndarray       # float64 [K, C], columns COLUMNS[sampler]
    prediction: str
    variance: str
    eta: float
    clip: float | None

    @property
    def num_steps(self) -> int:
        return int(self.t.shape[0])

    @property
    def noisy(self) -> bool:
        """Whether any step adds noise (stream k for step k)."""
        if self.sampler == "dpmpp2m":
            return False
        return bool(np.any(self.coef[:, -1] > 0))

    def col(self, name: str) -> int:
        return COLUMNS[self.sampler].index(name)


def _x0_coefficients(ab_t: np.ndarray, prediction: str):
    if prediction == "epsilon":
        return np.sqrt(1.0 / ab_t), -np.sqrt(1.0 / ab_t - 1.0)
    if prediction == "v_prediction":
        return np.sqrt(ab_t), -np.sqrt(1.0 - ab_t)
    return np.zeros_like(ab_t), np.ones_like(ab_t)


def make_plan(schedule, sampler: str = "ddpm", steps: int | None = None, spacing="leading", *,
              eta: float = 0.0, prediction: str = "epsilon", variance: str = "fixed_small",
              clip: float | None = None) -> Plan:
    """Validate the sampler settings and build the plan (see the module docstring)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}; got {sampler!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}; got {prediction!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}; got {variance!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if eta and sampler != "ddim":
        raise ValueError(f"eta applies to sampler='ddim' only; got eta={eta} with sampler={sampler!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not (clip > 0 and math.isfinite(clip))):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    T = schedule.num_steps
    if steps is None and isinstance(spacing, str):
        steps = DEFAULT_STEPS[sampler] or T
        steps = min(steps, T)
    convention = "dpmsolver" if sampler == "dpmpp2m" else "ddim"
    t, prev = step_pairs(timesteps(T, steps, spacing, convention=convention))
    ac = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    ab_t = ac[t]
    ab_p = np.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)
    final = prev < 0
    cx, cm = _x0_coefficients(ab_t, prediction)
    if sampler == "ddpm":
        alpha_c = ab_t / ab_p
        beta_c = 1.0 - alpha_c
        c1 = np.sqrt(ab_p) * beta_c / (1.0 - ab_t)
        c2 = np.sqrt(alpha_c) * (1.0 - ab_p) / (1.0 - ab_t)
        var = np.maximum((1.0 - ab_p) / (1.0 - ab_t) * beta_c, _MIN_VARIANCE) if variance == "fixed_small" else beta_c
        sigma = np.where(final, 0.0, np.sqrt(var))
        coef = np.stack([cx, cm, c1, c2, sigma], axis=1)
    elif sampler == "ddim":
        beta_c = 1.0 - ab_t / ab_p
        sigma = eta * np.sqrt((1.0 - ab_p) / (1.0 - ab_t)) * np.sqrt(beta_c)
        sigma = np.where(final, 0.0, sigma)
        dirc = np.sqrt(np.maximum(1.0 - ab_p - sigma**2, 0.0))
        coef = np.stack([cx, cm, np.sqrt(ab_t), np.sqrt(1.0 - ab_t), np.sqrt(ab_p), dirc, sigma], axis=1)
    else:
        coef = np.stack([cx, cm, *_dpmpp2m_abc(ab_t, ab_p, final)], axis=1)
    return Plan(sampler, t, prev, np.ascontiguousarray(coef), prediction, variance, float(eta),
                None if clip is None else float(clip))


def _dpmpp2m_abc(ab_t, ab_p, final):
    K = ab_t.shape[0]
    with np.errstate(divide="ignore"):
        lam_s = 0.5 * (np.log(ab_t) - np.log1p(-ab_t))
        lam_t = 0.5 * (np.log(ab_p) - np.log1p(-ab_p))  # +inf after the last step
    a = np.zeros(K)
    b = np.ones(K)
    c = np.zeros(K)
    for k in range(K):
        if final[k]:  # σ_t′ = 0: x′ = x̂0 (first order, as diffusers with final σ = 0)
            continue
        h = lam_t[k] - lam_s[k]
        a[k] = math.sqrt(1.0 - ab_p[k]) / math.sqrt(1.0 - ab_t[k])
        phi = math.sqrt(ab_p[k]) * (-math.expm1(-h))
        if k == 0:
            b[k], c[k] = phi, 0.0
        else:
            r = (lam_s[k] - lam_s[k - 1]) / h
            b[k], c[k] = phi * (1.0 + 0.5 / r), -0.5 * phi / r
    return a, b, c
