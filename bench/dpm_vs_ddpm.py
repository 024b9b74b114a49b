"""Is dpmpp2m-20 within 10 % of ddpm-1000's sliced Wasserstein? (issue 13 item 4), with enough samples to tell.

Usage: python bench/dpm_vs_ddpm.py CKPT [N] [CONFIGS]
CONFIGS: comma-separated sampler:steps:spacing (spacing: leading | trailing | linspace | logsnr |
karras7, the timesteps nearest to Karras et al.'s σ_i with ρ = 7); default: ddpm-1000 and
dpmpp2m-20 with every spacing, dpmpp2m-50 logsnr, ddim-100 logsnr. N samples (default 20,000,
sample seed 1, one torch thread) of the checkpoint's EMA net; each configuration's sliced
Wasserstein (500 projections) to N fresh points (seed 101) and the data-vs-data floor (seed 202
vs 101), then the ratio to ddpm-1000's. At N = 4000 the SW estimate moves by ~10 % with the
reference set alone (ddpm-1000 of one checkpoint: 0.97 or 1.11 of the floor against two
references), the size of the effect; N = 20,000 shrinks that by √5.
"""
import json
import os
import sys
import time

import numpy as np
import torch

import fastddpm
from fastddpm.data import load_dataset
from fastddpm.metrics import sliced_wasserstein, support_distance, support_quantiles

DEFAULT = ("ddpm:1000:leading,dpmpp2m:20:leading,dpmpp2m:20:trailing,dpmpp2m:20:logsnr,dpmpp2m:20:karras7,"
           "dpmpp2m:50:logsnr,ddim:100:logsnr")


def karras_timesteps(alphas_cumprod, steps, rho=7.0):
    """Descending distinct timesteps nearest to σ_i = (σ_max^(1/ρ) + i/(K−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ,
    σ = √((1−ᾱ)/ᾱ), ending at t = 0."""
    sigma = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)  # increasing in t
    ramp = np.linspace(0, 1, steps)
    target = (sigma[-1] ** (1 / rho) + ramp * (sigma[0] ** (1 / rho) - sigma[-1] ** (1 / rho))) ** rho
    t = np.interp(np.log(target), np.log(sigma), np.arange(len(sigma)))
    out = np.round(t).astype(np.int64)
    out[0], out[-1] = len(sigma) - 1, 0
    for k in range(steps - 2, -1, -1):
        out[k] = max(out[k], out[k + 1] + 1)
    return out


def main(argv):
    path = argv[0]
    n = int(argv[1]) if len(argv) > 1 else 20_000
    configs = [c.split(":") for c in (argv[2] if len(argv) > 2 else DEFAULT).split(",")]
    torch.set_num_threads(1)
    ck = fastddpm.load(path)
    ref = load_dataset("butterfly", n, seed=101).raw()
    floor = sliced_wasserstein(load_dataset("butterfly", n, seed=202).raw(), ref, n_projections=500, seed=0)
    print(json.dumps({"n": n, "floor": round(floor, 5)}), flush=True)
    rows = []
    for sampler, steps, spacing in configs:
        steps = int(steps)
        sp = list(karras_timesteps(np.asarray(ck.schedule.alphas_cumprod), steps)) if spacing == "karras7" else spacing
        load, tic = os.getloadavg()[0], time.perf_counter()
        x = fastddpm.sample(ck.model, ck.schedule, n, sampler=sampler, steps=None if spacing == "karras7" else steps,
                            spacing=sp, prediction=ck.prediction, seed=1, progress=False)
        wall = time.perf_counter() - tic
        x = ck.normalization.denormalize(np.asarray(x, dtype=np.float64))
        d = support_distance(x, "butterfly")
        row = {"config": f"{sampler}-{steps} {spacing}", "wall_s": round(wall, 1), "load": round(load, 1),
               **{k: round(v, 4) for k, v in support_quantiles(x, "butterfly").items()},
               "far_0.5": int((d > 0.5).sum()), "max": round(float(d.max()), 2),
               "sw": round(sliced_wasserstein(x, ref, n_projections=500, seed=0), 5)}
        row["sw_ratio"] = round(row["sw"] / floor, 3)
        row["vs_ddpm1000"] = round(row["sw"] / rows[0]["sw"], 3) if rows else 1.0
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
