"""``fastddpm bench``: fastddpm vs diffusers vs a plain torch loop, side by side in one process.

The measurements live in :mod:`fastddpm.benchmark`; this command runs them, prints the table
with the machine named, and optionally writes the rows as CSV and/or JSON (atomically).
"""
from __future__ import annotations

import argparse


def add_parser(subparsers, parents):
    p = subparsers.add_parser(
        "bench", parents=parents, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="throughput: fastddpm vs diffusers vs a plain torch loop (kernels and sampling loops)",
        description="Run the side-by-side throughput comparison of fastddpm.benchmark (fused kernels "
                    "and whole sampling loops: fastddpm, diffusers' schedulers and a plain torch loop "
                    "on the same network, in one process) and print the table. Timings on a loaded "
                    "machine are noisy; compare ratios from one run.")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (about a minute)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write the rows as CSV")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows and machine as JSON")
    return p


def run(args) -> int:
    from .. import benchmark
    from . import UserError, progress, say

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA device here; use --device cpu "
                            "(or install the CUDA build of torch on a GPU machine)")
    say(args, f"benchmarking on {benchmark.machine(args.device)}"
              f"{' (quick)' if args.quick else ''}; this takes "
              f"{'about a minute' if args.quick else 'several minutes'}")
    rows = benchmark.run(quick=args.quick, device=args.device, progress=progress(args))
    print(benchmark.format_table(rows, device=args.device))
    if args.csv:
        benchmark.write_csv(rows, args.csv)
        say(args, f"wrote {args.csv}")
    if args.json:
        benchmark.write_json(rows, args.json, device=args.device)
        say(args, f"wrote {args.json}")
    return 0
