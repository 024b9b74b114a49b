"""Train butterfly with several settings and score 1000-step DDPM samples (sliced Wasserstein ratio).

Usage: python bench/train_quality_sweep.py ITERS BATCH LR [WIDTH DEPTH] — one configuration per
process, so configurations can run side by side pinned to separate cores.
"""
import json
import sys
import time

import numpy as np
import torch

import fastddpm
from fastddpm.metrics import evaluate
from fastddpm.training import train


def ddpm_sample(model, schedule, n, shape, seed=0):
    """Plain 1000-step ancestral loop over fastddpm.ddpm_step (stream 0: x_T, stream k: step k)."""
    x = fastddpm.randn((n, *shape), seed=seed, stream=0, like=torch.empty(0))
    with torch.no_grad():
        for k, t in enumerate(range(schedule.num_steps - 1, -1, -1), start=1):
            tt = torch.full((n,), t, dtype=torch.int64)
            x = fastddpm.ddpm_step(schedule, x, model(x, tt), t, seed=seed, stream=k)
    return x


if __name__ == "__main__":
    iters, batch, lr = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    width = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    depth = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    dataset = sys.argv[6] if len(sys.argv) > 6 else "butterfly"
    lr_schedule = sys.argv[7] if len(sys.argv) > 7 else "cosine"
    torch.set_num_threads(1)
    tic = time.perf_counter()
    r = train(dataset, iters=iters, batch_size=batch, lr=lr, lr_schedule=lr_schedule, net_kwargs={"width": width, "depth": depth},
              progress=False, num_threads=1)
    t_train = time.perf_counter() - tic
    tic = time.perf_counter()
    x = ddpm_sample(r.ema_model, r.schedule, 5000, r.dataset.sample_shape)
    t_sample = time.perf_counter() - tic
    ev = evaluate(r.dataset.normalization.denormalize(x.numpy()), dataset)
    print(json.dumps({"iters": iters, "batch": batch, "lr": lr, "width": width, "depth": depth,
                      "dataset": dataset, "lr_schedule": lr_schedule, "train_s": round(t_train, 1), "sample_s": round(t_sample, 1),
                      "sps": round(r.samples_per_s), "sw_ratio": round(ev["sw_ratio"], 3),
                      "mean": ev["mean"], "std": ev["std"], "ref_mean": ev["ref_mean"], "ref_std": ev["ref_std"],
                      "final_loss": float(np.mean(r.losses[-200:]))}))
