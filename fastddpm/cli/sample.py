"""``fastddpm sample CKPT --n N --out FILE``: bulk sampling from a checkpoint to a .npy file."""
from __future__ import annotations

import argparse
import sys
import time

from . import UserError, add_distributed_arguments, check_device, library_default
from ..distributed import init, sample_distributed
from ..pipelines import Pipeline, loader
from ..pipelines.engines import ENGINES
from ..sampling.options import DEFAULTS, LOOP_BACKENDS
from ..sampling.plan import SAMPLERS
from ..sampling.timesteps import SCHEDULE_SPACINGS, SPACINGS


def _spacing(value: str):
    """'leading' | 'trailing' | 'linspace' | 'logsnr' | a comma-separated list of timesteps."""
    if value in SPACINGS + SCHEDULE_SPACINGS:
        return value
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(SPACINGS + SCHEDULE_SPACINGS)} or a comma-separated list of timesteps, got {value!r}") from None


def add_parser(subparsers, parents):
    p = subparsers.add_parser("sample", parents=parents, help="draw samples from a checkpoint into a .npy file",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT",
                   help="checkpoint directory (fastddpm train output), or an ONNX file from fastddpm export")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, help="output .npy file (data space, float32 [n, ...])")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULTS.sampler, help="sampling method")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps,
                   help="sampling steps (default: T for ddpm, 50 for ddim, 20 for dpmpp2m)")
    p.add_argument("--spacing", type=_spacing, default=None,
                   help="leading | trailing | linspace | logsnr | comma-separated timesteps (default: for a "
                        "diffusers directory its scheduler's timestep_spacing, else the sampler's, "
                        "fastddpm.sampling.plan.DEFAULT_SPACING)")
    p.add_argument("--eta", type=float, default=DEFAULTS.eta, help="DDIM eta (0: deterministic)")
    p.add_argument("--clip", type=float, default=None,
                   help="clip the predicted x0 to [-CLIP, CLIP] (default: for a diffusers directory its scheduler's "
                        "clip_sample_range when clip_sample is set, else no clipping)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="noise seed (same seed, same samples)")
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
                   help="network runtime for a checkpoint: auto = onnxruntime on the CPU when installed "
                        "(a cached export; faster, see docs/onnx.md), else torch")
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
    options = dict(sampler=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed,
                   batch_size=args.batch_size, backend=args.backend, resume=args.resume,
                   overwrite=args.overwrite, progress=not args.quiet, dtype=args.dtype)
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
        start = time.perf_counter()
        path = pipe.sample(args.n, out=args.out, engine=args.engine, **options)
    if not args.quiet:
        took = time.perf_counter() - start
        print(f"wrote {args.n} samples to {path} in {took:.1f} s ({args.n / took:,.0f} samples/s)", file=sys.stderr)
    return 0


def _load(args, device):
    """A fastddpm checkpoint, an ONNX file or a local diffusers DDPMPipeline directory (the one loader,
    fastddpm.pipelines.loader)."""
    providers = ["CPUExecutionProvider"] if args.device == "cpu" else None
    return Pipeline.load(args.checkpoint, device=device, ema=not args.no_ema, providers=providers)
