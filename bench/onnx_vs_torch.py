"""ONNX Runtime vs torch eager on the CPU: per-call network latency and whole sampling loops.

    python bench/onnx_vs_torch.py                 # both nets, batch 1/64/4096, short loops
    python bench/onnx_vs_torch.py --quick         # fewer repeats (a smoke run)
    python bench/onnx_vs_torch.py --json out.json

Nets: the butterfly MLP (MLP(dim=2), fastddpm's defaults) and the digits UNet
(UNet(in_channels=1) on [1, 8, 8]), random weights (perturbed so that no output layer is
zero). Both runtimes get the same thread count (--threads, default: all cores). Each
measurement alternates torch and ORT rounds so that load on a shared machine hits both alike;
the table reports medians and the ORT/torch speed-up side by side.

Loops: fastddpm.sample with the torch net vs with the OnnxModel of the same net (DDPM,
--loop-steps steps), the update in the Numba kernels in both cases.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def nets():
    from fastddpm.nets import MLP, UNet

    return {
        "butterfly MLP": (MLP(dim=2), (2,)),
        "digits UNet": (UNet(in_channels=1), (1, 8, 8)),
    }


def _time_calls(fn, budget_s: float, min_calls: int = 3) -> float:
    """Seconds per call: calls fn repeatedly for about budget_s (at least min_calls)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= min_calls and elapsed >= budget_s:
            return elapsed / calls


def side_by_side(fns: dict, rounds: int, budget_s: float) -> dict:
    """Median seconds per call of each fn, measured in alternating rounds."""
    for fn in fns.values():  # warm-up: allocations, ORT's first-run graph work, torch caches
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_time_calls(fn, budget_s))
    return {name: statistics.median(v) for name, v in times.items()}


def bench_calls(args, torch, exported) -> list[dict]:
    rows = []
    for name, (net, shape, model) in exported.items():
        for batch in args.batches:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            t = rng.integers(0, 1000, batch).astype(np.int64)
            xt, tt = torch.from_numpy(x), torch.from_numpy(t)

            def run_torch():
                with torch.inference_mode():
                    return net(xt, tt)

            def run_ort():
                return model(x, t)

            budget = args.budget if batch < 4096 else 2 * args.budget
            res = side_by_side({"torch": run_torch, "ort": run_ort}, args.rounds, budget)
            rows.append({"net": name, "batch": batch, "torch_s": res["torch"], "ort_s": res["ort"],
                         "torch_sps": batch / res["torch"], "ort_sps": batch / res["ort"],
                         "speedup": res["torch"] / res["ort"]})
            print(f"  {name:14s} B={batch:5d}  torch {res['torch'] * 1e3:9.3f} ms  ort {res['ort'] * 1e3:9.3f} ms  "
                  f"ORT speed-up ×{res['torch'] / res['ort']:.2f}", file=sys.stderr)
    return rows


def bench_loops(args, torch, exported) -> list[dict]:
    import fastddpm

    schedule = fastddpm.Schedule.linear(1000)
    rows = []
    for name, (net, shape, model) in exported.items():
        n = args.loop_n[name]
        kw = dict(sampler="ddpm", steps=args.loop_steps, seed=0, sample_shape=shape, progress=False)

        def run_torch():
            return fastddpm.sample(net, schedule, n, **kw)

        def run_ort():
            return fastddpm.sample(model, schedule, n, **kw)

        res = side_by_side({"torch": run_torch, "ort": run_ort}, args.loop_rounds, 0.0)
        a, b = run_torch(), run_ort()
        rows.append({"net": name, "n": n, "steps": args.loop_steps, "torch_s": res["torch"], "ort_s": res["ort"],
                     "torch_sps": n / res["torch"], "ort_sps": n / res["ort"], "speedup": res["torch"] / res["ort"],
                     "max_abs_diff": float(np.abs(np.asarray(a) - np.asarray(b)).max())})
        print(f"  loop {name:14s} n={n} steps={args.loop_steps}  torch {res['torch']:.3f} s  ort {res['ort']:.3f} s  "
              f"ORT speed-up ×{res['torch'] / res['ort']:.2f}", file=sys.stderr)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch, ORT and Numba")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 4096])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per measurement")
    p.add_argument("--budget", type=float, default=0.3, help="seconds per round (doubled at B >= 4096)")
    p.add_argument("--loop-steps", type=int, default=100, help="DDPM steps of the whole-loop runs")
    p.add_argument("--loop-rounds", type=int, default=3)
    p.add_argument("--mlp-n", type=int, default=4096, help="samples per loop run, MLP")
    p.add_argument("--unet-n", type=int, default=64, help="samples per loop run, UNet")
    p.add_argument("--no-loops", action="store_true")
    p.add_argument("--quick", action="store_true", help="2 rounds of 0.1 s, 20-step loops")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.budget, args.loop_steps, args.loop_rounds = 2, 0.1, 20, 1
    args.loop_n = {"butterfly MLP": args.mlp_n, "digits UNet": args.unet_n}

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import onnxruntime as ort
    import torch

    from fastddpm.onnx_export import export_onnx
    from fastddpm.runtime import OnnxModel

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    torch.manual_seed(0)
    exported = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (net, shape) in nets().items():
            net.eval()
            with torch.no_grad():  # the UNet's output conv starts at zero; no runtime may skip work
                for param in net.parameters():
                    param.add_(0.1 * torch.randn_like(param))
            path = export_onnx(net, os.path.join(tmp, name.replace(" ", "_") + ".onnx"), sample_shape=shape)
            exported[name] = (net, shape, OnnxModel(path, ["CPUExecutionProvider"], session_options=opts))
        print(f"machine: {machine()}; threads {args.threads}; torch {torch.__version__}, "
              f"onnxruntime {ort.__version__}", file=sys.stderr)
        results = {"machine": machine(), "threads": args.threads, "torch": torch.__version__,
                   "onnxruntime": ort.__version__, "calls": bench_calls(args, torch, exported)}
        if not args.no_loops:
            results["loops"] = bench_loops(args, torch, exported)
    print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def render(results) -> str:
    lines = [f"Machine: {results['machine']}; {results['threads']} threads; torch {results['torch']}, "
             f"onnxruntime {results['onnxruntime']}", "",
             "| net | batch | torch eager ms/call | ORT ms/call | torch samples/s | ORT samples/s | ORT speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["calls"]:
        lines.append(f"| {r['net']} | {r['batch']} | {r['torch_s'] * 1e3:.3f} | {r['ort_s'] * 1e3:.3f} | "
                     f"{r['torch_sps']:,.0f} | {r['ort_sps']:,.0f} | ×{r['speedup']:.2f} |")
    if results.get("loops"):
        lines += ["", "| whole loop (DDPM, Numba update) | n | steps | torch+Numba s | ORT+Numba s | "
                      "torch samples/s | ORT samples/s | ORT speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["loops"]:
            lines.append(f"| {r['net']} | {r['n']} | {r['steps']} | {r['torch_s']:.3f} | {r['ort_s']:.3f} | "
                         f"{r['torch_sps']:,.0f} | {r['ort_sps']:,.0f} | ×{r['speedup']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
