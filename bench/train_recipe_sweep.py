"""Quality per second of training for the default vector recipe (issue 13): one configuration per
process, its JSON line on stdout.

Usage: python bench/train_recipe_sweep.py DATASET ITERS BATCH LR WIDTH DEPTH [FOURIER SCALE EMA THREADS N]
Trains ResMLP with fresh data, warm-up + cosine lr, then draws N samples (default 4000) with
ddpm-1000 and dpmpp2m-20 (fastddpm.sample, EMA weights) and scores them with fastddpm.metrics:
distance-to-support quantiles and the sliced-Wasserstein ratio to fresh data. Reports wall and
CPU seconds of training (CPU > wall means torch used more than one core).
"""
import json
import sys
import time

import numpy as np
import torch

import fastddpm
from fastddpm import metrics
from fastddpm.training import train


def main(argv):
    dataset, iters, batch, lr, width, depth = argv[0], int(argv[1]), int(argv[2]), float(argv[3]), int(argv[4]), \
        int(argv[5])
    fourier = int(argv[6]) if len(argv) > 6 else 16
    scale = float(argv[7]) if len(argv) > 7 else 25.0
    ema = float(argv[8]) if len(argv) > 8 else 0.999
    threads = int(argv[9]) if len(argv) > 9 else 1
    n = int(argv[10]) if len(argv) > 10 else 4000
    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    r = train(dataset, iters=iters, batch_size=batch, lr=lr, ema=ema, progress=False, num_threads=threads,
              net_kwargs={"width": width, "depth": depth, "fourier_features": fourier, "fourier_scale": scale})
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"dataset": dataset, "iters": iters, "batch": batch, "lr": lr, "width": width, "depth": depth,
           "fourier": fourier, "scale": scale, "ema": ema, "threads": threads,
           "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
           "final_loss": round(float(np.mean(r.losses[-200:])), 4)}
    for sampler, steps in (("ddpm", 1000), ("dpmpp2m", 20)):
        tic = time.perf_counter()
        x = fastddpm.sample(r.ema_model, r.schedule, n, sampler=sampler, steps=steps, seed=1, progress=False)
        x = r.dataset.normalization.denormalize(np.asarray(x))
        key = f"{sampler}-{steps}"
        ev = metrics.evaluate(x, dataset, n_ref=n, seed=0)
        row[key] = {"sample_s": round(time.perf_counter() - tic, 1), "sw_ratio": round(ev["sw_ratio"], 3),
                    "sw": round(ev["sliced_wasserstein"], 4), "mean": ev["mean"], "std": ev["std"]}
        if dataset in metrics.SUPPORT_DATASETS:
            row[key].update({k: round(v, 4) for k, v in metrics.support_quantiles(x, dataset).items()})
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
