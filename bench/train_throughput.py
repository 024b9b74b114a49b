"""Training throughput (samples/s) and peak memory on CPU for butterfly (MLP) and digits (UNet).

Each configuration runs in its own subprocess so its peak RSS (ru_maxrss) is its own; the
table also gives the peak minus the RSS after imports and data loading (the training's share).

    python bench/train_throughput.py [--iters 300] [--threads 1 2]
"""
import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
import fastddpm
from fastddpm.data import load_dataset
from fastddpm.training import train
name, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = load_dataset(name, None if name == "digits" else 10000)
train(ds, iters=5, progress=False, num_threads=threads)  # warm-up: Numba compile, allocator
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = train(ds, iters=iters, progress=False, num_threads=threads)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"dataset": name, "net": type(r.model).__name__,
                  "params": sum(p.numel() for p in r.model.parameters()),
                  "batch_size": r.train_config["batch_size"], "threads": threads, "iters": iters,
                  "samples_per_s": r.samples_per_s, "it_per_s": iters / r.seconds,
                  "peak_rss_mib": peak / 1024, "peak_over_baseline_mib": (peak - base) / 1024}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--datasets", nargs="+", default=["butterfly", "digits"])
    args = ap.parse_args()
    import os
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| dataset | net | params | batch | threads | samples/s | it/s | peak RSS MiB | training share MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        for threads in args.threads:
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.iters), str(threads)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {r['dataset']} | {r['net']} | {r['params']:,} | {r['batch_size']} | {r['threads']} | "
                  f"{r['samples_per_s']:,.0f} | {r['it_per_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                  f"{r['peak_over_baseline_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
