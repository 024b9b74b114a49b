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

    from ._io import sha256_file
    from .checkpoint import DIFFUSERS_INDEX, Checkpoint, is_diffusers_dir
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
    files = {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in parts}
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
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"fastddpm.diffusers needs torch and diffusers ({exc}); "
                      "install them with: pip install 'fastddpm[diffusers]'") from exc

_NOISE_DOC = """
    Noise (what a ``torch.Generator`` becomes). fastddpm's noise is counter-based Philox: the
    normal at (seed, stream, counter) is a pure function of those three integers. A run — from
    ``set_timesteps`` to the last step — draws ONE seed, a uint32 taken from ``generator`` (or
    from torch's global RNG when ``generator`` is None) at its first step that adds noise;
    step k (the position of ``timestep`` in ``self.timesteps``; for DDIM/DDPM a timestep that is
    not one of them counts as the run's number of steps so far) then adds the Philox normals of
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


# diffusers' schedulers that fastddpm has a sampler for (``scheduler.compatibles`` lists these)
_COMPATIBLES = [name for name in ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                                  "UniPCMultistepScheduler", "DEISMultistepScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler")
                if name in KarrasDiffusionSchedulers.__members__]
_BUFFER_COLUMNS = ("y1", "y2", "y3", "ys", "s1", "s2", "s3", "ss")  # a row that reads one depends on earlier rows


def _timestep_value(timestep):
    """The timestep as a Python number (int or float); a tensor must hold one value."""
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be one number (a 0-d tensor, int or float), got a tensor of shape "
                             f"{tuple(timestep.shape)}; the fused schedulers step the whole batch at one t")
        timestep = timestep.item()
    if isinstance(timestep, bool) or not isinstance(timestep, (int, float, np.integer, np.floating)):
        raise TypeError(f"timestep must be a number, got {type(timestep).__name__}")
    return timestep


def _as_int_timestep(timestep) -> int:
    t = _timestep_value(timestep)
    if isinstance(t, (float, np.floating)):
        if not float(t).is_integer():
            raise TypeError(f"timestep must be an integer, got {t!r}")
        t = int(t)
    return int(t)


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


def _check_steps(num_inference_steps, T: int) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an integer, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= T:
        raise ValueError(f"num_inference_steps must lie in [1, num_train_timesteps = {T}], got {num_inference_steps}")
    return int(num_inference_steps)


def _sigmas_ve(ab):
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - ab) / ab)


def _sigma_schedule(kind: str, ac: np.ndarray, n: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """n descending σ (k-diffusion's σ = √((1 − ᾱ)/ᾱ)) from σ_max to σ_min, as diffusers'
    _convert_to_karras / _convert_to_exponential / _convert_to_beta (float64); the range is the
    schedule's σ(T − 1) … σ(0) unless the config gives sigma_min / sigma_max."""
    sig = _sigmas_ve(ac)
    lo = float(sig[0]) if sigma_min is None else float(sigma_min)
    hi = float(sig[-1]) if sigma_max is None else float(sigma_max)
    ramp = np.linspace(0.0, 1.0, n)
    if kind == "karras":
        rho = 7.0
        return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    if kind == "exponential":
        return np.exp(np.linspace(np.log(hi), np.log(lo), n))
    try:  # beta (Beta Sampling is All You Need), as diffusers: needs scipy
        import scipy.stats
    except ImportError as exc:  # pragma: no cover - scipy ships with the test environment
        raise ImportError("use_beta_sigmas needs scipy (pip install scipy), as in diffusers") from exc
    ppf = scipy.stats.beta.ppf(1.0 - ramp, 0.6, 0.6)
    return lo + ppf * (hi - lo)


class _RawTable:
    """A stateless sampler's rows [K, C] without the Table's finiteness check: a zero-terminal-SNR
    schedule makes the ε-/sample-prediction row at t = T − 1 infinite, and diffusers lets a run
    step anywhere else; the row is refused (ValueError) only if a step uses it."""

    depth, reads_state, writes_state = 0, False, False

    def __init__(self, rows, variance=None):
        self.rows, self.variance = rows, variance
        self.calls = rows.shape[0]

    def slots(self):
        return np.full((self.calls, 4), -1, dtype=np.int64)


class _Run:
    """What one run (set_timesteps … last step) executes: position-indexed rows (float64 [K, C],
    already in the pipeline's variable), ring slots [K, 4], the buffers the rows use and, once a
    batch arrives, the buffers themselves."""

    def __init__(self, rows, slots, depth: int, has_state: bool, variance):
        self.rows, self.slots, self.depth, self.has_state, self.variance = rows, slots, depth, has_state, variance
        self.s = self.ring = None     # [B, D] and [depth + 1, B, D] in the compute dtype, zero-filled
        self.device_rows = None        # float32 [K, C] on the data's device (Triton)
        self.device_slots = None

    def buffers(self, x2):
        """The state and ring for x2 [B, D] (allocated at a run's first step; the batch is fixed for the run)."""
        if self.s is None and self.ring is None:
            if self.has_state:
                self.s = torch.zeros_like(x2)
            if self.depth:
                self.ring = torch.zeros((self.depth + 1,) + tuple(x2.shape), dtype=x2.dtype, device=x2.device)
        for b in (self.s, self.ring):
            if b is not None and (b.shape[-2:] != x2.shape or b.dtype != x2.dtype or b.device != x2.device):
                raise ValueError(f"sample changed to {tuple(x2.shape)} {x2.dtype} {x2.device} within a run; call "
                                 "set_timesteps before stepping a new batch")
        return self.s, self.ring


class _FusedScheduler(SchedulerMixin, ConfigMixin):
    """The one base of the drop-in schedulers: a diffusers config → (fastddpm sampler, options,
    grid); set_timesteps compiles the grid's coefficient table once (fastddpm.kernels.samplers);
    a run keeps its buffers (the state s and the history ring of the table) and ``step`` k runs
    row k in one fused update (numba on CPU tensors, the Triton loop kernel on CUDA, the numpy
    reference for backend="numpy") with the noise of row k (Philox stream k + 1)."""

    _compatibles = _COMPATIBLES
    order = 1
    init_noise_sigma = 1.0
    _sampler = None            # the fastddpm sampler (or ``_sampler_name()`` for a config-dependent one)
    _ve = False                # the pipeline's sample is x/α (k-diffusion's variable: the Euler family)
    _indexed = False           # diffusers' step_index bookkeeping (multistep and Euler family)
    _clamps_zero_snr = False   # ᾱ_{T−1} := 2**-24 under rescale_betas_zero_snr, as the diffusers class does
    _required: dict = {}       # config key → the only value supported (anything else raises naming it)

    # -- set-up --------------------------------------------------------------------------

    def _setup(self) -> None:
        from .kernels import coefficients as KC
        from .schedule import Schedule

        cfg = self.config
        for key, allowed in self._required.items():
            if key in cfg and cfg[key] != allowed:
                raise ValueError(f"diffusers setting {key}={cfg[key]!r} is not supported by {type(self).__name__}; "
                                 f"allowed: {allowed!r}")
        for key, allowed in (("timestep_spacing", ("leading", "trailing", "linspace")),
                             ("final_sigmas_type", ("zero", "sigma_min"))):
            if key in cfg and cfg[key] not in allowed:
                raise ValueError(f"diffusers setting {key}={cfg[key]!r} is not supported by {type(self).__name__}; "
                                 f"allowed: {', '.join(allowed)}")
        prediction = cfg.get("prediction_type", "epsilon")
        if prediction not in KC.PREDICTIONS:
            raise ValueError(f"diffusers setting prediction_type={prediction!r} is not supported by "
                             f"{type(self).__name__}; allowed: {', '.join(KC.PREDICTIONS)}")
        self.prediction = prediction
        self.schedule = Schedule.from_diffusers(cfg, sampling=False)  # ValueError naming a bad beta setting
        ac = np.array(self.schedule.alphas_cumprod, dtype=np.float64)
        if self.schedule.zero_terminal_snr and self._clamps_zero_snr:
            ac[-1] = 2.0 ** -24  # diffusers: "close to 0 without being 0 so first sigma is not inf"
        self._ac = ac
        self.clip = float(cfg["clip_sample_range"]) if cfg.get("clip_sample", False) else None
        ratio = float(cfg.get("dynamic_thresholding_ratio", 0.995))
        if cfg.get("thresholding", False) and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must lie in [0, 1], got {ratio!r}")
        self._threshold = (ratio, float(cfg.get("sample_max_value", 1.0))) if cfg.get("thresholding", False) else None
        # float32 views of the float64 tables the kernels use, for code that reads them (e.g. loss weights)
        self.betas = torch.from_numpy(np.asarray(self.schedule.betas, dtype=np.float32))
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.from_numpy(ac.astype(np.float32))
        self.backend = "auto"   # fastddpm backend of the steps: auto (numba on CPU, triton on CUDA) | numpy | numba | triton
        self.noise_seed = None  # int in [0, 2**32): fixes the noise seed of every run (see the class docstring)
        self.num_inference_steps = None
        self._begin_index = None
        T = int(cfg.num_train_timesteps)
        ts = np.arange(T - 1, -1, -1, dtype=np.int64)
        # diffusers' constructor timesteps (all T); the grid is built when a step needs it (a clamped
        # zero-terminal-SNR ᾱ is not monotone over the last few training steps)
        self._install(self._public_default(ts), lambda: self._grid_of(ts, final=1.0))

    @property
    def _T(self) -> int:
        return int(self.config.num_train_timesteps)

    def _public_default(self, ts):
        return ts

    def _grid_of(self, ts, final=None, alpha_bar=None):
        from .kernels import samplers

        ab = self._ac[ts] if alpha_bar is None else alpha_bar
        return samplers.Grid(t=np.asarray(ts, dtype=np.int64),
                             alpha_bar=np.append(ab, self._final_alpha_bar() if final is None else final))

    def _final_alpha_bar(self) -> float:
        """ᾱ at the end of a run: 1 (σ = 0), or ᾱ_0 for final_sigmas_type="sigma_min"."""
        kind = self.config.get("final_sigmas_type", "zero")
        if kind not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {kind!r}")
        return 1.0 if kind == "zero" else float(self._ac[0])

    def _install(self, public_ts, grid, device=None) -> None:
        """A new run on ``grid`` (a Grid, or a function that makes it when first needed);
        ``public_ts`` is what diffusers' own class shows as ``timesteps``."""
        self.timesteps = torch.from_numpy(np.ascontiguousarray(public_ts)).to(device)
        self._ts_values = [float(t) for t in np.asarray(public_ts).tolist()]
        self._positions = {}
        for k, t in enumerate(self._ts_values):
            self._positions.setdefault(t, []).append(k)
        self._grid_value = grid
        self._tables = {}
        self._sigmas = None
        self._reset_run()

    @property
    def _grid(self):
        if callable(self._grid_value):
            self._grid_value = self._grid_value()
        return self._grid_value

    @property
    def sigmas(self):
        """float32 σ = √((1 − ᾱ)/ᾱ) of every point of the run and its end (diffusers' ``sigmas``)."""
        if self._sigmas is None:
            self._sigmas = torch.from_numpy(_sigmas_ve(self._grid.alpha_bar).astype(np.float32))
        return self._sigmas

    def _reset_run(self) -> None:
        self._seed = None
        self._run = None
        self._step_index = None
        self._calls = 0
        self._begin_index = None

    # -- the table -----------------------------------------------------------------------

    def _sampler_name(self) -> str:
        return self._sampler

    def _options(self, begin: int) -> dict:
        """The sampler options of this config for a run that starts at grid point ``begin``."""
        return {}

    def _table(self, begin: int = 0):
        """The sampler's table on the grid (from point ``begin``: a run that starts mid-way warms up
        again, as diffusers' lower_order_nums does)."""
        from .kernels import samplers

        if begin not in self._tables:
            g = self._grid
            grid = g if begin == 0 else samplers.Grid(t=g.t[begin:], alpha_bar=g.alpha_bar[begin:])
            self._tables[begin] = samplers.compile(self._sampler_name(), grid, self.prediction, **self._options(begin))
        return self._tables[begin]

    def _reads_past(self, row) -> bool:
        from .kernels import coefficients as KC

        return any(row[KC.COL[c]] != 0.0 for c in _BUFFER_COLUMNS)

    def _scales(self, k: int):
        """(x_scale, y_scale) of row k for a VE scheduler: the pipeline's sample is x/α."""
        ab = self._grid.alpha_bar
        return float(np.sqrt(ab[k])), float(np.sqrt(ab[k + 1]))

    def _program(self, begin: int) -> _Run:
        """The run's position-indexed rows: the full table, or, for a run that starts at ``begin``
        on a row that reads earlier rows, the table of the grid from ``begin`` placed at its positions."""
        from .kernels import coefficients as KC

        full = self._table(0)
        table = full
        if begin > 0 and self._reads_past(full.rows[begin]):
            table = self._table(begin)
        K = full.calls
        rows = np.zeros((K, KC.NUM_COLUMNS), dtype=np.float64)
        slots = np.full((K, 4), -1, dtype=np.int64)
        off = K - table.calls
        rows[off:], slots[off:] = table.rows, table.slots()
        if self._ve:
            for k in range(off, K):
                rows[k] = KC.rescale_row(rows[k], *self._scales(k))
        return _Run(rows, slots, table.depth, table.reads_state or table.writes_state, table.variance)

    # -- noise seeds ---------------------------------------------------------------------

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

    def _backend(self, x) -> str:
        if self.backend not in ("auto", "numpy", "numba", "triton"):
            raise ValueError(f"scheduler.backend must be one of 'auto', 'numpy', 'numba', 'triton'; got {self.backend!r}")
        if self.backend == "auto":
            return "triton" if x.device.type == "cuda" else "numba"
        return self.backend

    # -- one step ------------------------------------------------------------------------

    def _mean_output(self, m, x):
        """The network output the row reads (a variance-channel output keeps its layout only for
        tables that read the channel: learned / learned_range DDPM)."""
        return m

    def _execute(self, k: int, row, slots, run: _Run | None, sample, model_output, generator, variance_noise,
                 stream: int):
        """x′ of ``row`` (float64 [C], in the pipeline's variable) on ``sample`` in one fused update."""
        from .kernels import coefficients as KC

        if not np.all(np.isfinite(row)):
            raise ValueError(f"the step at position {k} has non-finite coefficients (x̂0 needs 1/√ᾱ with ᾱ = "
                             f"{self._grid.alpha_bar[min(k, self._grid.steps - 1)]!r}): with rescale_betas_zero_snr=True "
                             f"the first timestep has ᾱ = 0, where prediction_type={self.prediction!r} cannot give x̂0; "
                             "use prediction_type='v_prediction' (as zero-terminal-SNR models are trained)")
        x_in = sample.detach()
        backend = self._backend(x_in)
        cdt = x_in.dtype
        if x_in.device.type != "cuda" or backend != "triton":
            if cdt not in (torch.float32, torch.float64):
                cdt = torch.float32  # float16 / bfloat16 on the CPU: computed in float32, returned in their dtype
        x = x_in.to(cdt).contiguous()
        m = self._mean_output(model_output.detach(), x).to(device=x.device, dtype=cdt).contiguous()
        B = x.shape[0]
        D = x.numel() // max(B, 1)
        variance = run.variance if run is not None else None
        if variance is None and m.shape != x.shape:
            raise ValueError(f"model_output has shape {tuple(m.shape)} but sample {tuple(x.shape)}; they must agree")
        if variance is not None and m.numel() != 2 * x.numel():
            raise ValueError(f"variance_type={self.config.variance_type!r} needs a model output with twice the sample's "
                             f"channels ([mean, variance]), got {tuple(m.shape)} for a sample of {tuple(x.shape)}")
        x2, m2 = x.reshape(B, D), m.reshape(B, 2 * D if variance else D)
        s, ring = run.buffers(x2) if run is not None else (None, None)
        noisy = row[KC.COL["yz"]] != 0.0
        z = seed = None
        if noisy:
            if variance_noise is not None:
                z = _contiguous(variance_noise, x).reshape(B, D)
            else:
                seed = self._seeds(generator, B)
                if isinstance(seed, list):  # one generator per sample: sample b's noise under its own seed
                    from .ops import randn

                    z = torch.cat([randn((1, D), seed=sb, stream=stream, like=x, dtype=cdt) for sb in seed])
        thr = None
        if self._threshold is not None:  # the per-sample pre-pass: s_b = clamp(quantile(|x̂0_b|, ratio), 1, max)
            ratio, top = self._threshold
            x0 = (float(row[KC.COL["cx"]]) * x2 + float(row[KC.COL["cm"]]) * m2[:, :D]).float()
            thr = torch.quantile(x0.abs(), ratio, dim=1).clamp(min=1.0, max=top).to(cdt)
        clip = None if thr is not None else self.clip
        y2 = torch.empty_like(x2)
        h = [ring[int(slots[j])] for j in (1, 2, 3) if ring is not None and slots[j] >= 0]
        q = ring[int(slots[0])] if ring is not None and slots[0] >= 0 else None
        if backend == "triton" and thr is None:
            self._triton(k, row, slots, run, x2, m2, y2, s, ring, z, seed, clip, variance)
        elif backend == "numba" and x.device.type == "cpu":
            from .kernels.numba.update import update

            flat = lambda t: None if t is None else t.numpy().reshape(-1)  # noqa: E731
            update(flat(x2), flat(m2), row.reshape(1, -1).astype(flat(x2).dtype), np.zeros(1, np.int64),
                   out=flat(y2), clip=clip, s=flat(s), h=tuple(flat(a) for a in h), q=flat(q), noise=flat(z),
                   draw_noise=noisy and z is None, seed=seed if isinstance(seed, int) else 0, stream=stream, offset=0,
                   per_sample=D, variance=variance, threshold=None if thr is None else thr.numpy())
        elif backend in ("numba", "numpy") and x.device.type != "cpu":
            raise ValueError(f"sample is on {x.device}; backend={backend!r} needs CPU tensors")
        else:  # numpy (the reference), or Triton with thresholding: the row in array operators
            self._ops(row, x2, m2, y2, s, h, q, z, seed, stream, clip, thr, variance, backend)
        return y2.reshape(x_in.shape).to(sample.dtype)

    def _ops(self, row, x2, m2, y2, s, h, q, z, seed, stream, clip, thr, variance, backend):
        """The row in array operators: NumPy for backend="numpy", torch ops on the device otherwise."""
        from .kernels import coefficients as KC
        from .ops import randn

        numpy = backend == "numpy"
        B, D = x2.shape
        if row[KC.COL["yz"]] != 0.0 and z is None:
            z = randn((B, D), seed=seed, stream=stream, like=x2, dtype=x2.dtype, backend="numpy" if numpy else "auto")
        arr = (lambda t: None if t is None else t.numpy()) if numpy else (lambda t: t)  # noqa: E731
        xp = np if numpy else torch
        v = None
        m = m2
        if variance is not None:
            m, v = m2[:, :D], m2[:, D:]
            if variance == "sqrt" and z is not None:  # learned: σ = yz·√v
                z, v = z * v.sqrt(), None
        dt = arr(x2).dtype.type if numpy else None
        r = row.astype(arr(x2).dtype) if numpy else torch.as_tensor(row, dtype=x2.dtype, device=x2.device)
        out, s_new, q_new = KC.apply_row(r, arr(x2), arr(m), clip=None if clip is None else (dt(clip) if numpy else clip),
                                         s=arr(s), h=tuple(arr(a) for a in h), z=arr(z), v=arr(v),
                                         threshold=None if thr is None else arr(thr).reshape(B, 1), xp=xp)
        if numpy:
            arr(y2)[...] = out
            if s_new is not None:
                arr(s)[...] = s_new
            if q is not None and q_new is not None:
                arr(q)[...] = q_new
        else:
            y2.copy_(out)
            if s_new is not None:
                s.copy_(s_new)
            if q is not None and q_new is not None:
                q.copy_(q_new)

    def _triton(self, k, row, slots, run, x2, m2, y2, s, ring, z, seed, clip, variance):
        """Row k with the Triton loop kernel: the run's rows on the device (copied once per run),
        ctl = (k, offset 0, seed) so that the in-kernel noise is stream k + 1; in place on a copy of x."""
        from .kernels import coefficients as KC
        from .kernels.triton.update import LoopBuffers, LoopUpdate

        dev = x2.device
        on_table = run is not None and np.array_equal(run.rows[k], row)
        if on_table:
            if run.device_rows is None:
                run.device_rows = torch.as_tensor(run.rows, dtype=torch.float32, device=dev)
                run.device_slots = torch.as_tensor(run.slots, dtype=torch.int64, device=dev)
            coef, sl, idx = run.device_rows, run.device_slots, k
        else:  # a row off the run's table (DDIM at a timestep it does not visit): its noise comes in z
            coef = torch.as_tensor(row.reshape(1, -1), dtype=torch.float32, device=dev)
            sl = torch.as_tensor(np.asarray(slots).reshape(1, 4), dtype=torch.int64, device=dev)
            idx = 0
            if row[KC.COL["yz"]] != 0.0 and z is None:
                from .ops import randn

                z = randn(tuple(x2.shape), seed=seed, stream=k + 1, like=x2, dtype=x2.dtype)
        noisy = row[KC.COL["yz"]] != 0.0
        ctl = torch.tensor([idx, 0, 0 if seed is None or isinstance(seed, list) else seed], dtype=torch.int64).to(dev)
        upd = LoopUpdate(coef, sl, ctl, x2.numel(), x2.shape[1], clip=clip,
                         noise=("given" if z is not None else True) if noisy else False,
                         has_state=s is not None, depth=run.depth if run is not None else 0, variance=variance)
        y2.copy_(x2)
        upd(y2, m2, LoopBuffers(s, ring), noise=z)

    # -- diffusers' interface shared by all ---------------------------------------------

    def scale_model_input(self, sample, timestep=None, *args, **kwargs):
        """The identity (variance-preserving schedulers do not scale the model input)."""
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
        backend = self.backend if self.backend in ("numpy", "numba", "triton") else "auto"
        return q_sample(self.schedule, x0, t, _contiguous(noise, x0), backend=backend)[0]

    def __len__(self):
        return self._T


class _IndexedScheduler(_FusedScheduler):
    """diffusers' step-index bookkeeping (its multistep and Euler-family schedulers): the first step of
    a run finds its position from the timestep (or ``begin_index``), each step then advances by one;
    a run that starts mid-way warms its multistep history up again."""

    _indexed = True
    _duplicates_second = False  # Euler family: a repeated timestep starts at its second occurrence

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        t = float(_timestep_value(timestep))
        if schedule_timesteps is not None:
            cands = [k for k, v in enumerate(np.asarray(schedule_timesteps.cpu()).tolist()) if float(v) == t]
        else:
            cands = self._positions.get(t, [])
        if not cands:
            if self._duplicates_second:
                raise ValueError(f"timestep {t} is not one of this scheduler's timesteps ({self._ts_values[:4]}…); "
                                 "step through self.timesteps")
            return len(self._ts_values) - 1  # diffusers' multistep schedulers: the last step
        return cands[1] if len(cands) > 1 else cands[0]

    def _init_step_index(self, timestep) -> None:
        self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)

    def _indexed_step(self, model_output, timestep, sample, generator=None, variance_noise=None):
        if self.num_inference_steps is None and self._needs_set_timesteps:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        if self._step_index is None:
            self._init_step_index(timestep)
        k = self._step_index
        if k >= len(self._ts_values):
            raise ValueError(f"step called past the last of the {len(self._ts_values)} timesteps of this run; "
                             "call set_timesteps again")
        if self._run is None:
            self._run = self._program(k)
        y = self._execute(k, self._run.rows[k], self._run.slots[k], self._run, sample, model_output, generator,
                          variance_noise, k + 1)
        self._step_index += 1
        return y

    _needs_set_timesteps = True

    def _grid_indices(self, timesteps):
        t = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            return [self.index_for_timestep(v) for v in t]
        if self._step_index is not None:
            return [self._step_index] * t.shape[0]
        return [self._begin_index] * t.shape[0]

    def add_noise(self, original_samples, noise, timesteps):
        """As the diffusers class: the noise level of each timestep's point on this run's grid
        (σ of its Karras/exponential point where those are used): √ᾱ·x0 + √(1−ᾱ)·ε, or x0 + σ·ε
        for the Euler family (whose sample is x/α)."""
        ab = torch.as_tensor(self._grid.alpha_bar[self._grid_indices(timesteps)], dtype=torch.float64)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        x0 = original_samples
        if self._ve:
            sig = torch.sqrt((1 - ab) / ab).to(device=x0.device, dtype=x0.dtype).reshape(shape)
            return x0 + noise.to(x0) * sig
        a = ab.sqrt().to(device=x0.device, dtype=x0.dtype).reshape(shape)
        s = (1 - ab).sqrt().to(device=x0.device, dtype=x0.dtype).reshape(shape)
        return a * x0 + s * noise.to(x0)


