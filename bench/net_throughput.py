"""Network evaluations/s and GFLOP/s against the machine's measured GEMM peak, per runtime and net,
and the whole dpmpp2m-20 loop (issue 26).

    python bench/net_throughput.py [--threads 1] [--sections peak,nets,loop] [--nets ResMLP,MLP,UNet]
                                   [--compile] [--loop-n 200000] [--rounds 5] [--json rows.json]

Everything runs in one process at one thread count (torch, onnxruntime intra-op and Numba alike),
in interleaved rounds, so load from other processes hits every row alike; read the ratios.

- ``peak``: onnxruntime's MLAS MatMul (the fastest GEMM measured on this machine kind; torch's MKL
  and NumPy's OpenBLAS for reference) on 2048³, 1024³ and [8192, 64]·[64, 64], best of the
  rounds. The peak the nets are compared with is the best of all of them, re-measured between
  the nets' rounds (so a load spike during the peak measurement cannot inflate the fractions).
- ``nets``: the built-in nets at the sampler's CPU batch (2^14 elements: 8192 2-D samples, 256
  digit images), with one shared t: FLOPs per sample from torch's FlopCounterMode (matmuls and
  convolutions; the time path on its one row included), then per runtime ms per call (min and
  median), evaluations/s, GFLOP/s and the fraction of the peak. Runtimes: torch eager;
  ``torch.compile`` (inductor, freezing; with ``--compile``: 10–30 s to compile each net);
  onnxruntime on the plain export (what engine="auto" ran before issue 26), on the export form
  (fastddpm.nets.fused) with the default session, with spinning off, and (``--threads`` > 1)
  split over the cores (one one-thread session per core on its rows: engine auto's onnx-split).
- ``loop``: n = 200,000 butterfly samples, dpmpp2m-20 (logsnr spacing), the default ResMLP:
  ``fastddpm.sample`` with each network runtime, against diffusers' DPMSolverMultistepScheduler
  (dpmsolver++, order 2, use_lu_lambdas) on the same torch net handed a stride-0 t (its time
  path once per step too), batch 8192 for all.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

NET_BATCH_ELEMENTS = 2**14


def _mm_session(m, k, n, threads, spin=True):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


PEAK_SHAPES = ((2048, 2048, 2048), (1024, 1024, 1024), (8192, 64, 64))


def peak_fns(threads):
    """name → (zero-argument call, FLOPs) for the GEMM peak measurements."""
    import torch

    rng = np.random.default_rng(0)
    fns = {}
    for m, k, n in PEAK_SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        s = _mm_session(m, k, n, threads)
        fns[f"ORT MLAS MatMul {m}x{k}x{n}"] = ((lambda s=s, a=a, b=b: s.run(None, {"a": a, "b": b})), 2 * m * k * n)
        if m == 2048:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            fns["torch (MKL) mm 2048^3"] = ((lambda ta=ta, tb=tb: torch.mm(ta, tb)), 2 * m * k * n)
            fns["NumPy (OpenBLAS) matmul 2048^3"] = ((lambda a=a, b=b: a @ b), 2 * m * k * n)
    return fns


def measure_peak(fns, rounds=3, reps=3):
    """name → best GFLOP/s."""
    best = {name: 0.0 for name in fns}
    for fn, _ in fns.values():
        fn()
    for _ in range(rounds):
        for name, (fn, flops) in fns.items():
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                best[name] = max(best[name], flops / (time.perf_counter() - t0) / 1e9)
    return best


# -- nets -------------------------------------------------------------------------------------

def build_net(name):
    """The built-in net ``fastddpm train`` builds by default (random weights, perturbed so no
    layer is zero), its sample shape and the batch the CPU sampler uses."""
    import torch

    from fastddpm.nets import build
    from fastddpm.training import DEFAULT_NET

    torch.manual_seed(0)
    if name == "ResMLP":
        cls, kw = DEFAULT_NET["vector"]
        net, shape = build(cls, **kw), (2,)
    elif name == "MLP":  # the earlier default vector net (width 128, 3 layers)
        net, shape = build("MLP"), (2,)
    elif name == "UNet":
        cls, kw = DEFAULT_NET["image"]
        net, shape = build(cls, in_channels=1, **kw), (1, 8, 8)
    else:
        raise ValueError(f"net must be one of ResMLP, MLP, UNet; got {name!r}")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    batch = NET_BATCH_ELEMENTS // int(np.prod(shape))
    return net.eval(), shape, batch


def flops_per_sample(net, shape, batch):
    """Matmul/conv FLOPs of one call with a shared t (torch's FlopCounterMode), per sample."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, *shape)
    t = torch.full((1,), 500, dtype=torch.int64).expand(batch)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x, t)
    return counter.get_total_flops() / batch


