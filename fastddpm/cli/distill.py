"""``fastddpm distill CKPT --steps K --out DIR``: a student that samples in K network calls."""
from __future__ import annotations

import argparse
import json

from . import add_distributed_arguments, check_device, library_default


def add_parser(subparsers, parents):
    from ..distillation import METHODS, METHOD_DEFAULTS, distill

    def default(name):  # the library's default for the keyword a flag maps to
        return library_default(distill, name)

    per_method = "; ".join(f"{m} {kind}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                           for (m, kind), d in METHOD_DEFAULTS.items())
    p = subparsers.add_parser(
        "distill", parents=parents, help="distil a checkpoint into a 1–4-step student (a checkpoint directory)",
        description="Train a student that samples in --steps network calls against targets the teacher CKPT "
                    "produces through fastddpm's fused samplers (progressive distillation, Salimans & Ho 2022; "
                    "consistency distillation, Song et al. 2023). The student is an ordinary checkpoint whose "
                    "config.json records how it samples: `fastddpm sample OUT`, `fastddpm export OUT` and "
                    "Pipeline use it with no extra flags. Every default is fastddpm.distill's; per method and "
                    f"data kind (fastddpm.distillation.METHOD_DEFAULTS): {per_method}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the teacher: a fastddpm checkpoint directory (fastddpm train)")
    p.add_argument("--out", required=True, metavar="DIR", help="student checkpoint directory to write (atomically)")
    p.add_argument("--steps", type=int, default=default("steps"), help="network calls of the student's sampler")
    p.add_argument("--method", choices=METHODS, default=default("method"), help="distillation method")
    p.add_argument("--teacher-steps", type=int, default=default("teacher_steps"),
                   help="progressive: DDIM steps of the first teacher (steps·2^R, R halving rounds); "
                        "consistency-bootstrap: points of its grid; not for consistency, whose teacher solves the ODE "
                        "to the end (default per method and data kind)")
    p.add_argument("--iters", type=int, default=default("iters"),
                   help="iterations per round (progressive) or in all (consistency) (default per method)")
    p.add_argument("--batch-size", type=int, default=default("batch_size"), help="samples per iteration")
    p.add_argument("--lr", type=float, default=default("lr"),
                   help="Adam learning rate, decayed linearly to 0 over each round (default per method)")
    p.add_argument("--ema", default=default("ema"),
                   help="EMA decay of the student's weights ('auto': per method; 0 or none: no EMA)")
    p.add_argument("--target-ema", type=float, default=default("target_ema"),
                   help="consistency-bootstrap: decay μ of the target network (default per data kind)")
    p.add_argument("--dataset", default=default("dataset"), metavar="NAME",
                   help="x0 to distil on: a dataset name or .npy (default: the teacher's training data)")
    p.add_argument("--data", default=default("data"), choices=("auto", "fresh", "fixed"),
                   help="fresh points every batch (analytic datasets; auto picks it for them) or a fixed set")
    p.add_argument("--seed", type=int, default=default("seed"), help="seed of batches, step indices and noise")
    p.add_argument("--device", default=default("device"), help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=default("num_threads"),
                   help="CPU threads for torch and Numba (0 keeps torch's default)")
    p.add_argument("--grad-clip", type=float, default=default("grad_clip"), help="gradient-norm clip (0: off)")
    p.add_argument("--checkpoint-every", type=int, default=default("checkpoint_every"), metavar="ITERS",
                   help="also save to --out every so many iterations (resumable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the distillation saved in --out (same settings)")
    add_distributed_arguments(p)
    return p


def _ema(value):
    if value in (None, "auto"):
        return value
    if str(value).lower() in ("none", "0", "0.0", "off"):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--ema must be 'auto', 'none' or a decay in [0, 1), got {value!r}") from None


def run(args) -> int:
    from ..distillation import distill
    from ..distributed import init

    check_device(args.device)
    ctx = None
    if args.distributed:  # under torchrun: DDP, every rank takes its rows of each batch; rank 0 saves
        ctx = init(args.device, timeout=args.dist_timeout)
    try:
        result = distill(
            args.checkpoint, args.out, steps=args.steps, method=args.method, teacher_steps=args.teacher_steps,
            iters=args.iters, batch_size=args.batch_size, lr=args.lr, ema=_ema(args.ema),
            target_ema=args.target_ema, dataset=args.dataset, data=args.data, seed=args.seed,
            device=ctx.device if ctx else args.device, grad_clip=args.grad_clip or None,
            checkpoint_every=args.checkpoint_every, resume=args.resume, num_threads=args.threads or None,
            progress=not args.quiet, distributed=ctx or False)
    finally:
        if ctx is not None:
            ctx.close()
    if ctx is not None and not ctx.is_main:
        return 0
    if not args.quiet:
        tail = result.losses[-min(len(result.losses), 200):]
        print(json.dumps({"checkpoint": str(result.checkpoint), "sampling": result.sampling,
                          "iters": len(result.losses), "final_loss": sum(tail) / len(tail),
                          "seconds": round(result.seconds, 1)}))
    return 0
