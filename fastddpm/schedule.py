"""Noise schedules: betas and every derived table, computed once in float64 on the host."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .kernels import reference
from .kernels.coefficients import TABLE_NAMES, schedule_tables

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")

_DEFAULTS: dict[str, dict[str, float]] = {
    "linear": {"beta_start": 1e-4, "beta_end": 0.02},
    "quadratic": {"beta_start": 1e-4, "beta_end": 0.02},
    "sigmoid": {"beta_start": 1e-4, "beta_end": 0.02},
    "cosine": {"s": 0.008, "min_beta": 0.0, "max_beta": 0.999},
}

_BETAS = {
    "linear": reference.betas_linear,
    "cosine": reference.betas_cosine,
    "quadratic": reference.betas_quadratic,
    "sigmoid": reference.betas_sigmoid,
}


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer T >= 1, got {num_steps!r}")
    return int(num_steps)


def _check_params(name: str, params: dict[str, Any]) -> dict[str, float]:
    unknown = set(params) - set(_DEFAULTS[name])
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {sorted(unknown)} for the {name!r} schedule; "
            f"allowed: {sorted(_DEFAULTS[name])}"
        )
    merged = {**_DEFAULTS[name], **{k: float(v) for k, v in params.items()}}
    for key, value in merged.items():
        if not math.isfinite(value):
            raise ValueError(f"{key} must be finite, got {value!r}")
    if name == "cosine":
        if merged["s"] < 0:
            raise ValueError(f"s must be >= 0, got {merged['s']!r}")
        if not 0.0 < merged["max_beta"] < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1), got {merged['max_beta']!r}")
        if not 0.0 <= merged["min_beta"] < merged["max_beta"]:
            raise ValueError(f"min_beta must lie in [0, max_beta), got {merged['min_beta']!r}")
    else:
        for key in ("beta_start", "beta_end"):
            if not 0.0 < merged[key] < 1.0:
                raise ValueError(f"{key} must lie in (0, 1), got {merged[key]!r}")
    return merged


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    """Betas rescaled to a zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", Algorithm 1; diffusers' ``rescale_betas_zero_snr``), in float64.

    √ᾱ is shifted so that its last value is 0 and scaled so that its first is unchanged; the
    betas follow from the new ᾱ. The last beta is then exactly 1 (ᾱ_{T−1} = 0): build the
    Schedule with ``zero_terminal_snr=True``.
    """
    beta = np.asarray(betas, dtype=np.float64)
    sqrt_ab = np.sqrt(np.cumprod(1.0 - beta))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab ** 2
    alphas = np.concatenate((ab[:1], ab[1:] / ab[:-1]))
    return 1.0 - alphas


def _check_betas(betas, zero_terminal_snr: bool = False) -> np.ndarray:
    try:
        arr = np.array(betas, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"betas must be a 1-D array of floats, got {type(betas).__name__}") from exc
    if arr.ndim != 1:
        raise ValueError(f"betas must be 1-D, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError("betas must have at least one step (T >= 1)")
    if zero_terminal_snr:
        # a zero-terminal-SNR schedule: the last beta is exactly 1 (ᾱ_{T−1} = 0); the others as always
        if arr.shape[0] < 2 or arr[-1] != 1.0:
            raise ValueError(f"zero_terminal_snr=True needs T >= 2 and the last beta exactly 1 (rescale_zero_terminal_snr "
                             f"gives it), got betas[-1] = {float(arr[-1])!r}")
        _check_betas(arr[:-1])
        return arr
    bad = ~((arr > 0.0) & (arr < 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"betas must lie in (0, 1); betas[{i}] = {float(arr[i])!r}")
    # Betas inside (0, 1) can still break the tables in float64: 1/sqrt(ᾱ) needs ᾱ_t > 0 and
    # finite 1/ᾱ_t (0.9 for 1000 steps gives ᾱ = 1e-1000 → 0), and 1/(1 − ᾱ_t) needs 1 − ᾱ_t > 0
    # (a beta below ~1.1e-16 rounds 1 − β to 1). Refuse them here, naming the step.
    alphas_cumprod = np.cumprod(1.0 - arr)
    with np.errstate(divide="ignore", over="ignore"):
        underflow = ~((alphas_cumprod > 0.0) & np.isfinite(1.0 / alphas_cumprod))
    if underflow.any():
        i = int(np.flatnonzero(underflow)[0])
        raise ValueError(f"betas make alphas_cumprod (the product of 1 - betas) underflow in float64 at step "
                         f"{i} of {arr.shape[0]} ({float(alphas_cumprod[i])!r}); use smaller betas or fewer steps")
    vanish = ~(1.0 - alphas_cumprod > 0.0)
    if vanish.any():
        i = int(np.flatnonzero(vanish)[0])
        raise ValueError(f"betas[{i}] = {float(arr[i])!r} is too small: 1 - alphas_cumprod[{i}] rounds to 0 in "
                         "float64 (that step adds no noise); betas must be at least about 1e-15")
    return arr


# The sample() keywords a diffusers scheduler config implies besides the prediction type
# (Schedule.sampler_defaults; the ONNX metadata entry fastddpm.sampling holds the same keys).
SAMPLER_DEFAULT_KEYS = ("variance", "clip", "spacing")
# Every sample() keyword a model may carry as its own default: a diffusers scheduler's settings
# (SAMPLER_DEFAULT_KEYS), a distilled student's sampler (sampler, steps, timesteps as the spacing,
# final, eta; fastddpm.distill), a learned-variance model's variance. A checkpoint holds them in
# config.json ("sampling"), an ONNX file in its fastddpm.sampling metadata; Pipeline and
# `fastddpm sample` sample with them unless told otherwise.
SAMPLING_KEYS = ("sampler", "steps", "spacing", "final", "eta", "variance", "clip")


def check_sampling(sampling, name: str = "sampling") -> dict:
    """``sampling`` (a dict of :data:`SAMPLING_KEYS`) checked for types; a copy, or a ValueError
    naming ``name`` and the offending key."""
    if not isinstance(sampling, dict) or not set(sampling) <= set(SAMPLING_KEYS):
        raise ValueError(f"{name} must be a dict with keys among {', '.join(SAMPLING_KEYS)}; got {sampling!r}")
    out = dict(sampling)
    for key, value in out.items():
        if value is None:
            continue
        ok = {"sampler": isinstance(value, str), "final": isinstance(value, str), "variance": isinstance(value, str),
              "steps": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
              "eta": isinstance(value, (int, float)) and not isinstance(value, bool),
              "clip": isinstance(value, (int, float)) and not isinstance(value, bool),
              "spacing": isinstance(value, str) or (isinstance(value, list) and bool(value) and all(
                  isinstance(v, int) and not isinstance(v, bool) for v in value))}[key]
        if not ok:
            raise ValueError(f"{name}[{key!r}] = {value!r} is not a valid {key} (see fastddpm.sample)")
    return out
# The diffusers scheduler classes whose math fastddpm reproduces: variance-preserving DDPM betas,
# sampled by fastddpm's ddpm / ddim / dpmpp2m (docs/diffusers.md). A config naming another class
# (a variance-exploding KarrasVeScheduler or ScoreSdeVeScheduler, PNDM, Euler, …) is refused by
# Schedule.from_diffusers and by the diffusers-directory loader rather than sampled with the wrong math.
# The diffusers schedulers whose math (variance-preserving, one of fastddpm's samplers) fastddpm
# reproduces, and the drop-ins of fastddpm.diffusers that stand for them.
DIFFUSERS_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                        "DEISMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                        "HeunDiscreteScheduler", "FusedDDPMScheduler", "FusedDDIMScheduler",
                        "FusedDPMSolverMultistepScheduler", "FusedUniPCMultistepScheduler",
                        "FusedEulerAncestralDiscreteScheduler")


class Schedule:
    """A diffusion schedule of T steps with its derived tables (float64, read-only).

    Build one with ``Schedule.linear(1000)``, ``Schedule.cosine(1000)``,
    ``Schedule.create("sigmoid", 1000, beta_end=0.01)`` or ``Schedule.from_betas(array)``.
    ``zero_terminal_snr=True`` admits one schedule outside (0, 1): a last beta of exactly 1
    (ᾱ_{T−1} = 0, pure noise at t = T−1; :func:`rescale_zero_terminal_snr`, diffusers'
    ``rescale_betas_zero_snr``). Its tables are +inf where they divide by ᾱ_{T−1}, so a sampler
    row that needs x̂0 from an ε- or sample-prediction at t = T−1 is refused with an error;
    v-prediction (x̂0 = −v̂ there) is what such schedules are trained with.
    Tables (each [T]): ``betas``, ``alphas``, ``alphas_cumprod`` (ᾱ), ``alphas_cumprod_prev``,
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``posterior_variance`` (β̃),
    ``posterior_log_variance_clipped``, ``posterior_mean_coef1``, ``posterior_mean_coef2``,
    ``snr``.
    """

    def __init__(self, betas, *, name: str = "custom", params: dict[str, float] | None = None,
                 zero_terminal_snr: bool = False):
        betas = _check_betas(betas, zero_terminal_snr)
        self.zero_terminal_snr = bool(zero_terminal_snr)
        self.name = name
        self.params = dict(params or {})
        tables = schedule_tables(betas)
        for key in TABLE_NAMES:
            table = np.array(tables[key], dtype=np.float64)
            table.flags.writeable = False
            setattr(self, key, table)
        self._device_cache: dict[tuple[str, str], dict[str, Any]] = {}

    # -- constructors ------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, num_steps: int = 1000, **params) -> "Schedule":
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
        num_steps = _check_num_steps(num_steps)
        merged = _check_params(name, params)
        return cls(_BETAS[name](num_steps, **merged), name=name, params=merged)

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        return cls.create("linear", num_steps, beta_start=beta_start, beta_end=beta_end)

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, min_beta: float = 0.0,
               max_beta: float = 0.999):
        return cls.create("cosine", num_steps, s=s, min_beta=min_beta, max_beta=max_beta)

    @classmethod
    def quadratic(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        return cls.create("quadratic", num_steps, beta_start=beta_start, beta_end=beta_end)

    @classmethod
    def sigmoid(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        return cls.create("sigmoid", num_steps, beta_start=beta_start, beta_end=beta_end)

    @classmethod
    def from_betas(cls, betas, *, zero_terminal_snr: bool = False) -> "Schedule":
        return cls(betas, name="custom", zero_terminal_snr=zero_terminal_snr)

    # -- serialisation -----------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """JSON-able description; named schedules store their parameters, custom ones betas."""
        if self.name in SCHEDULES:
            return {"name": self.name, "num_steps": self.num_steps, **self.params}
        config = {"name": "custom", "betas": self.betas.tolist()}
        if self.zero_terminal_snr:
            config["zero_terminal_snr"] = True
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Schedule":
        config = dict(config)
        name = config.pop("name", None)
        if name == "custom":
            return cls.from_betas(config["betas"], zero_terminal_snr=bool(config.get("zero_terminal_snr", False)))
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r} in config; allowed: {', '.join(SCHEDULES)}, custom")
        return cls.create(name, config.pop("num_steps"), **config)

    # -- properties --------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    def __len__(self) -> int:
        return self.num_steps

    def __eq__(self, other) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return np.array_equal(self.betas, other.betas)

    def __hash__(self) -> int:
        return hash(self.betas.tobytes())

    def __repr__(self) -> str:
        if self.name in SCHEDULES:
            args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
            return f"Schedule.{self.name}(num_steps={self.num_steps}, {args})"
        return f"Schedule.from_betas(<{self.num_steps} betas in [{self.betas.min():.3g}, {self.betas.max():.3g}]>)"

    # -- device copies -----------------------------------------------------------------

    def tables(self, device=None, dtype=None) -> dict[str, Any]:
        """Every table cast to ``dtype`` on ``device``, built once and cached.

        ``device=None`` gives NumPy arrays (default dtype float64); a torch device (or its
        string) gives torch tensors (default dtype float32). The cache makes a sampling loop
        free of host→device copies after its first step.
        """
        if device is None:
            np_dtype = np.dtype(dtype or np.float64)
            key = ("numpy", np_dtype.name)
            if key not in self._device_cache:
                self._device_cache[key] = {k: getattr(self, k).astype(np_dtype) for k in TABLE_NAMES}
            return self._device_cache[key]
        import torch

        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        dtype = dtype or torch.float32
        key = (str(device), str(dtype))
        if key not in self._device_cache:
            self._device_cache[key] = {
                k: torch.tensor(getattr(self, k), dtype=torch.float64).to(device=device, dtype=dtype)
                for k in TABLE_NAMES
            }
        return self._device_cache[key]

    # -- diffusers interop (no diffusers import: configs are plain dicts) ----------------

    @classmethod
    def from_diffusers(cls, scheduler_or_config, *, sampling: bool = True) -> "Schedule":
        """The schedule of a diffusers scheduler (or its ``.config`` dict), in float64.

        beta_schedule → fastddpm: ``linear`` → linear, ``scaled_linear`` → quadratic (both are
        linspace(√β₀, √β₁)²), ``squaredcos_cap_v2`` → cosine(s=0.008, max_beta=0.999) (the same
        alpha_bar formula, clipped at 0.999), ``sigmoid`` → sigmoid, ``trained_betas`` → from_betas.
        diffusers computes its betas in float32; ours are the float64 values they round to.

        The sampling settings diffusers keeps on the scheduler land in ``schedule.sampling_defaults``
        (``prediction``, ``variance``, ``clip``, ``spacing``), ready for
        ``fastddpm.sample(model, schedule, n, **schedule.sampling_defaults)``.
        Settings fastddpm cannot express raise ValueError naming the setting, and so does a config whose
        ``_class_name`` is not one of :data:`DIFFUSERS_SCHEDULERS` (e.g. a variance-exploding scheduler).

        ``sampling=False``: the schedule alone, for a caller that applies the scheduler's sampling
        settings itself (the drop-in schedulers of fastddpm.diffusers): ``rescale_betas_zero_snr``
        gives the zero-terminal-SNR schedule (:func:`rescale_zero_terminal_snr`), and the sampling
        settings (thresholding, steps_offset, variance_type, clip, spacing, prediction) are
        neither checked nor recorded (no ``sampling_defaults``).
        """
        config = getattr(scheduler_or_config, "config", scheduler_or_config)
        if not hasattr(config, "get"):
            raise TypeError("from_diffusers takes a diffusers scheduler or its config dict, "
                            f"got {type(scheduler_or_config).__name__}")
        get = config.get

        def unsupported(key, value, allowed):
            raise ValueError(f"diffusers setting {key}={value!r} is not supported by fastddpm; allowed: {allowed}")

        scheduler_class = get("_class_name", None)
        if scheduler_class is not None and scheduler_class not in DIFFUSERS_SCHEDULERS:
            raise ValueError(f"diffusers scheduler class {scheduler_class} is not supported: fastddpm reproduces only "
                             f"{', '.join(DIFFUSERS_SCHEDULERS)} (variance-preserving DDPM math); a {scheduler_class} "
                             "would be sampled with the wrong math")
        if not sampling:
            return cls._diffusers_betas(get, unsupported)

        if get("rescale_betas_zero_snr", False):
            unsupported("rescale_betas_zero_snr", True, "False for fastddpm.sample (its spacings and samplers need "
                        "alpha_bar > 0; the drop-in schedulers of fastddpm.diffusers support it)")
        if get("thresholding", False):
            unsupported("thresholding", True, "False (use clip_sample for static clipping)")
        if get("steps_offset", 0):
            unsupported("steps_offset", get("steps_offset"), "0")
        if get("beta_schedule", "linear") == "exp":
            unsupported("beta_schedule", "exp", "linear, scaled_linear, squaredcos_cap_v2, sigmoid or trained_betas")
        spacing = get("timestep_spacing", "leading")
        if spacing not in ("leading", "trailing", "linspace"):
            unsupported("timestep_spacing", spacing, "leading, trailing, linspace")
        prediction = get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "sample", "v_prediction"):
            unsupported("prediction_type", prediction, "epsilon, sample, v_prediction")
        # The variance is a DDPM option: only a scheduler that has one (DDPMScheduler's
        # variance_type) sets it; for DDIM/DPM-Solver/… configs it stays None (the sampler's own).
        variance = get("variance_type", None)
        # the *_log variants differ only in where the log is taken: the same variance
        variance_map = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                        "fixed_large": "fixed_large", "fixed_large_log": "fixed_large", None: None}
        if variance not in variance_map:
            unsupported("variance_type", variance, ", ".join(v for v in variance_map if v))
        # DDPM/DDIM default clip_sample=True; DPMSolver* schedulers have no such setting and never clip
        never_clips = "DPMSolver" in str(get("_class_name", "")) or "solver_order" in config
        clip = float(get("clip_sample_range", 1.0)) if get("clip_sample", not never_clips) else None

        schedule = cls._diffusers_betas(get, unsupported)
        schedule.sampling_defaults = {"prediction": prediction, "variance": variance_map[variance],
                                      "clip": clip, "spacing": spacing}
        return schedule

    @classmethod
    def _diffusers_betas(cls, get, unsupported) -> "Schedule":
        """The schedule of a diffusers config (``get``: its .get), rescaled when rescale_betas_zero_snr."""
        num_steps = _check_num_steps(get("num_train_timesteps", 1000))
        trained = get("trained_betas", None)
        if trained is not None:
            schedule = cls.from_betas(np.asarray(trained, dtype=np.float64))
            if schedule.num_steps != num_steps:
                raise ValueError(f"trained_betas has {schedule.num_steps} values but num_train_timesteps="
                                 f"{num_steps}; they must agree")
        else:
            name = get("beta_schedule", "linear")
            start, end = float(get("beta_start", 1e-4)), float(get("beta_end", 0.02))
            if name == "linear":
                schedule = cls.linear(num_steps, beta_start=start, beta_end=end)
            elif name == "scaled_linear":
                schedule = cls.quadratic(num_steps, beta_start=start, beta_end=end)
            elif name == "squaredcos_cap_v2":
                schedule = cls.cosine(num_steps)
            elif name == "sigmoid":
                schedule = cls.sigmoid(num_steps, beta_start=start, beta_end=end)
            else:
                unsupported("beta_schedule", name, "linear, scaled_linear, squaredcos_cap_v2, sigmoid or trained_betas")
        if get("rescale_betas_zero_snr", False):
            schedule = cls.from_betas(rescale_zero_terminal_snr(schedule.betas), zero_terminal_snr=True)
        return schedule

    def sampler_defaults(self) -> dict[str, Any] | None:
        """The ``sample()`` keyword defaults a diffusers scheduler implies besides the prediction
        type — ``{"variance", "clip", "spacing"}`` — or None for a schedule not made by from_diffusers.
        ``Pipeline.from_diffusers`` samples with them and ``export_onnx`` records them in the file."""
        defaults = getattr(self, "sampling_defaults", None)
        return None if defaults is None else {k: defaults[k] for k in SAMPLER_DEFAULT_KEYS}

    def to_diffusers_config(self, *, prediction: str | None = None, variance: str | None = None,
                            clip: float | None | str = "default", spacing: str | None = None) -> dict[str, Any]:
        """A config dict for ``DDPMScheduler.from_config`` (or DDIM/DPMSolver) giving this schedule.

        Unset sampling settings come from ``self.sampling_defaults`` when from_diffusers made this
        schedule, else fastddpm's defaults (epsilon, fixed_small, no clip, leading).
        cosine maps to squaredcos_cap_v2 only with its defaults (s=0.008, min_beta=0,
        max_beta=0.999); every other schedule travels as trained_betas.
        """
        defaults = getattr(self, "sampling_defaults", None) or {
            "prediction": "epsilon", "variance": "fixed_small", "clip": None, "spacing": "leading"}
        prediction = defaults["prediction"] if prediction is None else prediction
        variance = (defaults["variance"] or "fixed_small") if variance is None else variance
        clip = defaults["clip"] if clip == "default" else clip
        spacing = defaults["spacing"] if spacing is None else spacing
        config: dict[str, Any] = {"num_train_timesteps": self.num_steps, "beta_start": 1e-4, "beta_end": 0.02,
                                  "trained_betas": None}
        p = self.params
        if self.name == "linear":
            config.update(beta_schedule="linear", beta_start=p["beta_start"], beta_end=p["beta_end"])
        elif self.name == "quadratic":
            config.update(beta_schedule="scaled_linear", beta_start=p["beta_start"], beta_end=p["beta_end"])
        elif self.name == "sigmoid":
            config.update(beta_schedule="sigmoid", beta_start=p["beta_start"], beta_end=p["beta_end"])
        elif self.name == "cosine" and p == _DEFAULTS["cosine"]:
            config.update(beta_schedule="squaredcos_cap_v2")
        else:
            config.update(beta_schedule="linear", trained_betas=self.betas.tolist())
        config.update(prediction_type=prediction, variance_type=variance, clip_sample=clip is not None,
                      clip_sample_range=1.0 if clip is None else float(clip), timestep_spacing=spacing,
                      steps_offset=0, thresholding=False, rescale_betas_zero_snr=False)
        return config