def runtime_fns(net, shape, batch, threads, compile_torch, workdir):
    """runtime name → zero-argument call evaluating the net once at ``batch`` (shared t), and the
    outputs' max deviation from torch eager."""
    import onnxruntime as ort
    import torch

    import fastddpm
    from fastddpm.onnx_fused import export_fused
    from fastddpm.runtime import OnnxModel

    rng = np.random.default_rng(0)
    xn = rng.standard_normal((batch, *shape), dtype=np.float32)
    x = torch.from_numpy(xn)
    t = torch.full((1,), 500, dtype=torch.int64).expand(batch)
    with torch.inference_mode():
        ref = net(x, t).numpy().copy()
    fns, errs = {}, {}

    def eager():
        with torch.inference_mode():
            return net(x, t)
    fns["torch eager"] = eager
    if compile_torch:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(net, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            out = compiled(x, t)
        errs["torch.compile"] = float(np.abs(out.numpy() - ref).max())
        print(f"  torch.compile: {time.perf_counter() - start:.1f} s to compile", file=sys.stderr)

        def comp():
            with torch.inference_mode():
                return compiled(x, t)
        fns["torch.compile (inductor)"] = comp
    plain = fastddpm.export_onnx(net, os.path.join(workdir, f"{type(net).__name__}-plain.onnx"), sample_shape=shape)
    form = export_fused(net, os.path.join(workdir, f"{type(net).__name__}-form.onnx"), sample_shape=shape)
    for name, path, spin in (("ORT plain export (before #26)", plain, True), ("ORT export form", form, True),
                             ("ORT export form, no spin", form, False)):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = OnnxModel(path, ["CPUExecutionProvider"], session_options=so)
        buf = xn.copy()
        call = model.bind_batch(buf, [500])
        errs[name] = float(np.abs(call(0) - ref).max())
        fns[name] = (lambda call=call: call(0))
    if threads > 1:  # engine auto's onnx-split: one one-thread session per core, each on its rows
        from fastddpm.runtime.split import SplitOnnxModel

        call = SplitOnnxModel(form, parts=threads).bind_batch(xn.copy(), [500])
        errs["ORT export form, split over cores"] = float(np.abs(call(0) - ref).max())
        fns["ORT export form, split over cores"] = (lambda call=call: call(0))
    return fns, errs, float(np.abs(ref).max())


def bench_nets(names, threads, rounds, compile_torch, peak_calls, log):
    rows = []
    peak_best = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            net, shape, batch = build_net(name)
            fps = flops_per_sample(net, shape, batch)
            fns, errs, scale = runtime_fns(net, shape, batch, threads, compile_torch, workdir)
            times = {k: [] for k in fns}
            for fn in fns.values():
                fn()
            reps = max(2, int(0.05 / max(1e-4, _once(fns["ORT export form"]))))
            for _ in range(rounds):
                for k, fn in fns.items():
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t0)
                for k, v in measure_peak(peak_calls, rounds=1, reps=2).items():  # peak re-measured between rounds
                    peak_best[k] = max(peak_best.get(k, 0.0), v)
            for k, v in times.items():
                mn, med = min(v), float(np.median(v))
                rows.append({"section": "nets", "net": name, "runtime": k, "batch": batch,
                             "flops_per_sample": fps, "ms_min": mn * 1e3, "ms_median": med * 1e3,
                             "evals_per_s": batch / mn, "gflops": fps * batch / mn / 1e9,
                             "gflops_median": fps * batch / med / 1e9, "max_abs_err": errs.get(k, 0.0),
                             "out_scale": scale})
            print(f"  {name}: done", file=log)
    peak = max(peak_best.values()) if peak_best else None
    for r in rows:
        r["peak_gflops"] = peak
        r["frac_peak"] = r["gflops"] / peak if peak else None
        r["frac_peak_median"] = r["gflops_median"] / peak if peak else None
    for name in names:
        base = [r for r in rows if r["net"] == name and r["runtime"].startswith("ORT plain")]
        for r in rows:
            if r["net"] == name and base:
                r["x_vs_ort_plain"] = r["evals_per_s"] / base[0]["evals_per_s"]
    return rows, peak_best


def _once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- the whole loop ---------------------------------------------------------------------------

