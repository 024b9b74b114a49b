"""Which training timesteps a sampler visits: respacing as diffusers and improved-diffusion do it.

``timesteps(T, steps, spacing)`` returns the descending int64 array of the steps a sampling run
evaluates the network at; ``step_pairs`` adds each step's target t′ (the next entry, −1 after
the last). A respaced DDPM step t → t′ uses α_c = ᾱ_t/ᾱ_t′, β_c = 1 − α_c, which is both
improved-diffusion's ``SpacedDiffusion`` (new betas from the kept ᾱ) and diffusers'
``DDPMScheduler`` with ``num_inference_steps`` (``previous_timestep`` = next entry).

Spacings (``convention="ddim"``, the one of DDPMScheduler / DDIMScheduler.set_timesteps):
- ``leading``:  ``arange(steps) · (T // steps)`` reversed, plus ``steps_offset``
  (steps = T gives T−1 … 0, the plain ancestral chain);
- ``trailing``: ``round(arange(T, 0, −T/steps)) − 1`` (always starts at T−1);
- ``linspace``: ``round(linspace(0, T−1, steps))`` reversed. This is improved-diffusion's
  ``space_timesteps(T, [steps])`` (and its ``"ddimN"`` when steps divides T, up to its
  stride) — the choice for "respace DDPM as improved-diffusion does";
- a list/array of ints: used as given (must be strictly decreasing, within [0, T)).

``convention="dpmsolver"`` follows DPMSolverMultistepScheduler.set_timesteps instead
(``steps + 1`` points, the last dropped), which the DPM-Solver, UniPC and DEIS samplers use so
that they visit the same steps as diffusers for the same spacing; ``convention="euler"`` is
EulerDiscreteScheduler's (its ``linspace`` points fall between integer timesteps).

Spacings computed from the schedule's ᾱ (:func:`make_grid`): ``logsnr`` (uniform in λ),
``karras`` (Karras et al. 2022, ρ = 7, diffusers' ``use_karras_sigmas``) and ``exponential``
(uniform in log σ, ``use_exponential_sigmas``), all between σ(T−1) and σ(0) with
σ = √((1 − ᾱ)/ᾱ). A point between integer timesteps keeps its exact ᾱ in the sampler's math
while the network is fed the nearest integer t (diffusers rounds the same way for DPM-Solver
and UniPC; k-diffusion's ``quantize=True``).

:func:`make_grid` turns (schedule, sampler, steps, spacing, final) into the
``kernels.samplers.Grid`` a sampler compiles: the network timesteps and ᾱ at every point plus
the final one (ᾱ = 1, σ = 0 for ``final="zero"``; ᾱ_0 for ``"sigma_min"``).
"""
from __future__ import annotations

import numbers

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")
# Spacings computed from the schedule's ᾱ (not from T alone): make_grid places them.
SCHEDULE_SPACINGS = ("logsnr", "karras", "exponential")
ALL_SPACINGS = SPACINGS + SCHEDULE_SPACINGS
CONVENTIONS = ("ddim", "dpmsolver", "euler")
KARRAS_RHO = 7.0  # Karras et al. 2022, diffusers' _convert_to_karras


