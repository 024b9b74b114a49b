"""The keywords of one sampling request: their defaults and the checks that need no model.

``fastddpm.sample``, ``SamplingRun``, ``Pipeline.sample`` (and ``OnnxSampler.sample``),
``fastddpm.distributed.sample_distributed`` and ``fastddpm sample`` (its flags' defaults) all
take these keywords; :class:`SamplingOptions` is where they are written down once. The checks
that need the schedule or the model (sampler, steps, spacing, eta, dtype, sample_shape against
the net) stay with the plan and the loop, which see those.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

LOOP_BACKENDS = ("auto", "numpy", "numba", "torch", "triton")
# The sampler of a request that names none, for a model that records none (a distilled student
# records its own): ancestral DDPM over all T steps, diffusers' DDPMPipeline default.
DEFAULT_SAMPLER = "ddpm"

# Default CPU batch: the number of elements (B·D) per batch, one number for both engines.
# `fastddpm bench --sections batch` (default butterfly net: ResMLP, v-prediction; n = 32768,
# ddpm-20; 2-core EPYC, load 1.2-1.6, two runs, 2026-12-03), sample-steps/s at 4096 / 8192 /
# 16384 samples: torch 734k, 742k / 836k, 823k / 935k, 593k; ONNX Runtime 794k, 1.01M /
# 782k, 1.04M / 709k, 1.04M. 8192 samples (2^14 elements) is +12 % over 4096 for torch and even
# for ORT; larger batches stop fitting in L2 and swing by ±30 % between runs.
DEFAULT_CPU_BATCH_ELEMENTS = 2**14
# On a GPU one batch should fill the device: up to 2^26 elements (256 MiB of float32) at a time.
DEFAULT_GPU_BATCH_ELEMENTS = 2**26


def default_batch_size(sample_elements: int, device_type: str) -> int:
    """Samples per batch when batch_size=None: a cache-sized batch on CPU, a device-filling one on CUDA."""
    elements = DEFAULT_GPU_BATCH_ELEMENTS if device_type == "cuda" else DEFAULT_CPU_BATCH_ELEMENTS
    return max(1, elements // sample_elements)


def check_int(value, name: str, low: int = 1) -> int:
    """``value`` as an int >= ``low``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {low}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """Everything of a sampling request but the model, the schedule and n.

    sampler: one of ``fastddpm.SAMPLERS`` (each sampler's own module in fastddpm.kernels.samplers
    documents it; None: the sampler the model records — a distilled student's — else
    :data:`DEFAULT_SAMPLER`); steps: its steps (None: the sampler's default; Heun's N steps are 2N − 1
    network calls); spacing: None (the sampler's default) | "leading" | "trailing" | "linspace" |
    "logsnr" | "karras" | "exponential" | a list of timesteps; final: "zero" | "sigma_min" (None:
    the sampler's default end point);
    eta, variance, order, solver_type: the sampler's own options (None: its default; an option the
    sampler does not take is an error), ``sampler_options`` any other of them as a dict
    (``fastddpm.kernels.samplers.options(name)`` lists a sampler's);
    prediction / clip: the network's output type, x̂0 clipping;
    seed: the noise seed in [0, 2**32);
    labels (a conditional model; fastddpm.labels): None (its "no label" class), an int (every
    sample), an integer array [n] (one per sample), "balanced" or "frequencies" (drawn from (seed,
    sample index)); the in-memory result is then (samples, labels) and a bulk ``out`` gets a
    ``.labels.npy`` sidecar. guidance: the classifier-free guidance scale w (1: conditional only,
    0: unconditional only; m = u + w·(c − u) fused into the update); guidance_rescale: φ in [0, 1]
    (diffusers' rescale_noise_cfg); guidance_interval: None or (t_lo, t_hi), guidance only at the
    calls with t_lo ≤ t ≤ t_hi (the conditional output elsewhere);
    batch_size: samples per batch (None: cache-sized on
    CPU, device-sized on CUDA; the samples do not depend on it); device / backend / dtype /
    cuda_graph: where and how the loop runs; progress: a progress bar; check_finite: stop at a
    NaN/inf model output; sample_shape: one sample's shape (None: ``model.sample_shape``);
    start: the global index of the first sample (a shard of a larger request).

    out: a ``.npy`` path to write (``resume`` continues a killed run, ``overwrite`` replaces a
    file); otherwise the samples come back in memory, with ``return_trajectory`` also a
    Trajectory at ``trajectory_steps``.
    """

    sampler: str | None = None
    steps: int | None = None
    spacing: Any = None
    final: str | None = None
    eta: float | None = None
    variance: str | None = None
    order: int | None = None
    solver_type: str | None = None
    sampler_options: Any = None
    prediction: str = "epsilon"
    clip: float | None = None
    seed: int = 0
    labels: Any = None
    guidance: float = 1.0
    guidance_rescale: float = 0.0
    guidance_interval: Any = None
    batch_size: int | None = None
    device: Any = None
    backend: str = "auto"
    dtype: Any = "float32"
    progress: bool = True
    check_finite: bool = True
    sample_shape: Any = None
    cuda_graph: bool | None = None
    start: int = 0
    out: Any = None
    resume: bool = False
    overwrite: bool = False
    return_trajectory: bool = False
    trajectory_steps: Any = None

    def __post_init__(self):
        if self.sampler is None:
            object.__setattr__(self, "sampler", DEFAULT_SAMPLER)
        if self.backend not in LOOP_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, LOOP_BACKENDS))}; got {self.backend!r}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        object.__setattr__(self, "seed", int(seed))
        from ..labels import check_spec
        from .guidance import check_options

        object.__setattr__(self, "labels", check_spec(self.labels))
        w, phi, interval = check_options(self.guidance, self.guidance_rescale, self.guidance_interval)
        object.__setattr__(self, "guidance", w)
        object.__setattr__(self, "guidance_rescale", phi)
        object.__setattr__(self, "guidance_interval", interval)
        object.__setattr__(self, "start", check_int(self.start, "start", 0))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int(self.batch_size, "batch_size"))
        if self.out is not None and self.return_trajectory:
            raise ValueError("return_trajectory=True cannot be combined with out= (trajectories stay in memory)")
        if self.sampler_options is not None and not isinstance(self.sampler_options, dict):
            raise TypeError(f"sampler_options must be a dict, got {type(self.sampler_options).__name__}")
        if self.out is None and self.resume:
            raise ValueError("resume=True needs out= (a .npy path to continue writing)")

    def sampler_kwargs(self) -> dict:
        """The sampler's own options given (None fields left at the sampler's defaults)."""
        given = {k: getattr(self, k) for k in SAMPLER_OPTION_FIELDS if getattr(self, k) is not None}
        extra = dict(self.sampler_options or {})
        clash = sorted(set(extra) & set(given))
        if clash:
            raise ValueError(f"{', '.join(clash)} given both as keywords and in sampler_options")
        return {**given, **extra}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, kwargs: dict, *, fixed: dict | None = None, defaults: dict | None = None,
                    where: str = "sample") -> "SamplingOptions":
        """Options from keyword arguments, refusing unknown ones (TypeError naming the allowed).

        fixed: ``{name: reason}`` of keywords the caller sets itself (e.g. a checkpoint's
        prediction); passing one is a TypeError with that reason. defaults: the caller's own
        defaults (e.g. a diffusers scheduler's settings, a distilled student's sampler), under the
        given keywords; a keyword given as None (clip aside) keeps such a default, and a recorded
        sampler's run (:data:`RECORDED_RUN`) is dropped whole when another sampler or other steps
        are asked for.
        """
        for key, reason in (fixed or {}).items():
            if key in kwargs:
                raise TypeError(f"{key} {reason}; it cannot be passed to {where}")
        allowed = set(cls.names()) - set(fixed or ())
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"{where}: unexpected keyword argument(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        defaults = dict(defaults or {})
        if defaults:
            from ..kernels import samplers

            # None asks for "the default" of these keywords, so it leaves the model's own in place
            # (clip=None is a choice — no clipping — and overrides a diffusers scheduler's clip).
            kwargs = {k: v for k, v in kwargs.items() if not (v is None and k in defaults and k != "clip")}
            # A recorded sampler (a distilled student's) is one run: its steps, timesteps, end point and
            # eta go with it. Asking for another sampler or other steps drops them all.
            if "sampler" in defaults and any(k in kwargs and kwargs[k] != defaults.get(k) for k in ("sampler", "steps")):
                for key in RECORDED_RUN:
                    defaults.pop(key, None)
            # a default the chosen sampler does not take (a diffusers DDPM dir's variance) is dropped
            sampler = kwargs.get("sampler", defaults.get("sampler")) or DEFAULT_SAMPLER
            if sampler in samplers.NAMES:
                takes = samplers.options(sampler)
                defaults = {k: v for k, v in defaults.items() if k not in SAMPLER_OPTION_FIELDS or k in takes}
        return cls(**{**defaults, **kwargs})

    def replace(self, **changes) -> "SamplingOptions":
        return dataclasses.replace(self, **changes)

    def resolved_shape(self, model) -> tuple[int, ...]:
        """One sample's shape: ``sample_shape``, else the model's ``sample_shape`` attribute."""
        shape = self.sample_shape if self.sample_shape is not None else getattr(model, "sample_shape", None)
        if shape is None:
            raise ValueError("sample_shape is required (the shape of one sample, e.g. (2,) or (1, 28, 28)) "
                             "unless the model has a sample_shape attribute")
        return tuple(check_int(s, "sample_shape entries") for s in (
            (shape,) if isinstance(shape, numbers.Integral) else shape))

    def resolved_batch_size(self, sample_elements: int, n: int, device_type: str) -> int:
        """``batch_size`` (default: :func:`default_batch_size`), at most n."""
        bs = self.batch_size if self.batch_size is not None else default_batch_size(sample_elements, device_type)
        return min(bs, n)

    def loop_kwargs(self) -> dict:
        """The options that shape the loop (all but the output ones)."""
        return {k: getattr(self, k) for k in self.names() if k not in OUTPUT_OPTIONS}