# ----------------------------------------------------------------------------------------
# DDPM and DDIM: stateless steps, the position of t in self.timesteps
# ----------------------------------------------------------------------------------------


class FusedDDPMScheduler(_FusedScheduler):
    """diffusers' ``DDPMScheduler`` with each step one fused fastddpm kernel (the generic update of
    the ``ddpm`` sampler's table).

    The same constructor arguments and config as ``DDPMScheduler``, so
    ``FusedDDPMScheduler.from_config(pipe.scheduler.config)`` takes a DDPM pipeline's scheduler
    and ``save_pretrained``/``from_pretrained`` write and read the same scheduler_config.json.
    Supported: every beta schedule but "exp", trained_betas, rescale_betas_zero_snr, every
    variance_type (learned / learned_range read the variance half of a 2×-channel output;
    fixed_large_log is fixed_large — diffusers' takes the square root of a log there and gets NaN),
    clip_sample, thresholding, every timestep_spacing with steps_offset, custom timesteps.
    The step math is fastddpm's (float64 coefficients, float32 data) and equals diffusers' to
    float32 rounding, with one deliberate difference: no noise is added at the final step even
    when its t > 0 (diffusers adds noise whenever t > 0, which with trailing spacing and
    fixed_large adds noise of std √(1−ᾱ_t) to the final sample). ``step`` returns
    ``pred_original_sample=None``: the fused kernel never writes x̂0.
    """ + _NOISE_DOC

    _sampler = "ddpm"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        from .kernels.samplers import ddpm

        if variance_type not in ddpm.VARIANCES:
            raise ValueError(f"diffusers setting variance_type={variance_type!r} is not supported by "
                             f"FusedDDPMScheduler; allowed: {', '.join(ddpm.VARIANCES)}")
        self.variance_type = variance_type
        self._setup()
        self.custom_timesteps = False

    def _options(self, begin):
        return {"variance": self.variance_type}

    def _table(self, begin: int = 0):
        from .kernels.samplers import ddpm

        if 0 not in self._tables:
            ab = self._grid.alpha_bar
            final = np.zeros(self._grid.steps, dtype=bool)
            final[-1] = True
            with np.errstate(divide="ignore", invalid="ignore"):
                rows = ddpm.step_rows(ab[:-1], ab[1:], final, self.prediction, self.variance_type)
            mode = {"learned": "sqrt", "learned_range": "log"}.get(self.variance_type)
            self._tables[0] = _RawTable(rows, mode)
        return self._tables[0]

    def _install(self, public_ts, grid, device=None):
        super()._install(public_ts, grid, device)
        ts = [int(t) for t in np.asarray(public_ts).tolist()]
        self._prev = ts[1:] + [-1]

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        """Timesteps as DDPMScheduler.set_timesteps (the config's timestep_spacing and steps_offset,
        or a custom descending list); a respaced step goes to the next visited timestep."""
        from .sampling.timesteps import timesteps as spaced

        T = self._T
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps takes exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            ts = _custom_timesteps(timesteps, T)
        else:
            ts = spaced(T, _check_steps(num_inference_steps, T), self.config.timestep_spacing, convention="ddim",
                        steps_offset=int(self.config.steps_offset) if self.config.timestep_spacing == "leading" else 0)
        self.custom_timesteps = timesteps is not None
        self.num_inference_steps = len(ts)
        self._install(ts, self._grid_of(ts, final=1.0), device)

    def _position(self, t: int) -> int:
        ks = self._positions.get(float(t))
        if not ks:
            raise ValueError(f"timestep {t} is not one of this scheduler's timesteps "
                             f"({[int(v) for v in self._ts_values[:4]]}…); call set_timesteps first and step "
                             "through self.timesteps")
        return ks[0]

    def previous_timestep(self, timestep):
        return torch.tensor(self._prev[self._position(_as_int_timestep(timestep))])

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        """diffusers' DDPMScheduler._get_variance (float32 tensor): the posterior variance of the
        step from t (fixed_small, fixed_large, their logs, learned, learned_range)."""
        t = _as_int_timestep(t)
        prev = self._prev[self._position(t)]
        ab_t = self._ac[t]
        ab_p = self._ac[prev] if prev >= 0 else 1.0
        beta = 1.0 - ab_t / ab_p
        small = max((1.0 - ab_p) / (1.0 - ab_t) * beta, 1e-20)
        kind = self.config.variance_type if variance_type is None else variance_type
        if kind in ("learned", "learned_range") and predicted_variance is None:
            raise ValueError(f"variance_type={kind!r} needs predicted_variance")
        if kind == "fixed_small_log":
            return torch.tensor(np.exp(0.5 * np.log(small)), dtype=torch.float32)
        if kind == "fixed_large":
            return torch.tensor(beta, dtype=torch.float32)
        if kind == "fixed_large_log":
            return torch.tensor(np.log(beta), dtype=torch.float32)
        if kind == "learned":
            return predicted_variance
        if kind == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * float(np.log(beta)) + (1 - frac) * float(np.log(small))
        return torch.tensor(small, dtype=torch.float32)

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True, *,
             variance_noise=None):
        """x_t → x_prev in one fused kernel. ``variance_noise`` (like sample): the standard normal
        noise of this step instead of fastddpm's Philox noise (diffusers' DDPMScheduler draws it
        with ``randn_tensor``; pass the same tensor to reproduce it). Returns
        DDPMSchedulerOutput(prev_sample, pred_original_sample=None) or (prev_sample, None)."""
        k = self._position(_as_int_timestep(timestep))
        if self._run is None:
            self._run = self._program(0)
        y = self._execute(k, self._run.rows[k], self._run.slots[k], self._run, sample, model_output, generator,
                          variance_noise, k + 1)
        if not return_dict:
            return (y, None)
        return DDPMSchedulerOutput(prev_sample=y, pred_original_sample=None)


