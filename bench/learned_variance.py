"""Learned against fixed variances (issue 24, Nichol & Dhariwal 2021) on the butterfly or digits, one process.

    python bench/learned_variance.py --fixed CKPT [--learned CKPT] [--workdir DIR] [--n 20000] [--json F]
    python bench/learned_variance.py --dataset digits --fixed CKPT --n 2000 --steps 50,100

(digits: the default digits model, scored by ``fastddpm.metrics.digit_scores``: confident share,
class balance, Fréchet distance.)

``--fixed``: the default butterfly model (fixed variances, ``fastddpm train --dataset butterfly``);
``--learned``: the same recipe with ``learn_sigma=True`` (trained into WORKDIR/learned when not
given: fastddpm.train's defaults, seed 0, one thread; its wall and CPU seconds reported). Each
model samples ``--n`` points (seed 1) with ddpm at 50, 100 and 1000 steps: the fixed model with
the ddpm sampler's default variance, the learned one with its recorded ``learned_range`` and with
``fixed_small``; scored by distance to the curve (p50 … p99.9, share beyond 0.5) and sliced
Wasserstein over the data-vs-data floor (fastddpm.metrics). Every row carries the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.distill_bench import butterfly_scores, load  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="butterfly", choices=("butterfly", "digits"))
    p.add_argument("--fixed", required=True)
    p.add_argument("--learned", default=None)
    p.add_argument("--workdir", default="/tmp/learned-variance")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--steps", default="50,100,1000")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import fastddpm

    rows = []
    learned = args.learned
    if learned is None:
        learned = os.path.join(args.workdir, "learned")
        if not os.path.isdir(learned):
            l0, w0, c0 = load(), time.perf_counter(), time.process_time()
            fastddpm.train(args.dataset, learned, learn_sigma=True, progress=False, num_threads=1)
            rows.append({"path": "train learned (learn_sigma, defaults)", "wall_s": time.perf_counter() - w0,
                         "cpu_s": time.process_time() - c0, "load_start": l0, "load_end": load()})
            print(rows[-1], file=sys.stderr, flush=True)
    if args.dataset == "digits":
        from fastddpm.metrics import digit_scores as score
    else:
        score = butterfly_scores
    fixed, lrn = fastddpm.Pipeline.from_checkpoint(args.fixed), fastddpm.Pipeline.from_checkpoint(learned)
    for steps in [int(s) for s in args.steps.split(",")]:
        for name, pipe, kw in (("fixed model, default variance", fixed, {}),
                               ("learned model, learned_range", lrn, {}),
                               ("learned model, fixed_small", lrn, {"variance": "fixed_small"}),
                               ("learned model, fixed_large", lrn, {"variance": "fixed_large"})):
            x = pipe.sample(args.n, sampler="ddpm", steps=steps, seed=1, progress=False, **kw)
            rows.append({"path": name, "sampler": f"ddpm-{steps}", **score(np.asarray(x)), "load": load()})
            print(rows[-1], file=sys.stderr, flush=True)
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