def diffusers_dpm_loop(model, schedule, n, steps, batch, prediction):
    """diffusers' DPMSolverMultistepScheduler-``steps`` (dpmsolver++, order 2, log-SNR spacing as
    fastddpm's default for dpmpp2m) on the torch net, t handed as a stride-0 [B] view."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(num_train_timesteps=schedule.num_steps, trained_betas=schedule.betas.tolist(),
                                        algorithm_type="dpmsolver++", solver_order=2, prediction_type=prediction,
                                        use_lu_lambdas=True)
    gen = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():
        for s0 in range(0, n, batch):
            b = min(batch, n - s0)
            sched.set_timesteps(steps)
            x = torch.randn((b, *model.sample_shape), generator=gen)
            for t in sched.timesteps:
                eps = model(x, t.expand(b))
                x = sched.step(eps, t, x).prev_sample
            out.append(x)
    return torch.cat(out)


def bench_loop(n, threads, rounds, log):
    import onnxruntime as ort

    import fastddpm
    from fastddpm.benchmark import default_model
    from fastddpm.onnx_fused import export_fused
    from fastddpm.runtime import OnnxModel

    model, schedule, _, prediction = default_model()
    batch = NET_BATCH_ELEMENTS // 2
    nets = {"torch eager": model}
    with tempfile.TemporaryDirectory() as workdir:
        plain = fastddpm.export_onnx(model, os.path.join(workdir, "plain.onnx"), sample_shape=(2,), schedule=schedule,
                                     prediction=prediction)
        form = export_fused(model, os.path.join(workdir, "form.onnx"), sample_shape=(2,), schedule=schedule,
                            prediction=prediction)
        for name, path, spin in (("ORT plain export (auto before #26)", plain, True), ("ORT export form", form, True),
                                 ("ORT export form, no spin", form, False)):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            if not spin:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            nets[name] = OnnxModel(path, ["CPUExecutionProvider"], session_options=so)
        if threads > 1:
            from fastddpm.runtime.split import SplitOnnxModel

            nets["ORT export form, split over cores"] = SplitOnnxModel(form, parts=threads)
        fns = {f"fastddpm.sample, {k}": (lambda net=net: fastddpm.sample(
            net, schedule, n, sampler="dpmpp2m", steps=20, prediction=prediction, batch_size=batch, progress=False))
            for k, net in nets.items()}
        fns["diffusers DPMSolverMultistep-20, torch net, shared t"] = lambda: diffusers_dpm_loop(
            model, schedule, n, 20, batch, prediction)
        for net in nets.values():  # warm-up (JIT, sessions) on a small run
            fastddpm.sample(net, schedule, 64, sampler="dpmpp2m", steps=2, prediction=prediction, progress=False)
        times = {k: [] for k in fns}
        for r in range(rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
            print(f"  loop round {r + 1}/{rounds}", file=log)
    rows = []
    ref = float(np.median(times["diffusers DPMSolverMultistep-20, torch net, shared t"]))
    before = float(np.median(times["fastddpm.sample, ORT plain export (auto before #26)"]))
    for k, v in times.items():
        med = float(np.median(v))
        rows.append({"section": "loop", "name": k, "n": n, "steps": 20, "batch": batch, "s_median": med,
                     "s_min": min(v), "samples_per_s": n / med, "x_vs_diffusers": ref / med,
                     "x_vs_before": before / med, "rounds": rounds})
    return rows


def _fmt(rows, cols):
    out = [" | ".join(cols)]
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            vals.append(f"{v:,.3g}" if isinstance(v, float) else str(v))
        out.append(" | ".join(vals))
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sections", default="peak,nets,loop")
    p.add_argument("--nets", default="ResMLP,MLP,UNet")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--loop-n", type=int, default=200_000)
    p.add_argument("--loop-rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba
    import torch

    from fastddpm.benchmark import machine

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    import onnxruntime

    sections = args.sections.split(",")
    info = machine()
    info["onnxruntime"] = onnxruntime.__version__
    info["threads"] = args.threads
    print(f"machine: {info}", file=sys.stderr)
    rows = []
    peak_calls = peak_fns(args.threads)
    peak = {}
    if "peak" in sections:
        peak = measure_peak(peak_calls, rounds=args.rounds)
        rows += [{"section": "peak", "name": k, "gflops_best": v} for k, v in peak.items()]
        print(_fmt(rows, ["name", "gflops_best"]), file=sys.stderr)
    if "nets" in sections:
        net_rows, peak2 = bench_nets(args.nets.split(","), args.threads, args.rounds, args.compile, peak_calls,
                                     sys.stderr)
        overall = max(list(peak.values()) + list(peak2.values()))
        for r in net_rows:
            r["peak_gflops"] = overall
            r["frac_peak"] = r["gflops"] / overall
            r["frac_peak_median"] = r["gflops_median"] / overall
        rows += net_rows
        print(_fmt(net_rows, ["net", "runtime", "batch", "flops_per_sample", "ms_min", "ms_median", "evals_per_s",
                              "gflops", "frac_peak", "frac_peak_median", "x_vs_ort_plain", "max_abs_err",
                              "out_scale"]), file=sys.stderr)
        print(f"peak used: {overall:.0f} GFLOP/s", file=sys.stderr)
    if "loop" in sections:
        loop_rows = bench_loop(args.loop_n, args.threads, args.loop_rounds, sys.stderr)
        rows += loop_rows
        print(_fmt(loop_rows, ["name", "n", "s_median", "s_min", "samples_per_s", "x_vs_diffusers", "x_vs_before"]),
              file=sys.stderr)
    info["load_avg_end"] = os.getloadavg()[0]
    print(f"load average at the end: {os.getloadavg()}", file=sys.stderr)
    if args.json:
        from fastddpm._io import write_json

        write_json(args.json, {"machine": info, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