class FusedDDIMScheduler(_FusedScheduler):
    """diffusers' ``DDIMScheduler`` with each step one fused fastddpm kernel (the ``ddim`` sampler's rows).

    Same constructor and config as ``DDIMScheduler``; the target of a step is, as there,
    t − num_train_timesteps // num_inference_steps (below 0: ᾱ = 1 with ``set_alpha_to_one=True``,
    ᾱ_0 with False). ε̂ comes from the unclipped x̂0 unless ``use_clipped_model_output=True``
    (then from the clipped or thresholded x̂0, as diffusers). Supported besides: every beta
    schedule but "exp", rescale_betas_zero_snr, clip_sample, thresholding, every
    timestep_spacing with steps_offset, any timestep (also one set_timesteps does not visit).
    ``pred_original_sample`` is None. With eta = 0 no noise is drawn and the generator is never
    touched.
    """ + _NOISE_DOC

    _sampler = "ddim"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        self._setup()
        self.final_alpha_cumprod = torch.tensor(1.0 if set_alpha_to_one else float(self._ac[0]))

    def set_timesteps(self, num_inference_steps, device=None):
        """Timesteps as DDIMScheduler.set_timesteps (the config's timestep_spacing and steps_offset)."""
        from .sampling.timesteps import timesteps as spaced

        T = self._T
        ts = spaced(T, _check_steps(num_inference_steps, T), self.config.timestep_spacing, convention="ddim",
                    steps_offset=int(self.config.steps_offset) if self.config.timestep_spacing == "leading" else 0)
        self.num_inference_steps = int(num_inference_steps)
        self._install(ts, self._grid_of(ts, final=1.0), device)
        self._rows_cache = {}

    def _target(self, t: int) -> float:
        prev = t - self._T // self.num_inference_steps
        return float(self._ac[prev]) if prev >= 0 else (1.0 if self.config.set_alpha_to_one else float(self._ac[0]))

    def _rows(self, ts, eta: float, clipped: bool):
        from .kernels.samplers import ddim

        ts = np.asarray(ts, dtype=np.int64)
        ab_p = np.array([self._target(int(t)) for t in ts])
        with np.errstate(divide="ignore", invalid="ignore"):  # ᾱ = 0 (zero terminal SNR): refused at use
            return ddim.step_rows(self._ac[ts], ab_p, None, self.prediction, ddim.check_eta(eta), bool(clipped))

    def _get_variance(self, timestep, prev_timestep):
        """diffusers' DDIMScheduler._get_variance (float32 tensor): (1−ᾱ_p)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_p)."""
        ab_t = self._ac[int(timestep)]
        ab_p = self._ac[int(prev_timestep)] if prev_timestep >= 0 else float(self.final_alpha_cumprod)
        return torch.tensor((1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p), dtype=torch.float32)

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        """x_t → x_prev in one fused kernel (DDIMScheduler.step's arguments; ``variance_noise``
        is the η > 0 noise, as there). Returns DDIMSchedulerOutput(prev_sample, None) or a tuple."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        t = _as_int_timestep(timestep)
        key = (float(eta), bool(use_clipped_model_output))
        ks = self._positions.get(float(t))
        if ks:  # a visited timestep: row k of the run's table for (eta, use_clipped_model_output)
            k = ks[0]
            if key not in self._rows_cache:
                rows = self._rows(self._grid.t, *key)
                self._rows_cache[key] = _Run(rows, np.full((rows.shape[0], 4), -1, np.int64), 0, False, None)
            run = self._rows_cache[key]
            row = run.rows[k]
        else:  # any other timestep (diffusers allows it): its own row; its noise is the run's call count
            k, run = self._calls, None
            row = self._rows([t], *key)[0]
        self._calls += 1
        y = self._execute(k, row, np.full(4, -1, np.int64), run, sample, model_output, generator, variance_noise,
                          k + 1)
        if not return_dict:
            return (y, None)
        return DDIMSchedulerOutput(prev_sample=y, pred_original_sample=None)


# ----------------------------------------------------------------------------------------
# The multistep solvers: DPM-Solver(++), UniPC
# ----------------------------------------------------------------------------------------


class _MultistepScheduler(_IndexedScheduler):
    """What DPMSolverMultistep and UniPCMultistep share: the spacings of diffusers' DPM-Solver
    convention (steps + 1 points, the last dropped), Karras / exponential / beta / Lu sigmas,
    final_sigmas_type, rescale_betas_zero_snr (ᾱ_{T−1} = 2**-24, as diffusers)."""

    _clamps_zero_snr = True
    _sigma_kinds = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

    def _last_timestep(self) -> int:
        return self._T

    def _plan_timesteps(self, num_inference_steps, timesteps):
        """(public int64 timesteps, Grid) as the diffusers class's set_timesteps."""
        from .sampling.timesteps import sigma_to_t, timesteps as spaced

        cfg, T = self.config, self._T
        kinds = [k for k in self._sigma_kinds + ("use_lu_lambdas",) if cfg.get(k, False)]
        if len(kinds) > 1:
            raise ValueError(f"only one of {', '.join(self._sigma_kinds)} may be set, got {kinds}")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps takes exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            if kinds:
                raise ValueError(f"custom timesteps cannot be combined with {kinds[0]}=True")
            ts = _custom_timesteps(timesteps, T)
            return ts, self._grid_of(ts)
        n = _check_steps(num_inference_steps, T)
        if kinds:
            ac = self._ac
            if kinds[0] == "use_lu_lambdas":  # uniform in λ = −log σ between the schedule's ends
                lam = -np.log(_sigmas_ve(ac))
                sig = np.exp(-np.linspace(lam[-1], lam[0], n))
            else:
                kind = kinds[0][4:].split("_")[0]
                sig = _sigma_schedule(kind, ac, n, cfg.get("sigma_min"), cfg.get("sigma_max"))
            t = sigma_to_t(sig, ac)
            if kinds[0] in ("use_karras_sigmas", "use_lu_lambdas") and cfg.get("beta_schedule") != "squaredcos_cap_v2":
                t = np.round(t)
            ts = t.astype(np.int64)  # diffusers: torch .to(int64) truncates the unrounded ones
            ab = 1.0 / (1.0 + sig * sig)
            # sigma_min: the last point's own σ (diffusers' sigmas[-1], equal to σ(0) up to rounding)
            final = 1.0 if self.config.get("final_sigmas_type", "zero") == "zero" else float(ab[-1])
            return ts, self._grid_of(ts, alpha_bar=ab, final=final)
        last = self._last_timestep()
        spacing = cfg.timestep_spacing
        if spacing == "trailing":
            ts = (np.arange(last, 0, -T / n).round() - 1).astype(np.int64)
        elif spacing in ("leading", "linspace"):
            try:
                ts = spaced(last, n, spacing, convention="dpmsolver",
                            steps_offset=int(cfg.steps_offset) if spacing == "leading" else 0)
            except ValueError as exc:
                raise ValueError(f"num_inference_steps={n} with timestep_spacing={spacing!r} (num_train_timesteps={T}, "
                                 f"steps_offset={cfg.steps_offset}) repeats timesteps: a zero-length step after which "
                                 "diffusers' multistep update divides by zero; use fewer steps or "
                                 f"timestep_spacing='trailing' ({exc})") from None
        else:
            raise ValueError(f"timestep_spacing must be one of 'linspace', 'leading', 'trailing', got {spacing!r}")
        return ts, self._grid_of(ts)

    def _mean_output(self, m, x):
        if self.config.get("variance_type") in ("learned", "learned_range") and m.shape != x.shape:
            if m.ndim < 2 or m.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"variance_type={self.config.variance_type!r}: the model output must have the "
                                 f"sample's channels or twice them ([mean, variance]), got {tuple(m.shape)} for "
                                 f"{tuple(x.shape)}")
            return m[:, :x.shape[1]]  # the mean (diffusers: model_output[:, :3] for 3-channel images)
        return m

    def _set(self, num_inference_steps, timesteps, device):
        ts, grid = self._plan_timesteps(num_inference_steps, timesteps)
        self.num_inference_steps = len(ts)
        self._install(ts, grid, device)

    @property
    def lower_order_nums(self) -> int:
        """Steps taken in this run (diffusers' warm-up counter), capped at the solver order."""
        if self._step_index is None or self._run is None:
            return 0
        start = int(np.argmax(self._run.rows.any(axis=1)))
        return min(self._step_index - start, int(self.config.solver_order))


