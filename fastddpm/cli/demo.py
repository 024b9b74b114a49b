"""``fastddpm demo``: train, sample, evaluate, draw and report in one go (no arguments needed)."""
from __future__ import annotations

import argparse

from . import check_device, library_default, progress, say
from ..data import DATASETS
from ..demo import run_demo


def add_parser(subparsers, parents):
    p = subparsers.add_parser(
        "demo", parents=parents, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="train the default model, sample, evaluate, draw the figures, write report.md",
        description="Train the default model on a toy dataset, draw 10,000 samples with "
                    "ddpm-1000 and the fast sampler (dpmpp2m-sde-20), evaluate both against fresh data, train the 1-D "
                    "constant-5.0 example, and write the figures and report.md.")
    p.add_argument("--dataset", default=library_default(run_demo, "dataset"), choices=[d for d in DATASETS if d != "digits"],
                   help="toy dataset to train on")
    p.add_argument("--out", default=library_default(run_demo, "out"), help="output folder")
    p.add_argument("--budget", default=library_default(run_demo, "budget"), choices=("full", "ci"),
                   help="full: the default model (< 3 min on 2 CPU cores); ci: a quick, rough run")
    p.add_argument("--seed", type=int, default=library_default(run_demo, "seed"), help="seed for training, sampling and data")
    p.add_argument("--device", default=library_default(run_demo, "device"), help="torch device for training and sampling")
    p.add_argument("--distill", action="store_true", default=library_default(run_demo, "distill"),
                   help="also distil the model into a 4-step student (fastddpm distill) and show it at 4 and 2 steps; "
                        "adds ~5 minutes on 2 cores (past the 3-minute budget; docs/training.md, \"Distillation\")")
    return p


def run(args) -> int:
    import time

    check_device(args.device)
    tic = time.perf_counter()
    res = run_demo(args.dataset, args.out, args.budget, seed=args.seed, device=args.device,
                   progress=progress(args), log=lambda msg: say(args, msg), distill=args.distill)
    say(args, "")
    say(args, f"  {'sampler':12s} {'sliced W':>9s} {'floor':>7s} {'ratio':>6s} {'p50':>7s} {'p90':>7s}"
              "  (sliced Wasserstein to fresh data; floor = data vs data; p50/p90 distance to the support)")
    for name, v in res.metrics.items():
        say(args, f"  {name:12s} {v['sliced_wasserstein']:9.4f} {v['sw_baseline']:7.4f} {v['sw_ratio']:6.2f} "
                  f"{v.get('support_p50', float('nan')):7.4f} {v.get('support_p90', float('nan')):7.4f}")
    c = res.constant
    say(args, f"  constant-5.0 model: sample mean {c['mean']:.4f}, std {c['std']:.4f}")
    say(args, f"\ndone in {time.perf_counter() - tic:.0f} s. Everything is in {res.out}/:")
    say(args, f"  report      {res.report}")
    say(args, f"  checkpoint  {res.checkpoint}")
    for name, path in res.samples.items():
        say(args, f"  samples     {path}  ({name})")
    for name, path in res.figures.items():
        say(args, f"  figure      {path}")
    print(res.report)
    return 0
