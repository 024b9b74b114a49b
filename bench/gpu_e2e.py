"""End-to-end sampling on a GPU: fastddpm (CUDA graphs on / off) vs a diffusers loop vs a plain
torch loop on the same network, in one process; plus the checks a CPU cannot make (graph ==
eager == the Numba loop, no host sync inside a batch, host time per step with graphs).

    python bench/gpu_e2e.py --out gpu-results            # CUDA: butterfly MLP n=10^6 x 1000, small UNet
    TRITON_INTERPRET=1 python bench/gpu_e2e.py --smoke   # CPU: the same code at tiny sizes (no numbers)

Writes e2e.json and e2e.md into --out. Sections can be chosen with --sections. Timings:
best of --reps wall times, the device synchronised before each start and end (the first call
of a graph run also captures; graphs are cached per model, so later calls only replay).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

SECTIONS = ("correctness", "syncs", "host", "mlp", "unet")


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _best(fn, reps):
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return times


def correctness(cfg, dev, rows):
    """Graph vs eager vs the host (Numba) loop on the same MLP and seed: max |difference|."""
    from fastddpm.nets import MLP
    from fastddpm.sampling import sample

    import fastddpm

    S = fastddpm.Schedule.linear(1000)
    torch.manual_seed(0)
    mlp = MLP().eval().to(dev)
    host_mlp = copy.deepcopy(mlp).cpu()
    n, bs = cfg["check_n"], cfg["check_batch"]
    for smp, kw in [("ddpm", dict(steps=cfg["check_steps"])), ("ddim", dict(steps=cfg["check_steps"], eta=0.5)),
                    ("ddim", dict(steps=cfg["check_steps"], eta=0.0)), ("dpmpp2m", dict(steps=cfg["check_steps"]))]:
        run = lambda mod, **o: sample(mod, S, n, sampler=smp, seed=3, batch_size=bs, progress=False, **kw, **o)  # noqa: E731
        ref = run(host_mlp)
        eager = run(mlp, device=dev, backend="triton", cuda_graph=False)
        row = {"section": "correctness", "sampler": smp, **kw, "n": n, "batch_size": bs,
               "eager_vs_numba": float(np.abs(eager.float().cpu().numpy() - ref).max())}
        if dev.type == "cuda":
            graph = run(mlp, device=dev, cuda_graph=True)
            row["graph_vs_eager"] = float((graph - eager).abs().max())
            bf = run(mlp.to(torch.bfloat16), device=dev, dtype=torch.bfloat16)
            mlp.float()
            row["bf16_vs_numba"] = float(np.abs(bf.float().cpu().numpy() - ref).max())
        rows.append(row)
        print(row, flush=True)


def syncs(cfg, dev, rows):
    """CUDA sync warnings while sampling 4 batches with graphs and check_finite off (expected 0)."""
    if dev.type != "cuda":
        return
    from fastddpm.nets import MLP
    from fastddpm.sampling import sample

    import fastddpm

    S = fastddpm.Schedule.linear(1000)
    mlp = MLP().eval().to(dev)
    for graph in (True, False):
        kw = dict(steps=200, batch_size=1024, device=dev, progress=False, cuda_graph=graph, check_finite=False)
        sample(mlp, S, 4096, **kw)  # capture / compile outside the count
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sample(mlp, S, 4096, **kw)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        row = {"section": "syncs", "cuda_graph": graph, "batches": 4, "steps": 200, "sync_warnings": len(w),
               "first": str(w[0].message)[:200] if w else ""}
        rows.append(row)
        print(row, flush=True)


def host_time(cfg, dev, rows):
    """Host time per step: run_batch returns once every step is queued (check_finite off: no
    sync); that time / K, with the GPU kept busier than the host by a large batch."""
    if dev.type != "cuda":
        return
    from fastddpm.nets import MLP
    from fastddpm.sampling import SamplingRun

    import fastddpm

    S = fastddpm.Schedule.linear(1000)
    mlp = MLP().eval().to(dev)
    n, K = cfg["mlp_n"], cfg["mlp_steps"]
    for graph in (True, False):
        run = SamplingRun(mlp, S, n, sampler="ddpm", steps=K, spacing="leading", eta=0.0, prediction="epsilon",
                          variance="fixed_small", clip=None, seed=0, batch_size=n, device=dev, backend="auto",
                          dtype="float32", progress=False, check_finite=False, sample_shape=None, cuda_graph=graph)
        run.run_batch(0, n)  # capture / compile
        _sync()
        t0 = time.perf_counter()
        run.run_batch(0, n)
        queued = time.perf_counter() - t0
        _sync()
        total = time.perf_counter() - t0
        row = {"section": "host", "cuda_graph": graph, "n": n, "steps": K, "host_us_per_step": queued / K * 1e6,
               "wall_us_per_step": total / K * 1e6}
        rows.append(row)
        print(row, flush=True)


def _e2e(name, model, n, K, cfg, dev, rows):
    from fastddpm.benchmark import diffusers_loop, torch_loop
    from fastddpm.sampling import sample

    import fastddpm

    S = fastddpm.Schedule.linear(1000)
    fns = {
        "fastddpm graph": lambda: sample(model, S, n, steps=K, batch_size=n, device=dev, progress=False,
                                         backend="triton", cuda_graph=dev.type == "cuda"),
        "fastddpm eager": lambda: sample(model, S, n, steps=K, batch_size=n, device=dev, progress=False,
                                         backend="triton", cuda_graph=False),
        "torch loop": lambda: torch_loop(model, S, n, K, n, device=dev),
    }
    try:
        import diffusers  # noqa: F401
        fns["diffusers"] = lambda: diffusers_loop(model, S, n, K, n, device=dev)
    except ImportError:
        print("diffusers is not importable: no diffusers row (bring its wheel, see docs/triton.md)", flush=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = {}
    for method, fn in fns.items():
        times = _best(fn, cfg["reps"])
        res[method] = times
        print(f"{name} {method}: {['%.3f' % t for t in times]} s", flush=True)
    base = min(res["diffusers"]) if "diffusers" in res else None
    for method, times in res.items():
        best = min(times)
        rows.append({"section": name, "method": method, "n": n, "steps": K, "first_s": times[0], "best_s": best,
                     "us_per_step": best / K * 1e6, "samples_per_s": n / best,
                     "x_vs_diffusers": base / best if base else None,
                     "peak_GB": torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None})


def mlp(cfg, dev, rows):
    from fastddpm.nets import MLP

    torch.manual_seed(0)
    _e2e("mlp", MLP().eval().to(dev), cfg["mlp_n"], cfg["mlp_steps"], cfg, dev, rows)


def unet(cfg, dev, rows):
    from fastddpm.nets import UNet

    torch.manual_seed(0)
    net = UNet(1, 32, (1, 2)).eval().to(dev)
    net.sample_shape = (1, 28, 28)
    _e2e("unet28", net, cfg["unet_n"], cfg["unet_steps"], cfg, dev, rows)


def _markdown(rows, machine):
    lines = [f"Machine: {machine}", ""]
    for r in rows:
        lines.append("- " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-results"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU tensors (needs TRITON_INTERPRET=1)")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args(argv)
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if args.smoke:
        if not interpreting:
            print("--smoke runs the Triton loop on CPU tensors: set TRITON_INTERPRET=1 first")
            return 2
        dev = torch.device("cpu")
        cfg = dict(check_n=6, check_batch=4, check_steps=3, mlp_n=8, mlp_steps=3, unet_n=2, unet_steps=2, reps=1)
        machine = "CPU smoke test under the Triton interpreter; timings are meaningless"
    else:
        if not torch.cuda.is_available() or interpreting:
            print("bench/gpu_e2e.py: needs a CUDA device and TRITON_INTERPRET unset (or --smoke); nothing measured")
            return 0
        dev = torch.device("cuda", torch.cuda.current_device())
        cfg = dict(check_n=4000, check_batch=1024, check_steps=20, mlp_n=10**6, mlp_steps=1000, unet_n=2048,
                   unet_steps=100, reps=args.reps)
        import triton
        machine = (f"{torch.cuda.get_device_name()} (torch {torch.__version__}, triton {triton.__version__}, "
                   f"CUDA {torch.version.cuda})")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for section in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            {"correctness": correctness, "syncs": syncs, "host": host_time, "mlp": mlp, "unet": unet}[section](
                cfg, dev, rows)
        except Exception as exc:  # one failing section must not lose the others' numbers
            rows.append({"section": section, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(f"section {section} failed: {exc!r}", flush=True)
        print(f"=== {section}: {time.perf_counter() - t0:.1f} s", flush=True)
        with open(os.path.join(args.out, "e2e.json"), "w") as fh:  # after every section: a timeout keeps the rest
            json.dump({"machine": machine, "rows": rows}, fh, indent=1)
    with open(os.path.join(args.out, "e2e.md"), "w") as fh:
        fh.write(_markdown(rows, machine))
    print(_markdown(rows, machine))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
