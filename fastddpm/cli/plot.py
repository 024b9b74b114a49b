"""``fastddpm plot WHAT``: the figures of fastddpm.plots from the command line (PNG)."""
from __future__ import annotations

import argparse

from . import UserError, library_default
from .. import plots
from ..data import load_dataset
from ..demo import make_data, plot_reverse_from_checkpoint, read_losses
from ..schedule import SCHEDULES, Schedule


def _ts(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,50,999, got {text!r}")


def add_parser(subparsers, parents):
    p = subparsers.add_parser(
        "plot", parents=parents, help="draw schedules, forward/reverse processes, samples, loss",
        description="Draw one of fastddpm's figures as a PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    s = what.add_parser("schedules", parents=parents, formatter_class=fmt,
                        help="β_t, ᾱ_t, √ᾱ and √(1−ᾱ), SNR for linear/cosine/quadratic/sigmoid")
    s.add_argument("--num-steps", type=int, default=library_default(plots.plot_schedules, "num_steps"), help="T")
    s.add_argument("--schedules", default=",".join(SCHEDULES), help="comma-separated names")
    s.add_argument("--out", default="schedules.png", help="PNG to write")

    f = what.add_parser("forward", parents=parents, formatter_class=fmt,
                        help="q(x_t | x_0) at chosen t: histograms (1-D), scatter (2-D), images")
    _data_args(f)
    _schedule_args(f)
    f.add_argument("--t", type=_ts, default="10,25,50,100,200,500,999", metavar="T1,T2,...",
                   help="time steps to show (clipped to T-1)")
    f.add_argument("--seed", type=int, default=library_default(plots.plot_forward, "seed"), help="noise seed")
    f.add_argument("--out", default="forward.png", help="PNG to write")

    c = what.add_parser("forward-path", parents=parents, formatter_class=fmt,
                        help="noise paths of one scalar x_0 (the constant-5.0 example)")
    c.add_argument("--x0", type=float, default=library_default(plots.plot_forward_path_1d, "x0"), help="the scalar x_0")
    c.add_argument("--schedule", choices=SCHEDULES, default="linear", help="noise schedule")
    c.add_argument("--num-steps", type=int, default=50, help="T")
    c.add_argument("--beta-end", type=float, default=0.01, help="last β (linear/quadratic/sigmoid)")
    c.add_argument("--paths", type=int, default=library_default(plots.plot_forward_path_1d, "n_paths"), help="number of noise paths")
    c.add_argument("--seed", type=int, default=library_default(plots.plot_forward_path_1d, "seed"), help="noise seed")
    c.add_argument("--out", default="forward_path.png", help="PNG to write")

    r = what.add_parser("reverse", parents=parents, formatter_class=fmt,
                        help="x_t along a sampling trajectory of a checkpoint (+ 1-D paths)")
    r.add_argument("checkpoint", help="checkpoint directory (fastddpm train --out)")
    r.add_argument("--n", type=int, default=library_default(plot_reverse_from_checkpoint, "n"), help="number of samples")
    r.add_argument("--sampler", default=library_default(plot_reverse_from_checkpoint, "sampler"), help="ddpm | ddim | dpmpp2m")
    r.add_argument("--steps", type=int, default=library_default(plot_reverse_from_checkpoint, "steps"), help="sampling steps (default: T)")
    r.add_argument("--panels", type=int, default=library_default(plot_reverse_from_checkpoint, "panels"), help="number of trajectory panels")
    r.add_argument("--seed", type=int, default=library_default(plot_reverse_from_checkpoint, "seed"), help="sampling seed")
    r.add_argument("--out", default="reverse.png", help="PNG to write")
    r.add_argument("--paths-out", default=None,
                   help="also write per-sample paths here (1-D models; default: reverse_paths.png "
                        "next to --out for 1-D models)")

    m = what.add_parser("samples", parents=parents, formatter_class=fmt,
                        help="generated samples (.npy files) next to data")
    m.add_argument("samples", nargs="+", help=".npy files of samples [N, ...]")
    _data_args(m, required=False)
    m.add_argument("--out", default="samples.png", help="PNG to write")

    lo = what.add_parser("loss", parents=parents, formatter_class=fmt,
                         help="training loss curve of a checkpoint or a losses file")
    lo.add_argument("source", help="checkpoint directory, or a .json/.npy/.csv file of losses")
    lo.add_argument("--out", default="loss.png", help="PNG to write")
    return p


def _data_args(p, required=True):
    g = p.add_argument_group("data" + ("" if required else " (optional)"))
    g.add_argument("--dataset", default="butterfly" if required else None,
                   help="built-in dataset name (see 'fastddpm train --help')")
    g.add_argument("--data", default=None, help=".npy file of data [N, ...] (instead of --dataset)")
    g.add_argument("--n", type=int, default=5000, help="number of data points to draw")
    g.add_argument("--space", choices=("model", "data"), default="model" if required else "data",
                   help="model space (normalised, what the network sees) or data space")


def _schedule_args(p):
    p.add_argument("--schedule", choices=SCHEDULES, default="linear", help="noise schedule")
    p.add_argument("--num-steps", type=int, default=1000, help="T")


def _load_data(args):
    import numpy as np

    if args.data:
        x = np.load(args.data, allow_pickle=False)
        return x[: args.n] if args.n else x
    if args.dataset is None:
        return None
    if args.dataset == "digits":  # a fixed bundled set: take up to --n of it
        ds = load_dataset("digits")
        x = ds.x if args.space == "model" else ds.raw()
        return x[: args.n]
    return make_data(args.dataset, args.n, seed=12345, model_space=args.space == "model")


def _load_npy(path):
    import numpy as np

    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{path} is not a .npy array file ({exc})") from None


def run(args) -> int:
    if args.what == "schedules":
        names = [n.strip() for n in args.schedules.split(",") if n.strip()]
        scheds = {n: Schedule.create(n, args.num_steps) for n in names}
        out = plots.plot_schedules(args.out, schedules=scheds)
    elif args.what == "forward":
        schedule = Schedule.create(args.schedule, args.num_steps)
        x0 = _load_data(args)
        ts = sorted({min(max(t, 0), schedule.num_steps - 1) for t in args.t})
        out = plots.plot_forward(args.out, schedule, x0, ts, seed=args.seed)
    elif args.what == "forward-path":
        kw = {} if args.schedule == "cosine" else {"beta_end": args.beta_end}
        schedule = Schedule.create(args.schedule, args.num_steps, **kw)
        out = plots.plot_forward_path_1d(args.out, schedule, args.x0, n_paths=args.paths,
                                         seed=args.seed)
    elif args.what == "samples":
        import os

        samples = {os.path.basename(p): _load_npy(p) for p in args.samples}
        out = plots.plot_samples(args.out, samples, _load_data(args))
    elif args.what == "reverse":
        outs = plot_reverse_from_checkpoint(
            args.checkpoint, args.out, n=args.n, sampler=args.sampler, steps=args.steps,
            panels=args.panels, seed=args.seed, paths_out=args.paths_out,
            progress=not args.quiet)
        print("\n".join(outs))
        return 0
    elif args.what == "loss":
        out = plots.plot_loss(args.out, read_losses(args.source))
    else:  # pragma: no cover - argparse restricts WHAT
        raise UserError(f"unknown figure {args.what!r}")
    print(out)
    return 0
