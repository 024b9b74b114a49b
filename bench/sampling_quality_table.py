"""Quality versus steps for every sampler and spacing on one checkpoint (issue 13 item 4).

Usage: python bench/sampling_quality_table.py CKPT [N] [DATASET] [CONFIG-FILTER]
Draws N samples (default 4000, seed 1) per configuration with fastddpm.sample on the checkpoint's
EMA net (one torch thread), scores them with fastddpm.metrics (distance-to-support quantiles
for datasets with a known support, sliced-Wasserstein ratio to fresh data) and prints one JSON
line per configuration, then a markdown table. Wall time is the whole sampling call (the
machine's load average is printed with it: the 2-core box is shared).
"""
import json
import os
import sys
import time

import numpy as np
import torch

import fastddpm
from fastddpm import metrics

CONFIGS = ([("ddpm", 1000, "leading")]
           + [(s, k, sp) for s, ks in (("ddpm", (250, 100)), ("ddim", (100, 50, 20)), ("dpmpp2m", (50, 20, 10)))
              for k in ks for sp in ("leading", "trailing", "logsnr")])


def main(argv):
    path = argv[0]
    n = int(argv[1]) if len(argv) > 1 else 4000
    dataset = argv[2] if len(argv) > 2 else "butterfly"
    only = argv[3].split(",") if len(argv) > 3 else None  # e.g. "ddpm-1000,dpmpp2m-20"
    torch.set_num_threads(1)
    ck = fastddpm.load(path)
    rows = []
    for sampler, steps, spacing in CONFIGS:
        if only and f"{sampler}-{steps}" not in only:
            continue
        load = os.getloadavg()[0]
        tic = time.perf_counter()
        x = fastddpm.sample(ck.model, ck.schedule, n, sampler=sampler, steps=steps, spacing=spacing,
                            prediction=ck.prediction, sample_shape=ck.sample_shape, seed=1, progress=False)
        wall = time.perf_counter() - tic
        x = ck.normalization.denormalize(np.asarray(x))
        ev = metrics.evaluate(x, dataset, n_ref=n, seed=0)
        row = {"sampler": sampler, "steps": steps, "spacing": spacing, "wall_s": round(wall, 2),
               "load": round(load, 1), "sw": round(ev["sliced_wasserstein"], 5), "sw_ratio": round(ev["sw_ratio"], 3)}
        if dataset in metrics.SUPPORT_DATASETS:
            row.update({k: round(v, 4) for k, v in metrics.support_quantiles(x, dataset).items()})
            row["max"] = round(float(metrics.support_distance(x, dataset).max()), 3)
        if dataset == "digits":
            d = metrics.digit_scores(x)
            row.update(confident=round(d["confident"], 3), hist_dev=round(d["class_hist_max_dev"], 3),
                       frechet=round(d["frechet"], 3), frechet_floor=round(d["frechet_floor"], 3))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if dataset == "digits":
        print("\n| sampler | steps | spacing | confident ≥ 0.9 | max class dev | Fréchet (floor) | SW / floor | wall s (load) |\n"
              "|---|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['sampler']} | {r['steps']} | {r['spacing']} | {r['confident']:.3f} | {r['hist_dev']:.3f} | "
                  f"{r['frechet']:.3f} ({r['frechet_floor']:.3f}) | {r['sw_ratio']:.2f} | {r['wall_s']:.1f} ({r['load']:.0f}) |")
        return
    print("\n| sampler | steps | spacing | p50 | p90 | max | SW / floor | SW / ddpm-1000's | wall s (load) |\n"
          "|---|---:|---|---:|---:|---:|---:|---:|---:|")
    sw_ref = rows[0]["sw"]  # CONFIGS[0] is ddpm-1000 (the first row shown)
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['spacing']} | {r.get('p50', float('nan')):.4f} | "
              f"{r.get('p90', float('nan')):.4f} | {r.get('max', float('nan')):.2f} | {r['sw_ratio']:.2f} | "
              f"{r['sw'] / sw_ref:.2f} | "
              f"{r['wall_s']:.1f} ({r['load']:.0f}) |")


if __name__ == "__main__":
    main(sys.argv[1:])