def _check_steps(num_train_steps, steps) -> tuple[int, int]:
    if isinstance(num_train_steps, bool) or not isinstance(num_train_steps, numbers.Integral) or num_train_steps < 1:
        raise ValueError(f"num_train_steps must be an integer >= 1, got {num_train_steps!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"steps must be an integer in [1, {num_train_steps}], got {type(steps).__name__}")
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must lie in [1, T = {num_train_steps}] (the schedule's training steps), got {steps}")
    return int(num_train_steps), int(steps)


def _custom(num_train_steps: int, spacing) -> np.ndarray:
    arr = np.asarray(spacing)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("spacing given as a list must be a non-empty 1-D list of timesteps")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"spacing given as a list must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= num_train_steps:
        raise ValueError(f"timesteps in spacing must lie in [0, {num_train_steps}), got [{arr.min()}, {arr.max()}]")
    if np.any(np.diff(arr) >= 0):
        raise ValueError("timesteps in spacing must be strictly decreasing (e.g. [999, 749, 499, 249])")
    return arr


def timesteps(num_train_steps: int, steps: int | None = None, spacing="leading", *,
              convention: str = "ddim", steps_offset: int = 0) -> np.ndarray:
    """The descending timesteps [K] (int64) a sampler evaluates the network at.

    ``steps=None`` means T (or the list's length when ``spacing`` is a list; ``steps`` must then
    be None or equal to it). See the module docstring for the spacings.
    """
    if not isinstance(spacing, str):
        out = _custom(int(num_train_steps), spacing)
        if steps is not None and steps != out.size:
            raise ValueError(f"steps={steps} disagrees with the {out.size} timesteps given in spacing")
        return out
    if spacing in SCHEDULE_SPACINGS:
        raise ValueError(f"spacing={spacing!r} depends on the schedule's alphas_cumprod, not on T alone: "
                         f"use logsnr_timesteps(alphas_cumprod, steps) or resolve_spacing(...)")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, SPACINGS))} or a list of ints; got {spacing!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}; got {convention!r}")
    T, n = _check_steps(num_train_steps, num_train_steps if steps is None else steps)
    if convention in ("ddim", "euler"):  # euler's linspace is fractional: make_grid places it
        if spacing == "linspace":
            out = np.linspace(0, T - 1, n).round()[::-1]
        elif spacing == "leading":
            out = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
        else:
            out = np.round(np.arange(T, 0, -T / n)) - 1
    else:  # DPMSolverMultistepScheduler (lambda_min_clipped = -inf: last_timestep = T)
        if spacing == "linspace":
            out = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
        elif spacing == "leading":
            out = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
        else:
            out = np.arange(T, 0, -T / n).round() - 1
    out = np.ascontiguousarray(out).astype(np.int64)
    if out.min() < 0 or out.max() >= T or np.any(np.diff(out) >= 0):
        raise ValueError(f"spacing={spacing!r} with steps={n}, steps_offset={steps_offset} gives timesteps "
                         f"outside [0, {T}) or repeated ones: {out.tolist()[:8]}…; use fewer steps or another spacing")
    return out