OUTPUT_OPTIONS = ("out", "resume", "overwrite", "return_trajectory", "trajectory_steps")
# The keywords of a sampler a model records as its own (fastddpm.distill's students): they apply
# together or not at all (SamplingOptions.from_kwargs).
RECORDED_RUN = ("sampler", "steps", "spacing", "final", "eta")
# Fields that are the sampler's own options (passed to its table when not None).
SAMPLER_OPTION_FIELDS = ("eta", "variance", "order", "solver_type")

# The default fast sampler: DPM-Solver++(2M) SDE, 20 network calls, its default spacing (logsnr;
# kernels/samplers/dpmsolver.py DEFAULTS). Chosen from the quality-vs-calls table (docs/sampling.md,
# "Quality vs network calls"; bench/quality_vs_calls.py): on the default butterfly model, 10,000
# samples, sample seeds 1/2/3, it has p99 0.097-0.102, p99.9 0.22-0.28 and 0-2 samples beyond 0.5
# data units, where dpmpp2m-20 (the fast default before) had 0.161-0.173, 0.65-0.97 and 19-30 (the
# probability-flow ODE's own stragglers between the lobes, which the SDE's noise corrects), at the
# same 20 calls and a sliced Wasserstein as low (mean 1.20x the data floor over the three seeds
# against 1.32x).
FAST_SAMPLER = ("dpmpp2m-sde", 20)  # (sampler, steps): the demo, `fastddpm bench`, tests/test_quality.py
DEFAULTS = SamplingOptions()