class FusedDPMSolverMultistepScheduler(_MultistepScheduler):
    """diffusers' ``DPMSolverMultistepScheduler`` with each step one fused kernel: the generic
    update of the dpmpp2m / dpmpp3m / dpmpp2m-sde / dpmpp3m-sde table (the history of x̂0 — or ε̂
    for ``algorithm_type="dpmsolver"`` — kept in a ring the kernel writes in the same pass).

    Same constructor and config as ``DPMSolverMultistepScheduler``. Supported: algorithm_type
    dpmsolver++, sde-dpmsolver++, dpmsolver, sde-dpmsolver (deis is read as dpmsolver++, as
    diffusers does); solver_order 1, 2, 3 (3 with sde-dpmsolver raises: no such method);
    solver_type midpoint, heun; lower_order_final, euler_at_final; final_sigmas_type zero,
    sigma_min; lambda_min_clipped; Karras, exponential, beta and Lu sigmas; thresholding;
    variance_type learned / learned_range (the mean half of the output is used); timestep_spacing
    with steps_offset; custom timesteps; rescale_betas_zero_snr. Not: flow sigmas, dynamic
    shifting, flow_prediction (ValueError naming the setting). As in diffusers, the first step of
    a run is first order, a run that starts mid-schedule warms up again, and the last steps are
    lower order where the config says so. The SDE variants draw noise as described below.
    """ + _NOISE_DOC

    _required = {"use_flow_sigmas": False, "use_dynamic_shifting": False}

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
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        elif algorithm_type not in ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"):
            raise ValueError(f"diffusers setting algorithm_type={algorithm_type!r} is not supported by "
                             "FusedDPMSolverMultistepScheduler; allowed: dpmsolver++, sde-dpmsolver++, dpmsolver, "
                             "sde-dpmsolver")
        if solver_type in ("logrho", "bh1", "bh2"):
            self.register_to_config(solver_type="midpoint")
        elif solver_type not in ("midpoint", "heun"):
            raise ValueError(f"diffusers setting solver_type={solver_type!r} is not supported; allowed: midpoint, heun")
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"diffusers setting solver_order={solver_order!r} is not supported; allowed: 1, 2, 3")
        algo = self.config.algorithm_type
        if algo in ("dpmsolver", "sde-dpmsolver") and final_sigmas_type == "zero":
            raise ValueError(f"final_sigmas_type='zero' is not supported with algorithm_type={algo!r} (it integrates "
                             "the noise prediction, which needs a final sigma > 0); allowed: 'sigma_min'")
        if algo == "sde-dpmsolver" and solver_order == 3:
            raise ValueError("solver_order=3 is not supported with algorithm_type='sde-dpmsolver' (no third-order "
                             "SDE form of the noise-prediction solver); allowed: 1, 2")
        if variance_type not in (None, "learned", "learned_range"):
            raise ValueError(f"diffusers setting variance_type={variance_type!r} is not supported; allowed: None, "
                             "learned, learned_range")
        self._setup()

    def _last_timestep(self) -> int:
        """diffusers' lambda_min_clipped: the timesteps stop where λ falls below it."""
        lam = 0.5 * (np.log(self._ac) - np.log1p(-self._ac))
        clipped = int(np.searchsorted(lam[::-1], self.config.lambda_min_clipped))
        return self._T - clipped

    def _sampler_name(self) -> str:
        algo = self.config.algorithm_type
        return f"dpmpp{max(2, int(self.config.solver_order))}m" + ("-sde" if algo.startswith("sde") else "")

    def _options(self, begin):
        cfg = self.config
        K = self._grid.steps
        return {"solver_type": cfg.solver_type, "euler_at_final": bool(cfg.euler_at_final),
                # diffusers lowers the last orders only for runs of < 15 steps of the whole schedule
                "lower_order_final": bool(cfg.lower_order_final) and K < 15,
                "algorithm": "dpmsolver++" if cfg.algorithm_type.endswith("dpmsolver++") else "dpmsolver",
                "clipped_eps": bool(cfg.thresholding),
                # a drop-in reproduces diffusers, its 3M SDE D2 term included (kernels/samplers/dpmsolver.py)
                **({"d2_coefficient": "diffusers"} if self._sampler_name() == "dpmpp3m-sde" else {})}

    def _table(self, begin: int = 0):
        if int(self.config.solver_order) != 1:
            return super()._table(begin)
        # first order everywhere: each row is the first row of its own one-step grid
        from .kernels import samplers

        if begin not in self._tables:
            g = self._grid
            rows = [samplers.compile(self._sampler_name(), samplers.Grid(g.t[k:k + 1], g.alpha_bar[k:k + 2]),
                                     self.prediction, **self._options(begin)).rows[0] for k in range(begin, g.steps)]
            self._tables[begin] = samplers.Table(t=g.t[begin:], rows=np.array(rows))
        return self._tables[begin]

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):
        """Timesteps as DPMSolverMultistepScheduler.set_timesteps; the table is compiled once."""
        if mu is not None:
            raise ValueError("mu (dynamic shifting) is not supported by FusedDPMSolverMultistepScheduler")
        self._set(num_inference_steps, timesteps, device)

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True):
        """x_t → x′ in one fused kernel; keeps the history for the next step. Returns SchedulerOutput or a tuple."""
        y = self._indexed_step(model_output, timestep, sample, generator, variance_noise)
        if not return_dict:
            return (y,)
        return SchedulerOutput(prev_sample=y)


