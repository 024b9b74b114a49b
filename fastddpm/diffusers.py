"""diffusers interop that needs the diffusers package (``pip install fastddpm[diffusers]``).

``import diffusers`` below is the real package (absolute import); the fastddpm core never imports
this module.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_pipeline_dir(path, *, device="cpu"):
    """A fastddpm Checkpoint from a local ``DDPMPipeline.save_pretrained`` directory.

    Reads model_index.json, unet/ (UNet2DModel) and scheduler/scheduler_config.json. Local paths
    only: a hub id or a missing directory raises FileNotFoundError saying so. Normalisation is
    DDPMPipeline's: model space [-1, 1] ↔ data (x + 1) / 2 (diffusers also clamps to [0, 1];
    fastddpm does not clamp).
    """
    from diffusers import UNet2DModel

    from .checkpoint import DIFFUSERS_INDEX, Checkpoint, _sha256, is_diffusers_dir
    from .data import Normalization
    from .schedule import Schedule
    from .sampling.adapters import as_fastddpm_model

    root = Path(path)
    if not is_diffusers_dir(root):
        raise FileNotFoundError(
            f"{str(path)!r} is not a local diffusers pipeline directory (no model_index.json); "
            "fastddpm loads only local DDPMPipeline.save_pretrained directories, never hub ids — "
            "download it first (e.g. DDPMPipeline.from_pretrained(id).save_pretrained(dir))")
    index = json.loads((root / DIFFUSERS_INDEX).read_text())
    if list(index.get("unet", [None, None]))[1] != "UNet2DModel":
        raise ValueError(f"{root / DIFFUSERS_INDEX}: unet must be a UNet2DModel, got {index.get('unet')!r}")
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    schedule = Schedule.from_diffusers(scheduler_config)
    unet = UNet2DModel.from_pretrained(root / "unet").to(device).eval()
    model = as_fastddpm_model(unet)
    # what identifies these weights (model_identity: the resume record, the cross-rank check, the ONNX
    # cache): the SHA-256 of every file the pipeline is made of, as a fastddpm checkpoint's config.json
    # records its files — so weights saved again over the same directory are a different model, and a
    # copy of the directory elsewhere the same one
    parts = [root / DIFFUSERS_INDEX, *sorted(p for d in ("unet", "scheduler") for p in (root / d).rglob("*") if p.is_file())]
    files = {p.relative_to(root).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in parts}
    return Checkpoint(model=model, schedule=schedule, normalization=Normalization(mean=np.array(0.5),
                      std=np.array(0.5)), prediction=schedule.sampling_defaults["prediction"],
                      sample_shape=model.sample_shape, config={"files": files, "diffusers": index},
                      path=root, weights="model")


# -- drop-in schedulers ------------------------------------------------------------------------

try:  # the base classes must exist when the classes below are defined
    import torch
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"fastddpm.diffusers needs torch and diffusers ({exc}); "
                      "install them with: pip install 'fastddpm[diffusers]'") from exc

_NOISE_DOC = """
    Noise (what a ``torch.Generator`` becomes). fastddpm's noise is counter-based Philox: the
    normal at (seed, stream, counter) is a pure function of those three integers. A run — from
    ``set_timesteps`` to the last step — draws ONE seed, a uint32 taken from ``generator`` (or
    from torch's global RNG when ``generator`` is None) at its first step that adds noise;
    step k (the position of ``timestep`` in ``self.timesteps``) then adds the Philox normals of
    (seed, stream k + 1, counter = the element's flat index in the batch), drawn inside the fused
    kernel. That is the noise ``fastddpm.sample(..., seed=seed)`` gives step k of its first batch.
    Setting ``scheduler.noise_seed = s`` fixes the seed instead (the generator is then not
    touched). A list of generators (one per sample, as diffusers allows) draws one seed per
    sample and steps the samples one kernel call each; sample b's noise is then counters
    0 … D−1 under its own seed, independent of its batch.

    Reproducibility this gives: the same generator state (or noise_seed) and the same inputs
    give bit-identical steps on one backend and machine; the numba (CPU) and triton (CUDA)
    kernels draw the same normals, so CPU and GPU runs differ only by float32 arithmetic
    rounding; sample b's noise depends on b and the sample size, not on the batch size; and it
    does not depend on how many other steps ran before. It is NOT diffusers' noise: diffusers'
    own schedulers call ``torch.randn`` on the generator at every step, so for the same
    generator the fused scheduler gives different (equally distributed) samples and leaves the
    generator in a different state. To reproduce a diffusers run exactly, pass its noise as
    ``variance_noise=`` (then no seed is drawn for that step).
"""


def _as_int_timestep(timestep) -> int:
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be one integer (a 0-d tensor or int), got a tensor of shape "
                             f"{tuple(timestep.shape)}; the fused schedulers step the whole batch at one t")
        timestep = timestep.item()
    if isinstance(timestep, float) and timestep.is_integer():
        timestep = int(timestep)
    if isinstance(timestep, bool) or not isinstance(timestep, (int, np.integer)):
        raise TypeError(f"timestep must be an integer, got {type(timestep).__name__}")
    return int(timestep)


def _contiguous(x, like):
    """x detached, in like's dtype and device, contiguous (no copy when it already is)."""
    return x.detach().to(device=like.device, dtype=like.dtype).contiguous()


def _custom_timesteps(timesteps, T: int) -> np.ndarray:
    arr = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"timesteps must be a non-empty 1-D list of integers, got {timesteps!r}")
    arr = arr.astype(np.int64)
    if np.any(np.diff(arr) >= 0):
        raise ValueError("timesteps must be strictly decreasing (e.g. [999, 749, 499, 249])")
    if arr[-1] < 0 or arr[0] >= T:
        raise ValueError(f"timesteps must lie in [0, num_train_timesteps = {T}), got [{arr[-1]}, {arr[0]}]")
    return arr


class _FusedScheduler(SchedulerMixin, ConfigMixin):
    """What the three drop-in schedulers share: the fastddpm schedule, timesteps, seeds."""

    _compatibles = ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"]
    order = 1
    init_noise_sigma = 1.0
    _spacing_convention = "ddim"

    def _setup(self, config: dict) -> None:
        from .schedule import Schedule

        self.schedule = Schedule.from_diffusers(config)  # ValueError naming any unsupported setting
        d = self.schedule.sampling_defaults
        self.prediction, self.variance, self.clip = d["prediction"], d["variance"], d["clip"]
        ac = self.schedule.alphas_cumprod
        # float32 views of the float64 tables the kernels use, for code that reads them (e.g. loss weights)
        self.betas = torch.from_numpy(np.asarray(self.schedule.betas, dtype=np.float32))
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.from_numpy(np.asarray(ac, dtype=np.float32))
        self.backend = "auto"   # fastddpm backend of the steps: auto (numba on CPU, triton on CUDA) | numpy | numba | triton
        self.noise_seed = None  # int in [0, 2**32): fixes the noise seed of every run (see the class docstring)
        self.num_inference_steps = None
        self._set(np.arange(self.config.num_train_timesteps)[::-1].copy(), None)

    def _set(self, ts: np.ndarray, device) -> None:
        self.timesteps = torch.from_numpy(np.ascontiguousarray(ts, dtype=np.int64)).to(device)
        self._index = {int(t): k for k, t in enumerate(ts)}
        self._ts = [int(t) for t in ts]
        self._seed = None

    def _spaced(self, num_inference_steps, timesteps):
        from .sampling.timesteps import timesteps as spaced

        T = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps takes exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            return _custom_timesteps(timesteps, T)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an integer, got {type(num_inference_steps).__name__}")
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps must lie in [1, num_train_timesteps = {T}], got {num_inference_steps}")
        return spaced(T, int(num_inference_steps), self.config.timestep_spacing, convention=self._spacing_convention)

    def _position(self, t: int) -> int:
        k = self._index.get(t)
        if k is None:
            raise ValueError(f"timestep {t} is not one of this scheduler's timesteps "
                             f"({self._ts[:4]}…); call set_timesteps first and step through self.timesteps")
        return k

    def _seeds(self, generator, batch: int):
        """The run's seed (drawn once per run), or one per sample for a list of generators."""
        if self.noise_seed is not None:
            return int(self.noise_seed)
        if self._seed is None:
            def draw(g):
                if g is None:
                    return int(torch.randint(0, 2**32, (1,), dtype=torch.int64))
                return int(torch.randint(0, 2**32, (1,), generator=g, device=g.device, dtype=torch.int64))

            if isinstance(generator, (list, tuple)):
                if len(generator) != batch:
                    raise ValueError(f"generator is a list of {len(generator)} generators but the batch has "
                                     f"{batch} samples; give one per sample")
                self._seed = [draw(g) for g in generator]
            else:
                self._seed = draw(generator)
        return self._seed

    def _philox_step(self, step, x, m, t: int, k: int, generator, kw: dict):
        """``step`` (fastddpm.ddpm_step / ddim_step) at position k with the run's Philox noise:
        stream k + 1 under the run's seed, or one kernel call per sample for a list of generators."""
        seed = self._seeds(generator, x.shape[0])
        if not isinstance(seed, list):
            return step(self.schedule, x, m, t, seed=seed, stream=k + 1, **kw)
        y = torch.empty_like(x)
        for b, s in enumerate(seed):  # one call per sample: each its own seed
            step(self.schedule, x[b:b + 1], m[b:b + 1], t, seed=s, stream=k + 1, out=y[b:b + 1], **kw)
        return y

    def _backend(self, x) -> str:
        if self.backend not in ("auto", "numpy", "numba", "triton"):
            raise ValueError(f"scheduler.backend must be one of 'auto', 'numpy', 'numba', 'triton'; got {self.backend!r}")
        return self.backend

    def scale_model_input(self, sample, timestep=None, *args, **kwargs):
        """The identity (DDPM-family schedulers do not scale the model input)."""
        return sample

    def add_noise(self, original_samples, noise, timesteps):
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε per sample: one fused fastddpm.q_sample call."""
        from .ops import q_sample

        t = torch.as_tensor(timesteps).reshape(-1)
        if t.is_floating_point():
            raise TypeError(f"timesteps must be integers, got {t.dtype}")
        x0 = original_samples.detach().contiguous()
        cuda = x0.device.type == "cuda"
        t = t.to(x0.device) if cuda else t.cpu().numpy().astype(np.int64)
        if t.shape[0] == 1:
            t = t[0] if cuda else int(t[0])
        return q_sample(self.schedule, x0, t, _contiguous(noise, x0), backend=self._backend(x0))[0]

    def __len__(self):
        return self.config.num_train_timesteps


class FusedDDPMScheduler(_FusedScheduler):
    """diffusers' ``DDPMScheduler`` with each step one fused fastddpm kernel (``fastddpm.ddpm_step``).

    The same constructor arguments and config as ``DDPMScheduler``, so
    ``FusedDDPMScheduler.from_config(pipe.scheduler.config)`` takes a DDPM pipeline's scheduler
    and ``save_pretrained``/``from_pretrained`` write and read the same scheduler_config.json.
    Settings fastddpm cannot express (thresholding, learned variances, steps_offset,
    rescale_betas_zero_snr, …) raise ValueError naming the setting. The step math is
    fastddpm's (float64 coefficients, float32 data) and equals diffusers' to float32 rounding,
    with one deliberate difference: no noise is added at the final step even when its t > 0
    (diffusers adds noise whenever t > 0, which with trailing spacing and fixed_large adds
    noise of std √(1−ᾱ_t) to the final sample). ``step`` returns ``pred_original_sample=None``:
    the fused kernel never writes x̂0.
    """ + _NOISE_DOC

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        self._setup(dict(self.config))
        self.variance_type = variance_type
        self.custom_timesteps = False
        self._prev = [t - 1 for t in self._ts]

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        """Timesteps as DDPMScheduler.set_timesteps (the config's timestep_spacing, or a custom
        descending list); a respaced step goes to the next visited timestep."""
        ts = self._spaced(num_inference_steps, timesteps)
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(ts)
        self._set(ts, device)
        self._prev = self._ts[1:] + [-1]

    def previous_timestep(self, timestep):
        return self._prev[self._position(_as_int_timestep(timestep))]

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True, *,
             variance_noise=None):
        """x_t → x_prev in one fused kernel. ``variance_noise`` (like sample): the standard normal
        noise of this step instead of fastddpm's Philox noise (diffusers' DDPMScheduler draws it
        with ``randn_tensor``; pass the same tensor to reproduce it). Returns
        DDPMSchedulerOutput(prev_sample, pred_original_sample=None) or (prev_sample, None)."""
        from .ops import ddpm_step

        t = _as_int_timestep(timestep)
        k = self._position(t)
        prev = self._prev[k]
        x = sample.detach().contiguous()
        m = _contiguous(model_output, x)
        kw = dict(prev_t=prev, prediction=self.prediction, variance=self.variance, clip=self.clip,
                  backend=self._backend(x))
        if prev < 0:  # the final step adds no noise
            y = ddpm_step(self.schedule, x, m, t, **kw)
        elif variance_noise is not None:
            y = ddpm_step(self.schedule, x, m, t, noise=_contiguous(variance_noise, x), **kw)
        else:
            y = self._philox_step(ddpm_step, x, m, t, k, generator, kw)
        if not return_dict:
            return (y, None)
        return DDPMSchedulerOutput(prev_sample=y, pred_original_sample=None)


class FusedDDIMScheduler(_FusedScheduler):
    """diffusers' ``DDIMScheduler`` with each step one fused fastddpm kernel (``fastddpm.ddim_step``).

    Same constructor and config as ``DDIMScheduler``; the target of a step is, as there,
    t − num_train_timesteps // num_inference_steps (ᾱ = 1 below 0: ``set_alpha_to_one=True``;
    False raises). ε̂ comes from the unclipped x̂0 (diffusers' ``use_clipped_model_output=False``;
    True together with clip_sample raises). ``pred_original_sample`` is None. With eta = 0 no
    noise is drawn and the generator is never touched.
    """ + _NOISE_DOC

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        if not set_alpha_to_one:
            raise ValueError("diffusers setting set_alpha_to_one=False is not supported by FusedDDIMScheduler; "
                             "allowed: True (the final step goes to ᾱ = 1)")
        self._setup(dict(self.config))
        self.final_alpha_cumprod = torch.tensor(1.0)

    def set_timesteps(self, num_inference_steps, device=None):
        """Timesteps as DDIMScheduler.set_timesteps (the config's timestep_spacing)."""
        ts = self._spaced(num_inference_steps, None)
        self.num_inference_steps = int(num_inference_steps)
        self._set(ts, device)

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        """x_t → x_prev in one fused kernel (DDIMScheduler.step's arguments; ``variance_noise``
        is the η > 0 noise, as there). Returns DDIMSchedulerOutput(prev_sample, None) or a tuple."""
        from .ops import ddim_step

        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        if use_clipped_model_output and self.clip is not None:
            raise ValueError("use_clipped_model_output=True with clip_sample=True is not supported: the fused "
                             "DDIM step takes ε̂ from the unclipped x̂0 (use_clipped_model_output=False)")
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        t = _as_int_timestep(timestep)
        prev = max(t - self.config.num_train_timesteps // self.num_inference_steps, -1)
        x = sample.detach().contiguous()
        m = _contiguous(model_output, x)
        kw = dict(prev_t=prev, eta=float(eta), prediction=self.prediction, clip=self.clip, backend=self._backend(x))
        if eta == 0 or prev < 0:  # σ = 0: no noise
            y = ddim_step(self.schedule, x, m, t, **kw)
        elif variance_noise is not None:
            y = ddim_step(self.schedule, x, m, t, noise=_contiguous(variance_noise, x), **kw)
        else:
            y = self._philox_step(ddim_step, x, m, t, self._position(t), generator, kw)
        if not return_dict:
            return (y, None)
        return DDIMSchedulerOutput(prev_sample=y, pred_original_sample=None)


class FusedDPMSolverMultistepScheduler(_FusedScheduler):
    """diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M) with each step one fused
    kernel: x′ = a·x_t + b·x̂0 + c·x̂0_prev, and x̂0_prev ← x̂0 in the same pass
    (the generic update kernel of fastddpm.kernels.numba.update on CPU tensors, the Triton
    loop update on CUDA, after a copy of x_t, since the kernels update in place).

    Same constructor and config as ``DPMSolverMultistepScheduler``; supported: algorithm_type
    "dpmsolver++", solver_order 2, solver_type "midpoint", final_sigmas_type "zero",
    lambda_min_clipped −inf, no Karras/exponential/beta/Lu/flow sigmas, no dynamic shifting —
    every other value raises ValueError naming the setting. As in diffusers, the first step of a
    run and the last step are first order. The coefficients come from
    fastddpm.sampling.plan (float64); they equal diffusers' (float32 sigmas) to float32 rounding.
    The solver is deterministic: ``generator`` and ``variance_noise`` are accepted and unused,
    as in diffusers for "dpmsolver++".
    """

    _spacing_convention = "dpmsolver"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint", lower_order_final: bool = True,
                 euler_at_final: bool = False, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_lu_lambdas: bool = False, use_flow_sigmas: bool = False,
                 flow_shift: float = 1.0, final_sigmas_type: str = "zero", lambda_min_clipped: float = -float("inf"),
                 variance_type=None, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential"):
        required = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                    "final_sigmas_type": "zero", "use_karras_sigmas": False, "use_exponential_sigmas": False,
                    "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
                    "use_dynamic_shifting": False}
        for key, allowed in required.items():
            if self.config[key] != allowed:
                raise ValueError(f"diffusers setting {key}={self.config[key]!r} is not supported by "
                                 f"FusedDPMSolverMultistepScheduler; allowed: {allowed!r}")
        if lambda_min_clipped != -float("inf"):
            raise ValueError(f"diffusers setting lambda_min_clipped={lambda_min_clipped!r} is not supported by "
                             "FusedDPMSolverMultistepScheduler; allowed: -inf")
        # DPMSolverMultistepScheduler never clips x̂0 (it has no clip_sample setting)
        self._setup({**self.config, "clip_sample": False})
        self.sigmas = None
        self._step_index = self._begin_index = None
        self._plan = None
        self._ring = None
        self.lower_order_nums = 0

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):
        """Timesteps as DPMSolverMultistepScheduler.set_timesteps; the plan's coefficients once."""
        from .sampling.plan import make_plan

        if mu is not None:
            raise ValueError("mu (dynamic shifting) is not supported by FusedDPMSolverMultistepScheduler")
        ts = self._spaced(num_inference_steps, timesteps)
        self.num_inference_steps = len(ts)
        self._set(ts, device)
        self._plan = make_plan(self.schedule, "dpmpp2m", spacing=ts, prediction=self.prediction, clip=self.clip)
        ac = self.schedule.alphas_cumprod[ts]
        self.sigmas = torch.from_numpy(np.append(np.sqrt((1 - ac) / ac), 0.0).astype(np.float32))
        self._step_index = self._begin_index = None
        self._ring = None
        self.lower_order_nums = 0

    def _init_step_index(self, t: int) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
        else:  # diffusers' index_for_timestep (timesteps are distinct here)
            self._step_index = self._index.get(t, len(self._ts) - 1)

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True):
        """x_t → x′ in one fused kernel; keeps x̂0 for the next step. Returns SchedulerOutput or a tuple."""
        if self._plan is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        t = _as_int_timestep(timestep)
        if self._step_index is None:
            self._init_step_index(t)
        k = self._step_index
        if k >= len(self._ts):
            raise ValueError(f"step called {k + 1} times after set_timesteps({len(self._ts)}); call set_timesteps again")
        row, slots = self._plan.coef[k], self._plan.table.slots()[k]
        if self.lower_order_nums < 1 and k > 0:  # a run started mid-way (set_begin_index): first order, as diffusers
            from .kernels import samplers

            g = self._plan.grid
            row = samplers.compile("dpmpp2m", samplers.Grid(g.t[k:k + 1], g.alpha_bar[k:k + 2]), self.prediction).rows[0]
        x = sample.detach().contiguous()
        m = _contiguous(model_output, x)
        if self._ring is None or self._ring.shape[1:] != x.shape or self._ring.dtype != x.dtype \
                or self._ring.device != x.device:
            if self.lower_order_nums:
                raise ValueError(f"sample changed to {tuple(x.shape)} {x.dtype} {x.device} within a run; "
                                 "call set_timesteps before stepping a new batch")
            self._ring = torch.zeros((self._plan.table.ring,) + tuple(x.shape), dtype=x.dtype, device=x.device)
        y = self._update(x, m, row, slots)
        self.lower_order_nums = min(self.lower_order_nums + 1, 2)
        self._step_index += 1
        if not return_dict:
            return (y,)
        return SchedulerOutput(prev_sample=y)

    def _update(self, x, m, row, slots):
        """One generic fused update from ``row`` with the history ring of this run (slots: write, h1)."""
        backend = self._backend(x)
        if backend == "auto":
            backend = "triton" if x.device.type == "cuda" else "numba"
        ring = self._ring
        if backend == "triton":
            from .kernels.triton.update import LoopUpdate

            y = x.clone()  # the loop kernel updates in place; the caller keeps its sample
            coef = torch.as_tensor(row, dtype=torch.float32, device=x.device).reshape(1, -1)
            sl = torch.as_tensor(slots, dtype=torch.int64, device=x.device).reshape(1, 4)
            ctl = torch.zeros(3, dtype=torch.int64, device=x.device)
            n = x.numel()
            upd = LoopUpdate(coef, sl, ctl, n, n // max(1, x.shape[0]), clip=self.clip, noise=False, has_state=False,
                             depth=self._plan.table.depth)
            upd(y, m, upd.buffers(y).__class__(None, ring))
            return y
        if x.device.type != "cpu":
            raise ValueError(f"sample is on {x.device}; backend={backend!r} needs CPU tensors")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"sample must be float32 or float64 on the CPU, got {x.dtype}")
        y = x.clone()
        yf, mf = y.numpy().reshape(-1), m.numpy().reshape(-1)
        rf = ring.numpy().reshape(ring.shape[0], -1)
        w, h1 = int(slots[0]), int(slots[1])
        if backend == "numba":
            from .kernels.numba.update import update

            update(yf, mf, np.ascontiguousarray(row.reshape(1, -1), dtype=yf.dtype), np.zeros(1, np.int64),
                   clip=self.clip, h=(rf[h1],), q=rf[w], per_sample=x.numel() // max(1, x.shape[0]))
        else:
            from .kernels import coefficients as KC

            dt = yf.dtype.type
            out, _, q = KC.apply_row(row.astype(yf.dtype), yf, mf, clip=None if self.clip is None else dt(self.clip),
                                     h=(rf[h1],))
            rf[w], yf[...] = q, out
        return y