def step_pairs(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, prev_t) int64 [K] each: prev_t is the next visited step, −1 after the last one."""
    ts = np.asarray(ts, dtype=np.int64)
    prev = np.empty_like(ts)
    prev[:-1] = ts[1:]
    prev[-1] = -1
    return ts, prev


def logsnr_timesteps(alphas_cumprod, steps: int) -> np.ndarray:
    """``steps`` descending int64 timesteps from T−1 to 0, uniform in log-SNR λ = ½·log(ᾱ/(1−ᾱ)).

    The ODE samplers' last step returns x̂0 = E[x0 | x_t] of the last visited t; the uniform
    spacings end at t ≈ T/steps (dpmsolver convention: t = 47 of 1000 for 20 steps, σ ≈ 0.12),
    whose posterior mean is visibly blurred on thin data (the butterfly curve: dpmpp2m-20 p90
    distance 0.12 with leading spacing, 0.07–0.08 with this one; docs/sampling.md). Uniform λ
    spends the steps where the data's detail is resolved and ends at t = 0, like the log-SNR
    ("time_uniform" in λ) spacing of DPM-Solver (Lu et al. 2022) and diffusers' ``use_lu_lambdas``.

    Rounded to integers, then made strictly decreasing from the bottom up (t_k ≥ t_{k+1} + 1),
    then from the top down (t_k ≤ t_{k−1} − 1), so exactly ``steps`` distinct timesteps come back
    (steps = T gives T−1 … 0).
    """
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    T, n = _check_steps(ac.shape[0], steps)
    if ac.ndim != 1 or not np.all((ac > 0) & (ac < 1)) or np.any(np.diff(ac) >= 0):
        raise ValueError("alphas_cumprod must be 1-D, strictly decreasing and inside (0, 1)")
    lam = 0.5 * (np.log(ac) - np.log1p(-ac))  # decreasing in t
    if n == 1:
        return np.array([T - 1], dtype=np.int64)
    targets = np.linspace(lam[-1], lam[0], n)  # from t = T−1 to t = 0
    # λ is decreasing in t: interpolate t(λ) on the reversed (increasing) table.
    cont = np.interp(targets, lam[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))
    out = np.round(cont).astype(np.int64)
    out[-1] = 0
    for k in range(n - 2, -1, -1):
        out[k] = max(out[k], out[k + 1] + 1)
    out[0] = T - 1
    for k in range(1, n):  # and from the top down (keeps t_k >= n−1−k, so still >= 0)
        out[k] = min(out[k], out[k - 1] - 1)
    return out


def _sigmas_ve(alphas_cumprod) -> np.ndarray:
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def sigma_to_t(sigma, alphas_cumprod) -> np.ndarray:
    """The (fractional) timestep of σ: linear interpolation of log σ over the integer timesteps,
    clamped to [0, T − 1] — diffusers' ``_sigma_to_t``."""
    log_sigmas = np.log(_sigmas_ve(np.asarray(alphas_cumprod, dtype=np.float64)))
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.clip(np.cumsum(dists >= 0, axis=0).argmax(axis=0), None, log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def _sigma_spacing(alphas_cumprod, steps: int, spacing: str) -> np.ndarray:
    """``steps`` descending σ from σ(T − 1) to σ(0): karras (ρ = 7) or exponential."""
    sig = _sigmas_ve(alphas_cumprod)
    s_max, s_min = float(sig[-1]), float(sig[0])
    ramp = np.linspace(0.0, 1.0, steps)
    if spacing == "karras":
        lo, hi = s_min ** (1.0 / KARRAS_RHO), s_max ** (1.0 / KARRAS_RHO)
        return (hi + ramp * (lo - hi)) ** KARRAS_RHO
    return np.exp(np.linspace(np.log(s_max), np.log(s_min), steps))


def make_grid(schedule, sampler: str, steps=None, spacing=None, *, final=None, steps_offset: int = 0):
    """The ``kernels.samplers.Grid`` of a run: ``steps`` (None: the sampler's default), ``spacing``
    (None: the sampler's default; a name of :data:`ALL_SPACINGS` or a list of timesteps) and
    ``final`` ("zero" | "sigma_min"; None: the sampler's default)."""
    from ..kernels import samplers

    defaults = samplers.defaults(sampler)
    convention = samplers.convention(sampler)
    final = defaults["final"] if final is None else final
    if final not in samplers.FINALS:
        raise ValueError(f"final must be one of {', '.join(map(repr, samplers.FINALS))}; got {final!r}")
    spacing = defaults["spacing"] if spacing is None else spacing
    ac = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    T = ac.shape[0]
    if isinstance(spacing, str) and spacing not in ALL_SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, ALL_SPACINGS))} or a list of timesteps; "
                         f"got {spacing!r}")
    if steps is None and (isinstance(spacing, str)):
        steps = min(defaults["steps"] or T, T)
    if isinstance(spacing, str) and spacing in ("karras", "exponential"):
        _check_steps(T, steps)
        sig = _sigma_spacing(ac, steps, spacing)
        t = np.round(sigma_to_t(sig, ac)).astype(np.int64)
        # ≤ ᾱ_0: the last point is σ(0), whose 1/(1 + σ²) can round one ulp above ᾱ_0 (0.9999 →
        # 0.9999000000000001 for the linear schedule), which made every final="sigma_min" run on
        # these spacings (deis by default) fail the grid's "noise goes down" check instead of
        # taking diffusers' null last step σ_min → σ_min.
        ab = np.minimum(1.0 / (1.0 + sig * sig), ac[0])
    elif isinstance(spacing, str) and spacing == "linspace" and convention == "euler":  # EulerDiscreteScheduler: fractional timesteps
        _check_steps(T, steps)
        frac = np.linspace(0, T - 1, steps)[::-1]
        sig = np.interp(frac, np.arange(T), _sigmas_ve(ac))
        t = np.round(frac).astype(np.int64)
        ab = 1.0 / (1.0 + sig * sig)
    else:
        if isinstance(spacing, str) and spacing == "logsnr":
            t = logsnr_timesteps(ac, steps)
        else:
            t = timesteps(T, steps, spacing, convention="ddim" if convention == "euler" else convention,
                          steps_offset=steps_offset)
        ab = ac[t]
    ab_final = 1.0 if final == "zero" else float(ac[0])
    return samplers.Grid(t=t, alpha_bar=np.append(ab, ab_final))