class FusedUniPCMultistepScheduler(_MultistepScheduler):
    """diffusers' ``UniPCMultistepScheduler`` with each step one fused kernel: the UniC corrector
    of the previous step and the UniP predictor in one pass (the ``unipc`` sampler's table; the
    corrected point kept in the state buffer, the data predictions in the history ring).

    Same constructor and config as ``UniPCMultistepScheduler``. Supported: solver_order 1–3,
    solver_type bh1 / bh2 (midpoint, heun, logrho are read as bh2, as diffusers does),
    lower_order_final, disable_corrector, final_sigmas_type, Karras / exponential / beta sigmas
    (with sigma_min / sigma_max), thresholding, timestep_spacing with steps_offset,
    rescale_betas_zero_snr. Not: predict_x0=False, solver_p, flow sigmas, dynamic shifting,
    custom sigmas (ValueError naming the setting). Deterministic: no noise, no generator.
    """

    _sampler = "unipc"
    _required = {"predict_x0": True, "use_flow_sigmas": False, "use_dynamic_shifting": False, "solver_p": None,
                 "shift_terminal": None}

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0, predict_x0: bool = True,
                 solver_type: str = "bh2", lower_order_final: bool = True, disable_corrector: list = [],  # noqa: B006
                 solver_p=None, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_flow_sigmas: bool = False, flow_shift: float = 1.0,
                 timestep_spacing: str = "linspace", steps_offset: int = 0, final_sigmas_type: str = "zero",
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential", sigma_min=None, sigma_max=None, shift_terminal=None):
        if solver_type in ("midpoint", "heun", "logrho"):
            self.register_to_config(solver_type="bh2")
        elif solver_type not in ("bh1", "bh2"):
            raise ValueError(f"diffusers setting solver_type={solver_type!r} is not supported; allowed: bh1, bh2")
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"diffusers setting solver_order={solver_order!r} is not supported; allowed: 1, 2, 3")
        self._setup()
        self.disable_corrector = list(disable_corrector)
        self.predict_x0 = True
        self.solver_p = None

    def _options(self, begin):
        cfg = self.config
        return {"order": int(cfg.solver_order), "solver_type": cfg.solver_type,
                "lower_order_final": bool(cfg.lower_order_final),
                "disable_corrector": tuple(i - begin for i in cfg.disable_corrector if i >= begin)}

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        """Timesteps as UniPCMultistepScheduler.set_timesteps; the table is compiled once."""
        if sigmas is not None or mu is not None:
            raise ValueError("custom sigmas and mu (dynamic shifting) are not supported by FusedUniPCMultistepScheduler")
        if num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps")
        self._set(num_inference_steps, None, device)

    def step(self, model_output, timestep, sample, return_dict: bool = True, generator=None):
        """Corrector of the last step and predictor of this one in one fused kernel. Returns SchedulerOutput or
        a tuple. ``generator`` is accepted and unused (UniPC is deterministic), so that pipelines that pass
        one — DDPMPipeline does — run it; diffusers' own UniPC.step has no such argument."""
        y = self._indexed_step(model_output, timestep, sample)
        if not return_dict:
            return (y,)
        return SchedulerOutput(prev_sample=y)


