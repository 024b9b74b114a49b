"""``fastddpm sample CKPT --n N --out FILE``: bulk sampling from a checkpoint to a .npy file."""
from __future__ import annotations

import argparse
import sys
import time

from . import UserError, add_distributed_arguments, check_device, library_default
from ..distributed import init, sample_distributed
from ..pipelines import Pipeline, loader
from ..pipelines.engines import ENGINES
from ..sampling.options import DEFAULT_SAMPLER, DEFAULTS, LOOP_BACKENDS, SamplingOptions
from ..sampling.plan import SAMPLERS
from ..kernels import samplers as _samplers
from ..sampling.timesteps import ALL_SPACINGS


def _spacing(value: str):
    """'leading' | 'trailing' | 'linspace' | 'logsnr' | a comma-separated list of timesteps."""
    if value in ALL_SPACINGS:
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(ALL_SPACINGS)} or a comma-separated list of timesteps, got {value!r}") from None


def _interval(value: str):
    """'T_LO,T_HI' → (T_LO, T_HI)."""
    try:
        lo, hi = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be two timesteps T_LO,T_HI (e.g. 0,600), got {value!r}") from None
    return lo, hi


def _labels_option(args, n: int):
    """--label / --labels as the library's labels= (a FILE is loaded and checked: one integer per sample)."""
    if args.label is not None:
        return args.label
    value = args.labels
    if value is None or value in ("balanced", "frequencies"):
        return value
    from ..data import load_labels

    return load_labels(value, n, what="--labels")


