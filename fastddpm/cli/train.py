"""``fastddpm train``: train an ε-network on a built-in dataset or a .npy file, write a checkpoint."""
from __future__ import annotations

import argparse
import json

from . import add_distributed_arguments, check_device
from ..data import DATASETS, load_dataset
from ..distributed import init
from ..schedule import SCHEDULES


def add_parser(subparsers, parents):
    from ..training import DEFAULTS

    p = subparsers.add_parser(
        "train", parents=parents, help="train a diffusion model and write a checkpoint directory",
        description="Train an ε-network (MLP for vector data, U-Net for images) and write a checkpoint "
                    "directory (config.json + safetensors) that `fastddpm sample` and `fastddpm export` read.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help=f"one of {', '.join(DATASETS)}, or a path to a .npy array [n, ...]")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write (atomically)")
    p.add_argument("--n", type=int, default=None,
                   help="training set size (default: 10000 for synthetic sets, all of digits / the .npy file)")
    p.add_argument("--noise", type=float, default=None, help="noise of the 2-D toy sets (default: per dataset)")
    p.add_argument("--schedule", default="linear", choices=SCHEDULES, help="noise schedule")
    p.add_argument("--num-steps", type=int, default=1000, help="diffusion steps T")
    p.add_argument("--net", default="auto", choices=("auto", "ResMLP", "MLP", "UNet"),
                   help="network: auto = MLP for vector data, UNet for images")
    p.add_argument("--width", type=int, default=None,
                   help="ResMLP/MLP hidden width / UNet base channels (defaults: fastddpm.training.DEFAULT_NET)")
    p.add_argument("--depth", type=int, default=None,
                   help="ResMLP residual blocks / MLP hidden layers / UNet residual blocks per level")
    p.add_argument("--fourier-features", type=int, default=None,
                   help="ResMLP: Fourier frequencies of x (0: off; default 16)")
    p.add_argument("--fourier-scale", type=float, default=None,
                   help="ResMLP: highest Fourier frequency, rad per normalised unit (default 25)")
    p.add_argument("--activation", default=None,
                   help="ResMLP/MLP activation (relu, silu, gelu, tanh, ...; default silu)")
    p.add_argument("--time-embedding", default=None, choices=("sinusoidal", "learned"),
                   help="MLP time embedding (default sinusoidal)")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps (default per data kind: fastddpm.training.KIND_DEFAULTS)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per step (default per data kind: fastddpm.training.KIND_DEFAULTS)")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default per data kind: fastddpm.training.KIND_DEFAULTS)")
    p.add_argument("--lr-schedule", default=None, choices=("constant", "cosine"),
                   help="learning rate after the warm-up: constant, or cosine decay to 0 at --iters "
                        "(default per data kind)")
    p.add_argument("--lr-warmup", type=int, default=None,
                   help="iterations of linear learning-rate warm-up (default per data kind)")
    p.add_argument("--data", default="auto", choices=("auto", "fresh", "fixed"),
                   help="fresh points every batch (analytic datasets; auto picks it for them) or a fixed set")
    p.add_argument("--ema", type=float, default=DEFAULTS["ema"], help="EMA decay (0: no EMA)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation, batches and noise")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch and Numba (small nets run fastest on one; 0 keeps torch's default)")
    p.add_argument("--prediction", default=None, choices=("epsilon", "sample", "v_prediction"),
                   help="what the network predicts (default per data kind: v_prediction for vectors, "
                        "epsilon for images)")
    p.add_argument("--min-snr-gamma", type=float, default=None, help="min-SNR-γ loss weighting (e.g. 5)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="ITERS",
                   help="also save to --out every so many iterations")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out up to --iters iterations (same settings)")
    add_distributed_arguments(p)
    return p


def run(args) -> int:
    from ..training import train

    check_device(args.device)
    name = args.dataset
    n = args.n
    if n is None and name != "digits" and not name.endswith(".npy"):
        from ..training import DEFAULT_N

        n = DEFAULT_N
    dataset = load_dataset(name, n, seed=args.seed, noise=args.noise)
    net = args.net
    if net == "auto":
        net = "MLP" if len(dataset.sample_shape) == 1 else "UNet"
    net_kwargs = {}
    fourier = (("fourier_features", args.fourier_features), ("fourier_scale", args.fourier_scale))
    if net != "ResMLP" and any(v is not None for _, v in fourier):
        raise ValueError("--fourier-features and --fourier-scale apply to --net ResMLP only")
    if net != "MLP" and args.time_embedding is not None:
        raise ValueError("--time-embedding applies to --net MLP only")
    if net in ("MLP", "ResMLP"):
        for key, value in (("width", args.width), ("depth", args.depth), ("activation", args.activation),
                           ("time_embedding", args.time_embedding), *fourier):
            if value is not None:
                net_kwargs[key] = value
    else:
        if args.activation is not None:
            raise ValueError("--activation applies to --net ResMLP and MLP only")
        if args.width is not None:
            net_kwargs["base_channels"] = args.width
        if args.depth is not None:
            net_kwargs["num_res_blocks"] = args.depth
    ctx = None
    if args.distributed:  # under torchrun: DDP, every rank takes its rows of each batch; rank 0 saves
        ctx = init(args.device, timeout=args.dist_timeout)
    try:
        result = train(
            dataset, args.out, net=net, net_kwargs=net_kwargs, schedule=args.schedule, num_steps=args.num_steps,
            iters=args.iters, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
            lr_warmup=args.lr_warmup, data=args.data,
            ema=args.ema or None, seed=args.seed, device=ctx.device if ctx else args.device,
            prediction=args.prediction, min_snr_gamma=args.min_snr_gamma,
            grad_clip=args.grad_clip or None, checkpoint_every=args.checkpoint_every, resume=args.resume,
            num_threads=args.threads or None, progress=not args.quiet, distributed=ctx or False,
        )
    finally:
        if ctx is not None:
            ctx.close()
    if ctx is not None and not ctx.is_main:
        return 0
    if not args.quiet:
        tail = result.losses[-min(len(result.losses), 200):]
        print(json.dumps({"checkpoint": str(result.checkpoint), "iters": len(result.losses),
                          "final_loss": sum(tail) / len(tail), "seconds": round(result.seconds, 1),
                          "samples_per_s": round(result.samples_per_s, 1)}))
    return 0