# ----------------------------------------------------------------------------------------
# The Euler family: k-diffusion's variable X = x/α
# ----------------------------------------------------------------------------------------


class _EulerFamily(_IndexedScheduler):
    """The pipeline's sample is X = x/α (k-diffusion's variable): ``scale_model_input`` divides
    by √(σ² + 1) = 1/α, and each row is rescaled to read X and write X′ = x′/α′
    (kernels.coefficients.rescale_row) — the kernel is the same."""

    _ve = True
    _duplicates_second = True
    _clamps_zero_snr = True
    _needs_set_timesteps = False

    def _public_default(self, ts):
        return np.linspace(0, self._T - 1, self._T, dtype=float)[::-1].copy()

    def _euler_points(self, n: int):
        """(public float timesteps, network t, σ) of diffusers' Euler set_timesteps for the config's spacing."""
        cfg, T = self.config, self._T
        spacing = cfg.timestep_spacing
        if spacing == "linspace":
            pub = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        elif spacing == "leading":
            pub = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.float32) + cfg.steps_offset
        elif spacing == "trailing":
            pub = (np.arange(T, 0, -T / n)).round().copy().astype(np.float32) - 1
        else:
            raise ValueError(f"timestep_spacing must be one of 'linspace', 'leading', 'trailing', got {spacing!r}")
        if pub.min() < 0 or pub.max() > T - 1:
            raise ValueError(f"timestep_spacing={spacing!r} with {n} steps and steps_offset={cfg.steps_offset} gives "
                             f"timesteps outside [0, {T - 1}]")
        sig = np.interp(pub.astype(np.float64), np.arange(T), _sigmas_ve(self._ac))
        return pub, np.round(pub).astype(np.int64), sig

    def init_noise_sigma_of(self):
        s = float(self.sigmas.max())
        return s if self.config.timestep_spacing in ("linspace", "trailing") else (s * s + 1.0) ** 0.5

    @property
    def init_noise_sigma(self):
        return torch.tensor(self.init_noise_sigma_of(), dtype=torch.float32)

    def scale_model_input(self, sample, timestep=None, *args, **kwargs):
        """sample / √(σ² + 1): the network's input x = α·X (initialises the step index, as diffusers)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / ((sigma ** 2 + 1) ** 0.5)


class FusedEulerAncestralDiscreteScheduler(_EulerFamily):
    """diffusers' ``EulerAncestralDiscreteScheduler`` with each step one fused kernel (the
    ``euler-ancestral`` sampler's table, η = 1, in the pipeline's variable X = x/α).

    Same constructor and config as ``EulerAncestralDiscreteScheduler``: every beta schedule but
    "exp", timestep_spacing with steps_offset, rescale_betas_zero_snr (ᾱ_{T−1} = 2**-24, as
    diffusers). ``prediction_type="sample"`` works here (diffusers raises NotImplementedError).
    ``pred_original_sample`` is None. The network is fed what ``self.timesteps`` holds (diffusers'
    fractional linspace timesteps included); the math uses their interpolated σ.
    """ + _NOISE_DOC

    _sampler = "euler-ancestral"

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        self._setup()
        self.is_scale_input_called = False

    def set_timesteps(self, num_inference_steps, device=None):
        """Timesteps and σ as EulerAncestralDiscreteScheduler.set_timesteps; the table is compiled once."""
        n = _check_steps(num_inference_steps, self._T)
        pub, t, sig = self._euler_points(n)
        self.num_inference_steps = n
        self._install(pub, self._grid_of(t, final=1.0, alpha_bar=1.0 / (1.0 + sig * sig)), device)

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True, *, variance_noise=None):
        """X → X′ in one fused kernel, with the run's Philox noise (or ``variance_noise``).
        Returns EulerAncestralDiscreteSchedulerOutput(prev_sample, None) or a tuple."""
        y = self._indexed_step(model_output, timestep, sample, generator, variance_noise)
        if not return_dict:
            return (y, None)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=y, pred_original_sample=None)
