"""diffusers' DDPMPipeline with fastddpm's drop-in schedulers vs with diffusers' own, on one UNet.

    python bench/diffusers_pipeline.py                  # 32x32 UNet2DModel, batch 16, 50 steps
    python bench/diffusers_pipeline.py --quick          # fewer rounds (a smoke run)
    python bench/diffusers_pipeline.py --device cuda    # the same on a GPU
    python bench/diffusers_pipeline.py --json out.json

For each pair (DDPMScheduler / FusedDDPMScheduler, DDIMScheduler / FusedDDIMScheduler,
DPMSolverMultistepScheduler / FusedDPMSolverMultistepScheduler) the pipeline is run unchanged,
``pipe(batch_size, num_inference_steps, output_type="pt")``, once per round, the two schedulers
alternating so that load on a shared machine hits both alike. The scheduler's time is the
wall time inside ``scheduler.step`` (wrapped; on CUDA synchronised before and after each call),
its share the ratio to the whole pipeline call. Reported: medians over the rounds, in one
process. The UNet has random weights (its speed does not depend on them): UNet2DModel
sample_size 32, 3 channels, block_out_channels (32, 64), one ResNet layer per block, no attention.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def _unet(device):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                       layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).to(device).eval()


class _TimedStep:
    """Wraps scheduler.step: accumulates the seconds spent inside it."""

    def __init__(self, scheduler, sync):
        self.inner, self.sync, self.seconds, self.calls = scheduler.step, sync, 0.0, 0
        scheduler.step = self

    def __call__(self, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.sync()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def run(device="cpu", batch=16, steps=50, rounds=5, threads=None):
    import torch
    from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler)

    from fastddpm.diffusers import FusedDDIMScheduler, FusedDDPMScheduler, FusedDPMSolverMultistepScheduler

    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    unet = _unet(device)
    pairs = {"ddpm": (DDPMScheduler, FusedDDPMScheduler), "ddim": (DDIMScheduler, FusedDDIMScheduler),
             "dpmpp2m": (DPMSolverMultistepScheduler, FusedDPMSolverMultistepScheduler)}
    results = {}
    for name, (theirs, fused) in pairs.items():
        base = theirs(num_train_timesteps=1000)
        pipes = {"diffusers": DDPMPipeline(unet=unet, scheduler=base),
                 "fastddpm": DDPMPipeline(unet=unet, scheduler=fused.from_config(base.config))}
        times = {k: {"pipeline_s": [], "scheduler_s": []} for k in pipes}
        for p in pipes.values():
            p.set_progress_bar_config(disable=True)
            p(batch_size=batch, num_inference_steps=2, output_type="pt")  # warm-up (kernel compiles, allocs)
        for _ in range(rounds):
            for label, p in pipes.items():
                timer = _TimedStep(p.scheduler, sync)
                generator = torch.Generator(device=device).manual_seed(0)
                sync()
                start = time.perf_counter()
                p(batch_size=batch, num_inference_steps=steps, generator=generator, output_type="pt")
                sync()
                times[label]["pipeline_s"].append(time.perf_counter() - start)
                times[label]["scheduler_s"].append(timer.seconds)
                assert timer.calls == steps
                p.scheduler.step = timer.inner
        results[name] = {}
        for label, v in times.items():
            pipe_s, sched_s = statistics.median(v["pipeline_s"]), statistics.median(v["scheduler_s"])
            results[name][label] = {"pipeline_s": pipe_s, "scheduler_s": sched_s,
                                    "scheduler_share": sched_s / pipe_s, "step_us": 1e6 * sched_s / steps}
        d, f = results[name]["diffusers"], results[name]["fastddpm"]
        results[name]["step_speedup"] = d["scheduler_s"] / f["scheduler_s"]
        results[name]["pipeline_speedup"] = d["pipeline_s"] / f["pipeline_s"]
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 10 steps")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 2, 10
    import numba
    import torch

    res = run(args.device, args.batch, args.steps, args.rounds, args.threads)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
               "device": args.device, "load_avg": os.getloadavg()[0]}
    print(f"DDPMPipeline, UNet2DModel 32x32 (32, 64), batch {args.batch}, {args.steps} steps, {args.device}, "
          f"medians of {args.rounds} rounds; {machine}")
    print(f"{'sampler':8} {'scheduler':10} {'pipeline s':>10} {'steps s':>8} {'share':>6} {'µs/step':>9}")
    for name, r in res.items():
        for label in ("diffusers", "fastddpm"):
            v = r[label]
            print(f"{name:8} {label:10} {v['pipeline_s']:10.3f} {v['scheduler_s']:8.4f} "
                  f"{100 * v['scheduler_share']:5.1f}% {v['step_us']:9.0f}")
        print(f"{'':8} step speed-up ×{r['step_speedup']:.1f}, pipeline ×{r['pipeline_speedup']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "args": vars(args), "results": res}, fh, indent=2)


if __name__ == "__main__":
    main()
