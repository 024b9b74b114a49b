"""Seed-to-seed spread of the default recipes' sample quality (issue 13: bounds of tests/test_quality.py).

Usage:
    python bench/quality_seeds.py run DATASET SEEDS OUT_JSONL [CKPT_DIR]   # e.g. run butterfly 0,1,2 runs/q.jsonl
    python bench/quality_seeds.py table OUT_JSONL                          # markdown table, mean/std per dataset

DATASET: butterfly | constant | gaussian (train(DATASET) with every default, KIND_DEFAULTS; a suffix
":ITERS", e.g. gaussian:2000, trains that many iterations instead) or
constant-demo (the demo's 1-D constant-5.0 model: identity normalisation, 100-step schedule,
Budget "full" constant_iters). Each training seed is one row (one torch thread, as
tests/test_quality.py trains): ddpm-1000 (leading), the demo's fast sampler (fastddpm.demo.FAST_SAMPLER,
its default spacing) and, for comparison, dpmpp2m-20 (logsnr); sample seed 1, scored as the test
scores them — butterfly: distance-to-curve p50/p90/p99/p99.9, the share beyond 0.5 data units and
sliced Wasserstein of 4000 samples against fresh data (seed 101) divided by the data-vs-data floor
(seed 202 vs 101); constant/gaussian: mean and std of 5000 samples. Rows are appended to OUT_JSONL.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fastddpm
from fastddpm import demo
from fastddpm.data import load_dataset
from fastddpm.metrics import sliced_wasserstein, support_distance, support_quantiles
from fastddpm.schedule import Schedule
from fastddpm.training import train

N = {"butterfly": 4000, "constant": 5000, "gaussian": 5000, "constant-demo": 2000}


def _train(dataset, seed, out, iters=None):
    if dataset == "constant-demo":
        b = demo.BUDGETS["full"]
        return train(demo._constant_dataset(b.constant_samples * 5), out, schedule=Schedule.create(
            **demo.CONSTANT_SCHEDULE), iters=iters or b.constant_iters, seed=seed, progress=False, num_threads=1)
    return train(dataset, out, seed=seed, iters=iters, progress=False, num_threads=1)


def run_one(spec, seed, ckpt_dir):
    dataset, _, iters = spec.partition(":")
    torch.set_num_threads(1)
    load0, tic = os.getloadavg()[0], time.perf_counter()
    r = _train(dataset, seed, None if ckpt_dir is None else Path(ckpt_dir) / f"{dataset}-{iters or 'default'}-s{seed}",
               iters=int(iters) if iters else None)
    row = {"dataset": dataset, "spec": spec, "seed": seed, "train_s": round(time.perf_counter() - tic, 1),
           "load": round(load0, 2), "iters": len(r.losses)}
    n = N[dataset]
    T = r.schedule.num_steps
    configs = [("ddpm", T, "leading"), (*demo.FAST_SAMPLER, None)]
    if demo.FAST_SAMPLER != ("dpmpp2m", 20):
        configs.append(("dpmpp2m", 20, None))  # the fast default before issue 23
    if dataset == "butterfly":
        fresh_a = load_dataset("butterfly", n, seed=101).raw()
        floor = sliced_wasserstein(load_dataset("butterfly", n, seed=202).raw(), fresh_a, n_projections=500, seed=0)
        row["floor"] = round(floor, 5)
    for sampler, steps, spacing in configs:
        tic = time.perf_counter()
        x = fastddpm.sample(r.ema_model, r.schedule, n, sampler=sampler, steps=steps, spacing=spacing,
                            prediction=r.prediction, seed=1, progress=False)
        x = r.dataset.normalization.denormalize(np.asarray(x, dtype=np.float64))
        key = f"{sampler}-{steps}"
        m = {"sample_s": round(time.perf_counter() - tic, 1)}
        if dataset == "butterfly":
            m.update({k: round(v, 5) for k, v in support_quantiles(x, "butterfly").items()})
            m["max"] = round(float(support_distance(x, "butterfly").max()), 3)
            m["sw"] = round(sliced_wasserstein(x, fresh_a, n_projections=500, seed=0), 5)
            m["sw_ratio"] = round(m["sw"] / floor, 4)
        else:
            m.update({"mean": round(float(x.mean()), 5), "std": round(float(x.std()), 5)})
        row[key] = m
    if dataset == "butterfly":
        for sampler, steps, _ in configs[1:]:
            row[f"{sampler}-{steps}"]["sw_vs_ddpm"] = round(row[f"{sampler}-{steps}"]["sw"] / row[f"ddpm-{T}"]["sw"], 4)
    return row


def _worst(column, values, target):
    """The worst seed of a column: the largest value, or the farthest from ``target`` when given."""
    if target is None:
        return values.max()
    return values[np.argmax(np.abs(values - target))]


def table(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by = {}
    for r in rows:
        by.setdefault(r.get("spec", r["dataset"]), []).append(r)
    out = []
    for spec, rs in by.items():
        rs.sort(key=lambda r: r["seed"])
        ddpm = next(k for k in rs[0] if k.startswith("ddpm-"))
        fast = [k for k in rs[0] if k not in (ddpm,) and "-" in k and isinstance(rs[0][k], dict)]
        if rs[0]["dataset"] == "butterfly":  # (name, value, target the worst seed is measured from)
            cols = [("ddpm p50", lambda r: r[ddpm]["p50"], None), ("ddpm p90", lambda r: r[ddpm]["p90"], None),
                    ("ddpm SW/floor", lambda r: r[ddpm]["sw_ratio"], None)]
            for k in fast:
                cols += [(f"{k} {c}", (lambda r, k=k, c=c: r[k][c]), None)
                         for c in ("p50", "p90", "p99", "p99.9", "far", "sw_ratio", "sw_vs_ddpm") if c in rs[0][k]]
        else:
            target = 3.0 if rs[0]["dataset"] == "gaussian" else 5.0
            std_target = 1.0 if rs[0]["dataset"] == "gaussian" else 0.0
            cols = [(f"{k} {c}", (lambda r, k=k, c=c: r[k][c]), target if c == "mean" else std_target)
                    for k in [ddpm] + fast for c in ("mean", "std")]
        cols.append(("train s", lambda r: r["train_s"], None))
        out += [f"\n{spec} ({len(rs)} training seeds, {rs[0]['iters']} iterations)\n",
                "| seed | " + " | ".join(c for c, _, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
        for r in rs:
            out.append(f"| {r['seed']} | " + " | ".join(f"{f(r):.4g}" for _, f, _ in cols) + " |")
        vals = np.array([[f(r) for _, f, _ in cols] for r in rs])
        std = vals.std(0, ddof=1) if len(rs) > 1 else np.zeros(len(cols))
        out.append("| mean ± std | " + " | ".join(f"{m:.4g} ± {s:.2g}" for m, s in zip(vals.mean(0), std)) + " |")
        out.append("| worst | " + " | ".join(f"{_worst(c, vals[:, i], t):.4g}" for i, (c, _, t) in enumerate(cols))
                   + " |")
    print("\n".join(out))


def main(argv):
    if argv[0] == "table":
        return table(argv[1])
    dataset, seeds, path = argv[1], [int(s) for s in argv[2].split(",")], Path(argv[3])
    ckpt_dir = argv[4] if len(argv) > 4 else None
    for seed in seeds:
        row = run_one(dataset, seed, ckpt_dir)
        line = json.dumps(row)
        print(line, flush=True)
        with open(path, "a") as f:  # one appended line per finished run (a partial sweep keeps its rows)
            f.write(line + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
