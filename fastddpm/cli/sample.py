"""``fastddpm sample CKPT --n N --out FILE``: bulk sampling from a checkpoint to a .npy file."""
from __future__ import annotations

import argparse
import sys
import time

from ..distributed import add_distributed_arguments
from ..sampling.loop import LOOP_BACKENDS
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
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm", help="sampling method")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: T for ddpm, 50 for ddim, 20 for dpmpp2m)")
    p.add_argument("--spacing", type=_spacing, default="leading",
                   help="leading | trailing | linspace | logsnr | comma-separated timesteps")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--clip", type=float, default=None, help="clip the predicted x0 to [-CLIP, CLIP]")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same samples)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per batch (default: cache-sized on CPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--backend", choices=LOOP_BACKENDS, default="auto",
                   help="update kernels (auto: numba on CPU, the fused Triton kernel on CUDA; triton on the CPU "
                        "only under TRITON_INTERPRET=1)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="sample dtype; float16/bfloat16 need the Triton loop (CUDA); bfloat16 is written "
                        "to the .npy as float32 (exactly)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run writing the same --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    add_distributed_arguments(p, sampling=True)
    p.add_argument("--engine", choices=("auto", "torch", "onnx"), default="auto",
                   help="network runtime for a checkpoint: auto = onnxruntime on the CPU when installed "
                        "(a cached export; faster, see docs/onnx.md), else torch")
    return p


def run(args) -> int:
    from pathlib import Path

    from . import UserError, check_device

    if Path(args.out).is_dir():  # refuse before loading or sampling anything (--overwrite too)
        raise UserError(f"--out {args.out} is a directory; give the path of a .npy file to write")
    kwargs = {}
    if str(args.checkpoint).endswith(".onnx"):  # torch-free: onnxruntime + the fused kernels
        from ..runtime import OnnxSampler

        providers = ["CPUExecutionProvider"] if args.device == "cpu" else None
        pipe = OnnxSampler(args.checkpoint, providers=providers)
    else:
        check_device(args.device)
        from .. import checkpoint as ckpt_mod
        from ..sampling.pipeline import Pipeline

        kwargs["engine"] = args.engine
    if args.distributed:  # under torchrun: every rank writes a shard, rank 0 assembles --out
        from ..distributed import init, sample_distributed

        with init(args.device, timeout=args.dist_timeout) as ctx:
            if "engine" in kwargs:
                pipe = _load(Pipeline, ckpt_mod, args, ctx.device)
            start = time.perf_counter()
            path = sample_distributed(
                pipe, None, args.n, sampler=args.sampler, steps=args.steps, spacing=args.spacing, eta=args.eta,
                clip=args.clip, seed=args.seed, batch_size=args.batch_size, backend=args.backend, out=args.out,
                resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, ctx=ctx,
                keep_shards=args.keep_shards, dtype=args.dtype, **kwargs)
            if args.quiet or not ctx.is_main:
                return 0
    else:
        if "engine" in kwargs:
            pipe = _load(Pipeline, ckpt_mod, args, args.device)
        start = time.perf_counter()
        path = pipe.sample(args.n, sampler=args.sampler, steps=args.steps, spacing=args.spacing, eta=args.eta,
                           clip=args.clip, seed=args.seed, batch_size=args.batch_size, backend=args.backend,
                           out=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                           dtype=args.dtype, **kwargs)
    if not args.quiet:
        took = time.perf_counter() - start
        print(f"wrote {args.n} samples to {path} in {took:.1f} s ({args.n / took:,.0f} samples/s)", file=sys.stderr)
    return 0


def _load(Pipeline, ckpt_mod, args, device):
    """A fastddpm checkpoint, or a local diffusers DDPMPipeline directory (has model_index.json)."""
    import os

    if os.path.isfile(os.path.join(str(args.checkpoint), "model_index.json")):
        pipe = Pipeline.from_diffusers(args.checkpoint, device=device)
        if args.clip is None:  # no --clip: the scheduler's clip_sample setting
            args.clip = pipe.sampling_defaults["clip"]
        return pipe
    return Pipeline(ckpt_mod.load(args.checkpoint, device=device, ema=not args.no_ema))