def add_parser(subparsers, parents):
    p = subparsers.add_parser("sample", parents=parents, help="draw samples from a checkpoint into a .npy file",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT",
                   help="checkpoint directory (fastddpm train output), or an ONNX file from fastddpm export")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="output .npy file (data space, float32 [n, ...])")
    # None: the model's recorded sampler, else DEFAULT_SAMPLER (SamplingOptions resolves it)
    p.add_argument("--sampler", choices=SAMPLERS, default=SamplingOptions.__dataclass_fields__["sampler"].default,
                   help=f"sampling method (default: the one the checkpoint records — a distilled student's, "
                        f"fastddpm distill — else {DEFAULT_SAMPLER}): "
                        + "; ".join(f"{n}: {_samplers.description(n)}" for n in SAMPLERS))
    p.add_argument("--steps", type=int, default=DEFAULTS.steps,
                   help="sampler steps (default: the sampler's: " + ", ".join(
                       f"{n} {_samplers.defaults(n)['steps'] or 'T'}" for n in SAMPLERS) + "; a sampler with two "
                        "network calls per step says so in --sampler's list)")
    p.add_argument("--spacing", type=_spacing, default=None,
                   help=" | ".join(ALL_SPACINGS) + " | comma-separated timesteps (default: for a diffusers "
                        "directory its scheduler's timestep_spacing, else the sampler's: " + ", ".join(
                            f"{n} {_samplers.defaults(n)['spacing']}" for n in SAMPLERS) + ")")
    p.add_argument("--final", choices=_samplers.FINALS, default=DEFAULTS.final,
                   help="where the run ends: zero (a clean sample) or sigma_min (the noise level of t = 0; deis' "
                        "default)")
    p.add_argument("--eta", type=float, default=DEFAULTS.eta,
                   help="eta of ddim (default 0: deterministic) and euler-ancestral (default 1)")
    p.add_argument("--variance", default=DEFAULTS.variance,
                   help="ddpm's variance: fixed_small (default), fixed_large, or learned / learned_range for a "
                        "network with a variance channel")
    p.add_argument("--order", type=int, default=DEFAULTS.order, help="order of unipc and deis (default 2; 1-3)")
    p.add_argument("--solver-type", default=DEFAULTS.solver_type,
                   help="dpmpp*: midpoint | heun (default midpoint); unipc: bh1 | bh2 (default bh2)")
    p.add_argument("--clip", type=float, default=None,
                   help="clip the predicted x0 to [-CLIP, CLIP] (default: for a diffusers directory its scheduler's "
                        "clip_sample_range when clip_sample is set, else no clipping)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="noise seed (same seed, same samples)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--label", type=int, default=DEFAULTS.labels,
                        help="a conditional model: this class label for every sample (labels are written to "
                             "OUT.labels.npy beside the samples)")
    labels.add_argument("--labels", default=DEFAULTS.labels, metavar="FILE|balanced|frequencies",
                        help="a conditional model: an integer .npy with one label per sample, or drawn from the seed: "
                             "balanced (every block of K samples holds each class once) or frequencies (the training "
                             "label counts); written to OUT.labels.npy. Neither --label nor --labels: the model's 'no label' class")
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance,
                   help="classifier-free guidance scale w: m = u + w·(c − u), fused into the update (1: conditional "
                        "only, 0: unconditional only; needs --label/--labels)")
    p.add_argument("--guidance-rescale", type=float, default=DEFAULTS.guidance_rescale,
                   help="rescale of the guided output toward the conditional one's std, phi in [0, 1] (diffusers' "
                        "guidance_rescale)")
    p.add_argument("--guidance-interval", type=_interval, default=DEFAULTS.guidance_interval, metavar="T_LO,T_HI",
                   help="guide only the calls with T_LO <= t <= T_HI (the conditional output elsewhere)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help="samples per batch (default: cache-sized on CPU)")
    p.add_argument("--device", default=library_default(Pipeline.load, "device"), help="cpu or cuda[:i]")
    p.add_argument("--backend", choices=LOOP_BACKENDS, default=DEFAULTS.backend,
                   help="update kernels (auto: numba on CPU, the fused Triton kernel on CUDA; triton on the CPU "
                        "only under TRITON_INTERPRET=1)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=DEFAULTS.dtype,
                   help="sample dtype; float16/bfloat16 need the Triton loop (CUDA); bfloat16 is written "
                        "to the .npy as float32 (exactly)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run writing the same --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    add_distributed_arguments(p, sampling=True)
    p.add_argument("--engine", choices=ENGINES, default=library_default(Pipeline.sample, "engine"),
                   help="network runtime for a checkpoint: auto = on the CPU, the fastest of torch and "
                        "onnxruntime as measured once per model, machine and batch (cached; $FASTDDPM_RUNTIME "
                        "overrides; docs/onnx.md), else torch")
    return p


def run(args) -> int:
    from pathlib import Path

    if Path(args.out).is_dir():  # refuse before loading or sampling anything (--overwrite too)
        raise UserError(f"--out {args.out} is a directory; give the path of a .npy file to write")
    onnx = loader.kind(args.checkpoint) == "onnx"  # torch-free: onnxruntime + the fused kernels
    if onnx:
        pipe = _load(args, args.device)
    else:
        check_device(args.device)
    options = dict(sampler=args.sampler, steps=args.steps, final=args.final, eta=args.eta, variance=args.variance,
                   order=args.order, solver_type=args.solver_type, seed=args.seed,
                   batch_size=args.batch_size, backend=args.backend, resume=args.resume,
                   overwrite=args.overwrite, progress=not args.quiet, dtype=args.dtype,
                   labels=_labels_option(args, args.n), guidance=args.guidance,
                   guidance_rescale=args.guidance_rescale, guidance_interval=args.guidance_interval)
    # --spacing/--clip only when given: otherwise the Pipeline's defaults apply (a diffusers
    # directory's scheduler settings, Pipeline.from_diffusers; fastddpm's DEFAULTS elsewhere)
    options.update({k: v for k, v in (("spacing", args.spacing), ("clip", args.clip)) if v is not None})
    if args.distributed:  # under torchrun: every rank writes a shard, rank 0 assembles --out
        with init(args.device, timeout=args.dist_timeout) as ctx:
            if not onnx:
                pipe = _load(args, ctx.device)
            start = time.perf_counter()
            path = sample_distributed(pipe, None, args.n, out=args.out, ctx=ctx, keep_shards=args.keep_shards,
                                      engine=args.engine, **options)
            if args.quiet or not ctx.is_main:
                return 0
    else:
        if not onnx:
            pipe = _load(args, args.device)
            if not args.quiet:  # issue 26: one line naming the network runtime (measured once, then cached)
                _show_runtime(pipe, args, options)
        start = time.perf_counter()
        path = pipe.sample(args.n, out=args.out, engine=args.engine, **options)
    if not args.quiet:
        took = time.perf_counter() - start
        print(f"wrote {args.n} samples to {path} in {took:.1f} s ({args.n / took:,.0f} samples/s)", file=sys.stderr)
        if options["labels"] is not None:
            from ..sampling.bulk import labels_paths

            print(f"wrote their labels to {labels_paths(path)[0]}", file=sys.stderr)
    return 0


def _show_runtime(pipe, args, options) -> None:
    """Choose the runtime before sampling (the choice is kept on the pipeline and its calibration
    on disk, so sample() finds it again) and print it in one line."""
    from ..pipelines.engines import choose

    choose(pipe, args.engine, pipe.options(dict(options)), n=args.n)
    choice = getattr(pipe, "runtime_choice", None)
    print(choice.describe() if choice is not None and args.engine != "torch" else "network runtime: torch",
          file=sys.stderr)


def _load(args, device):
    """A fastddpm checkpoint, an ONNX file or a local diffusers DDPMPipeline directory (the one loader,
    fastddpm.pipelines.loader)."""
    providers = ["CPUExecutionProvider"] if args.device == "cpu" else None
    return Pipeline.load(args.checkpoint, device=device, ema=not args.no_ema, providers=providers)
