"""``fastddpm bench``: fastddpm vs diffusers vs a plain torch loop, side by side in one process.

The measurements live in :mod:`fastddpm.benchmark` (also run by ``bench/throughput.py``); this
command runs them, prints the tables headed by the machine, and optionally writes the rows as
CSV and/or JSON (atomically).
"""
from __future__ import annotations

import argparse
from . import UserError, library_default, say
from .. import benchmark

DEFAULT_SECTIONS = "throughput,tiny,quality,kernel,memory"


def add_parser(subparsers, parents):
    p = subparsers.add_parser(
        "bench", parents=parents, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="throughput: fastddpm vs diffusers vs a plain torch loop (kernels and sampling loops)",
        description="Run the side-by-side comparison of fastddpm.benchmark — whole sampling loops "
                    "(fastddpm.sample, a diffusers DDPMScheduler loop, a plain torch loop, same "
                    "network, one process) and the fused step kernel — and print the tables with "
                    "the machine named. On a loaded machine timings are noisy: read the ratios.")
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 cores)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=library_default(benchmark.run, "device"), help="where to run")
    p.add_argument("--sections", default=DEFAULT_SECTIONS,
                   help="comma-separated, from throughput,tiny,quality,kernel,memory,batch")
    p.add_argument("--checkpoint", default=None,
                   help="trained checkpoint (needed for the quality section; default model otherwise)")
    p.add_argument("--net", choices=benchmark.NETS, default=library_default(benchmark.run, "net"),
                   help="the default model without --checkpoint: ResMLP (the training default, v-prediction) "
                        "or MLP (the earlier default, ε-prediction); random weights")
    p.add_argument("--n", type=int, default=None, help="samples for the throughput section (default 100000)")
    p.add_argument("--steps", type=int, default=library_default(benchmark.run, "steps"), help="ddpm steps for throughput and tiny")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the sampler's)")
    p.add_argument("--dataset", default=library_default(benchmark.run, "dataset"), help="dataset for the quality section")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write the rows as CSV")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows and machine as JSON")
    return p


def run(args) -> int:
    import sys

    for flag, path, ext in (("--csv", args.csv, ".csv"), ("--json", args.json, ".json")):
        if path is not None and not path.endswith(ext):
            raise UserError(f"{flag} {path!r}: the file name must end in {ext}")
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(sections) - set(benchmark.SECTIONS)
    if unknown:
        raise UserError(f"--sections: unknown {', '.join(sorted(unknown))}; allowed: {', '.join(benchmark.SECTIONS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA device here; use --device cpu "
                            "(or install the CUDA build of torch on a GPU machine)")
    info = benchmark.machine()
    say(args, f"benchmarking {', '.join(sections)} on {info.get('cpu')} ({info.get('cores')} cores, "
              f"GPU: {info.get('gpu') or 'none'}){' — quick sizes' if args.quick else ''}")
    rows = benchmark.run(sections, quick=args.quick, checkpoint=args.checkpoint, n=args.n, steps=args.steps,
                         batch_size=args.batch_size, device=args.device, dataset=args.dataset, net=args.net,
                         log=None if args.quiet else sys.stderr)
    print(benchmark.format_rows(rows, info))
    for path in (args.csv, args.json):
        if path:
            benchmark.write_rows(rows, info, path)
            say(args, f"wrote {path}")
    return 0
