"""``fastddpm train``: train an ε-network on a built-in dataset or a .npy file, write a checkpoint."""
from __future__ import annotations

import argparse
import json

from . import add_distributed_arguments, check_device, library_default
from ..data import DATASETS
from ..distributed import init
from ..schedule import SCHEDULES
from ..training import DATA_MODES, LR_SCHEDULES


def add_parser(subparsers, parents):
    from ..training import DEFAULT_N, DEFAULT_NET, DEFAULT_NUM_STEPS, MODEL_CLASSES, PREDICTIONS, train

    def default(name):  # the library's default for the keyword a flag maps to
        return library_default(train, name)

    nets = ", ".join(f"{cls} for {kind} data" for kind, (cls, _) in DEFAULT_NET.items())
    p = subparsers.add_parser(
        "train", parents=parents, help="train a diffusion model and write a checkpoint directory",
        description=f"Train a network ({nets}: fastddpm.train's defaults) and write a checkpoint "
                    "directory (config.json + safetensors) that `fastddpm sample` and `fastddpm export` read. "
                    "Every default is fastddpm.train's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help=f"one of {', '.join(DATASETS)}, or a path to a .npy array [n, ...]")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write (atomically)")
    p.add_argument("--n", type=int, default=None,
                   help=f"training set size (default: {DEFAULT_N} for synthetic sets, all of digits / the .npy file)")
    p.add_argument("--noise", type=float, default=None, help="noise of the 2-D toy sets (default: per dataset)")
    p.add_argument("--schedule", default=default("schedule"), choices=SCHEDULES, help="noise schedule")
    p.add_argument("--num-steps", type=int, default=default("num_steps"),
                   help=f"diffusion steps T (default: {DEFAULT_NUM_STEPS})")
    p.add_argument("--net", default=default("net"), choices=("auto", *sorted(MODEL_CLASSES)),
                   help=f"network: auto = {nets}")
    p.add_argument("--width", type=int, default=None,
                   help="ResMLP/MLP hidden width / UNet base channels (defaults: fastddpm.training.DEFAULT_NET)")
    p.add_argument("--depth", type=int, default=None,
                   help="ResMLP residual blocks / MLP hidden layers / UNet residual blocks per level")
    p.add_argument("--fourier-features", type=int, default=None,
                   help="ResMLP: Fourier frequencies of x (0: off; default: fastddpm.training.DEFAULT_NET)")
    p.add_argument("--fourier-scale", type=float, default=None,
                   help="ResMLP: highest Fourier frequency, rad per normalised unit (default: DEFAULT_NET)")
    p.add_argument("--activation", default=None,
                   help="ResMLP/MLP activation (relu, silu, gelu, tanh, ...; default: the net's)")
    p.add_argument("--time-embedding", default=None, choices=("sinusoidal", "learned"),
                   help="MLP time embedding (default: the net's)")
    p.add_argument("--iters", type=int, default=default("iters"),
                   help="optimisation steps (default per data kind: fastddpm.training.KIND_DEFAULTS)")
    p.add_argument("--batch-size", type=int, default=default("batch_size"),
                   help="samples per step (default per data kind: fastddpm.training.KIND_DEFAULTS)")
    p.add_argument("--lr", type=float, default=default("lr"),
                   help="Adam learning rate (default per data kind: fastddpm.training.KIND_DEFAULTS)")
    p.add_argument("--lr-schedule", default=default("lr_schedule"), choices=LR_SCHEDULES,
                   help="learning rate after the warm-up: constant, or cosine decay to 0 at --iters "
                        "(default per data kind)")
    p.add_argument("--lr-warmup", type=int, default=default("lr_warmup"),
                   help="iterations of linear learning-rate warm-up (default per data kind)")
    p.add_argument("--data", default=default("data"), choices=DATA_MODES,
                   help="fresh points every batch (analytic datasets; auto picks it for them) or a fixed set")
    p.add_argument("--ema", type=float, default=default("ema"), help="EMA decay (0: no EMA)")
    p.add_argument("--seed", type=int, default=default("seed"), help="seed of data, initialisation, batches and noise")
    p.add_argument("--device", default=default("device"), help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=default("num_threads"),
                   help="CPU threads for torch and Numba (small nets run fastest on one; 0 keeps torch's default)")
    p.add_argument("--prediction", default=default("prediction"), choices=PREDICTIONS,
                   help="what the network predicts (default per data kind: fastddpm.training.KIND_DEFAULTS)")
    p.add_argument("--min-snr-gamma", type=float, default=default("min_snr_gamma"),
                   help="min-SNR-γ loss weighting (e.g. 5)")
    p.add_argument("--grad-clip", type=float, default=default("grad_clip"), help="gradient-norm clip (0: off)")
    p.add_argument("--checkpoint-every", type=int, default=default("checkpoint_every"), metavar="ITERS",
                   help="also save to --out every so many iterations")
    p.add_argument("--learn-sigma", action="store_true", default=default("learn_sigma"),
                   help="learned variances (Nichol & Dhariwal 2021): ResMLP/UNet output the variance "
                        "interpolation too, trained with L_simple + 0.001·L_vlb; sampled with the ddpm "
                        "sampler's learned_range variance by default")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out up to --iters iterations (same settings)")
    p.add_argument("--conditional", action="store_true", default=default("conditional"),
                   help="train a class-conditional model on the dataset's labels (digits, 8gaussians, moons, "
                        "checkerboard, or a .npy with --labels): label embedding + a 'no label' class, for sampling "
                        "with --label/--labels and --guidance")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="labels of a .npy --dataset: an integer .npy with one class label per row (needs --conditional)")
    p.add_argument("--label-dropout", type=float, default=default("label_dropout"),
                   help="share of training labels replaced by 'no label' (classifier-free guidance)")
    add_distributed_arguments(p)
    return p


def run(args) -> int:
    from ..training import net_class, train, training_data

    check_device(args.device)
    if args.labels is not None and not args.conditional:
        raise ValueError("--labels FILE needs --conditional (train a conditional model on those labels)")
    dataset = training_data(args.dataset, args.n, seed=args.seed, noise=args.noise, labels=args.labels)
    net = net_class(args.net, dataset.sample_shape)  # "auto": the library's default for this data kind
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
            dataset, args.out, net=args.net, net_kwargs=net_kwargs, schedule=args.schedule,
            num_steps=args.num_steps, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
            lr_schedule=args.lr_schedule, lr_warmup=args.lr_warmup, data=args.data,
            ema=args.ema or None, seed=args.seed, device=ctx.device if ctx else args.device,
            prediction=args.prediction, min_snr_gamma=args.min_snr_gamma,
            grad_clip=args.grad_clip or None, checkpoint_every=args.checkpoint_every, resume=args.resume,
            num_threads=args.threads or None, progress=not args.quiet, distributed=ctx or False,
            learn_sigma=args.learn_sigma,
            conditional=args.conditional, label_dropout=args.label_dropout,
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
