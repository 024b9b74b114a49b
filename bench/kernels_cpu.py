"""CPU micro benchmarks of the hot path: randn, q_sample, ddpm_step at 2²² float32 elements.

Implementations side by side, each in the same process on the same data:
- ``numba``: fastddpm's fused kernels (noise drawn in-kernel), through the public ops;
- ``before``: (with ``--before DIR``) the kernels/numba package of another checkout, e.g. the
  main branch, called through the same low-level entry points — the before/after comparison;
- ``torch``: torch eager — ``torch.randn`` with a generator, diffusers' ``add_noise`` on
  ``torch.randn`` noise, diffusers' ``DDPMScheduler.step`` with a generator;
- ``numpy``: (with ``--numpy``) kernels/reference.py, the oracle (slow by design).

q_sample and ddpm_step run at D = 2 (the butterfly shape [N/2, 2]) and D = 4096 ([N/4096,
4096]) with one t for the whole batch (the sampling loop's case, t a scalar); q_sample also with a
t per sample (training). ``update <sampler>`` is the sampling loop's call of the one generic
fused kernel (kernels/numba/update.py, in place, one row of the sampler's table, its history
ring and state bound as the loop binds them) for ddpm (noise drawn), ddim (η = 0), dpmpp3m
(two history values read, one pushed) and unipc-3 (state + three history values); ``before``
there is the previous checkout's ddpm_step in place. ``guidance <sampler> D=…`` (issue 25) is the
loop's call of a classifier-free-guided run: ``plain`` the unguided call, ``guided`` the fused
guided call (a 2B-row output read in both halves, x′ also stored into the second half of the
network input), ``no-mirror`` the same without that store, ``rescaled`` guidance_rescale's
reduction (``guide_scales``) plus the guided call; its "vs base" column is plain's time over the
implementation's (the target: guided ≥ 1/1.15 = 0.87). Script mode prints medians of wall and process-CPU time, elements/s,
GB/s, the fraction of the measured copy bandwidth (``np.copyto`` of the same bytes) and the
speed-up over torch/diffusers and over ``before``:

    cp -r /work/main/kernels /tmp/kernels_before   # a writable copy (Numba caches next to it)
    python bench/kernels_cpu.py --before /tmp/kernels_before [--log2n 22] [--repeat 15]

bench/test_kernels_cpu.py runs the same cases under pytest-benchmark.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import platform
import sys
import time

import numpy as np

import fastddpm

LOG2N = 22
WIDTHS = (2, 4096)  # D: elements per sample
T_STEP = 500  # the timestep of the step benchmarks (diffusers takes one t per call)
SEED = 1234

# Bytes each call moves per element (float32): what the kernel must read and write at least.
_BYTES = {"randn": 4, "q_sample": 12, "ddpm_step": 12, "update ddpm": 12, "update ddim": 12,
          "update dpmpp3m": 24, "update unipc-3": 36, "guidance ddpm": 12, "guidance dpmpp2m": 16}
UPDATES = (("ddpm", {}), ("ddim", {}), ("dpmpp3m", {}), ("unipc", {"order": 3}))


def bytes_per_element(op: str) -> int:
    head = op.split(" D=")[0]
    return _BYTES.get(head, _BYTES.get(op.split()[0]))


def loop_update(name: str, options: dict, sched, x_flat, m_flat, D: int, k: int = 3, *, guidance=None, mirror=None,
                rescale=0.0):
    """The loop's bound call of row k of ``name``'s 8-call table on its own copy of x_flat (in place,
    repeatedly: every case gets its own state, so one case's updates never feed another's).
    ``guidance``: w of a guided call (m_flat then holds 2·len(x_flat) values: both halves),
    ``mirror`` the buffer x′ is also stored into, ``rescale`` φ: guidance_rescale's reduction runs
    before each call."""
    from fastddpm.kernels.numba.update import bind, guide_scales, launch_args
    from fastddpm.sampling import make_plan

    tab = make_plan(sched, name, 8, **options).table
    coef = tab.rows.astype(np.float32)
    x_flat = x_flat.copy()
    slots = tab.slots()
    ring = np.zeros((tab.ring,) + x_flat.shape, np.float32) if tab.depth else None
    state = np.zeros_like(x_flat) if tab.reads_state or tab.writes_state else None
    w, hs = slots[k, 0], slots[k, 1:1 + tab.depth]
    scales = np.ones(x_flat.size // D, np.float32) if rescale else None
    call = bind(*launch_args(x_flat, m_flat, coef, np.array([k]), s=state, h=tuple(ring[j] for j in hs),
                             q=ring[w] if w >= 0 else None, draw_noise=bool(tab.rows[k, 9] != 0), seed=SEED,
                             stream=k + 1, per_sample=D, guidance=guidance, rescale=scales, mirror=mirror))
    if rescale:
        B = x_flat.size // D

        def rescaled():
            guide_scales(m_flat, B, D, guidance, rescale, out=scales)
            call(m_flat)
        return rescaled
    return lambda: call(m_flat)


def guidance_cases(n: int, widths=WIDTHS) -> dict[str, dict[str, callable]]:
    """The guided loop call against the unguided one (issue 25), same row, same x, n elements."""
    sched = fastddpm.Schedule.linear(1000)
    rng = np.random.default_rng(1)
    xx = rng.standard_normal(2 * n, dtype=np.float32)  # the 2B-row network input: x is its first half
    x, mirror = xx[:n], xx[n:]
    m = rng.standard_normal(n, dtype=np.float32)
    m2 = rng.standard_normal(2 * n, dtype=np.float32)  # c then u
    out = {}
    for D in widths:
        for name in ("ddpm", "dpmpp2m"):
            out[f"guidance {name} D={D}"] = {
                "plain": loop_update(name, {}, sched, x, m, D),
                "guided": loop_update(name, {}, sched, x, m2, D, guidance=3.0, mirror=mirror),
                "no-mirror": loop_update(name, {}, sched, x, m2, D, guidance=3.0),
                "rescaled": loop_update(name, {}, sched, x, m2, D, guidance=3.0, mirror=mirror, rescale=0.7),
            }
    return out


def machine() -> str:
    """platform, CPU model, cores, thread counts — the line every result table carries."""
    import numba

    from fastddpm.benchmark import cpu_model

    desc = f"{platform.platform()}; {cpu_model()}; {os.cpu_count()} cores; numba threads {numba.get_num_threads()}"
    try:
        import torch

        desc += f"; torch {torch.__version__} threads {torch.get_num_threads()}"
    except ImportError:
        pass
    return desc


def load_kernels(root: str):
    """The kernels package at root (a directory holding numba/, reference.py) under another name."""
    root = pathlib.Path(root)
    name = "kernels_before"
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return {part: importlib.import_module(f"{name}.numba.{part}") for part in ("randn", "q_sample", "step")}


def cases(n: int = 2**LOG2N, before: str | None = None, with_numpy: bool = False) -> dict[str, dict[str, callable]]:
    """{op: {implementation: zero-argument callable}}; torch entries are absent without torch."""
    sched = fastddpm.Schedule.linear(1000)
    rng = np.random.default_rng(0)
    x_flat = rng.standard_normal(n, dtype=np.float32)
    m_flat = rng.standard_normal(n, dtype=np.float32)
    out_flat = np.empty_like(x_flat)
    old = load_kernels(before) if before else None
    ac = np.ascontiguousarray(sched.alphas_cumprod, dtype=np.float64)
    sab, s1mab = np.sqrt(ac), np.sqrt(1.0 - ac)
    result = {"randn": {"numba": lambda: fastddpm.randn(n, seed=SEED, backend="numba")}}
    if old:
        result["randn"]["before"] = lambda: old["randn"].randn(out_flat, SEED, 0, 0)
    if with_numpy:
        result["randn"]["numpy"] = lambda: fastddpm.randn(n, seed=SEED, backend="numpy")
    try:
        import torch
        from diffusers import DDPMScheduler
    except ImportError:
        torch = None
    if torch is not None:
        gen = torch.Generator().manual_seed(SEED)
        ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
        result["randn"]["torch"] = lambda: torch.randn(n, generator=gen)

    for D in WIDTHS:
        B = n // D
        x, m, out = x_flat.reshape(B, D), m_flat.reshape(B, D), out_flat.reshape(B, D)
        eps_out = np.empty_like(x_flat)
        t_per_sample = rng.integers(0, 1000, B)
        t_uniform = np.full(B, T_STEP, dtype=np.int64)
        for t_kind, t in (("one t", T_STEP), ("t per sample", t_per_sample)):
            t_arr = t_uniform if t_kind == "one t" else t_per_sample
            op = f"q_sample D={D}, {t_kind}"
            result[op] = {"numba": lambda t=t, x=x, out=out: fastddpm.q_sample(sched, x, t, seed=SEED, out=out,
                                                                              backend="numba")}
            if old:
                result[op]["before"] = lambda t_arr=t_arr, D=D, eps_out=eps_out: old["q_sample"].q_sample(
                    x_flat, t_arr, sab, s1mab, None, out_flat, eps_out, SEED, 0, 0, D)
            if with_numpy:
                result[op]["numpy"] = lambda t=t, x=x: fastddpm.q_sample(sched, x, t, seed=SEED, backend="numpy")
            if torch is not None:
                tx, tt = torch.from_numpy(x), torch.from_numpy(t_arr)
                result[op]["torch"] = lambda tx=tx, tt=tt: ddpm.add_noise(tx, torch.randn(tx.shape, generator=gen), tt)
        op = f"ddpm_step D={D}, one t"
        result[op] = {"numba": lambda x=x, m=m, out=out: fastddpm.ddpm_step(sched, x, m, T_STEP, seed=SEED, out=out,
                                                                            backend="numba")}
        if old:
            result[op]["before"] = lambda D=D: old["step"].ddpm_step(
                x_flat, m_flat, out_flat, T_STEP, T_STEP - 1, ac, "epsilon", "fixed_small", None, None, SEED, 1, 0, D)
        if with_numpy:
            result[op]["numpy"] = lambda x=x, m=m: fastddpm.ddpm_step(sched, x, m, T_STEP, seed=SEED, backend="numpy")
        if torch is not None:
            tx, tm_ = torch.from_numpy(x), torch.from_numpy(m)
            result[op]["torch"] = lambda tx=tx, tm_=tm_: ddpm.step(tm_, T_STEP, tx, generator=gen).prev_sample
    for D in WIDTHS:
        for name, options in UPDATES:
            label = "unipc-3" if name == "unipc" else name
            op = f"update {label} D={D}"
            result[op] = {"numba": loop_update(name, options, sched, x_flat, m_flat, D)}
            if old and name == "ddpm":
                result[op]["before"] = lambda D=D: old["step"].ddpm_step(
                    x_flat, m_flat, x_flat, T_STEP, T_STEP - 1, ac, "epsilon", "fixed_small", None, None, SEED, 1, 0, D)
    return result


def copy_bandwidth(n: int, repeat: int = 15) -> float:
    """Bytes/s of np.copyto on n float32 (read + write = 8 bytes per element), median of repeat."""
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    return 8 * n / median_times(lambda: np.copyto(dst, src), repeat)[0]


def median_times(fn, repeat: int, warm_up: bool = True) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds summed over threads) of ``repeat`` calls.

    On a shared machine the CPU time is the steadier number: it does not count the time the
    process waits for a core (but counts worker threads spinning while they wait).
    """
    if warm_up:
        fn()  # Numba compile / cache load, first-touch of buffers
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2n", type=int, default=LOG2N, help="elements per call = 2**log2n")
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per case (median is reported)")
    parser.add_argument("--before", metavar="DIR", help="a kernels/ package to compare against (copy it first)")
    parser.add_argument("--numpy", action="store_true", help="also time the (slow) NumPy reference, once")
    parser.add_argument("--only", metavar="PREFIX", help="only the ops starting with PREFIX (e.g. guidance)")
    args = parser.parse_args(argv)
    n = 2**args.log2n
    print(f"machine: {machine()}")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average: {load} (others' jobs slow every column alike)")
    all_cases = {} if args.only == "guidance" else cases(n, args.before, args.numpy)
    all_cases.update(guidance_cases(n))
    if args.only:
        all_cases = {op: impls for op, impls in all_cases.items() if op.startswith(args.only)}
    bw = copy_bandwidth(n, args.repeat)
    print(f"np.copyto bandwidth at 2^{args.log2n} float32: {bw / 1e9:.1f} GB/s (median)\n")
    header = (f"{'op':<28} {'impl':<9} {'wall ms':>8} {'Melem/s':>8} {'GB/s':>5} {'of copy':>7} "
              f"{'vs torch':>8} {'vs base':>9} {'cpu ms':>7} {'cpu vs torch':>12}")
    print(header)
    print("-" * len(header))
    for op, impls in all_cases.items():
        # interleave the implementations round by round so that load changes hit them alike
        for fn in impls.values():
            fn()
        samples = {name: ([], []) for name in impls}
        for _ in range(args.repeat):
            for name, fn in impls.items():
                if name == "numpy" and samples[name][0]:
                    continue  # the reference takes seconds per call: once is enough
                wall, cpu = median_times(fn, 1, warm_up=False)
                samples[name][0].append(wall)
                samples[name][1].append(cpu)
        times = {name: (float(np.median(w)), float(np.median(c))) for name, (w, c) in samples.items()}
        for name, (sec, cpu) in times.items():
            gbs = bytes_per_element(op) * n / sec
            ratio = f"{times['torch'][0] / sec:7.1f}x" if "torch" in times else "       -"
            base = times.get("before", times.get("plain"))  # the previous checkout, or the unguided call
            vs_before = f"{base[0] / sec:8.2f}x" if base is not None else "        -"
            cpu_ratio = f"{times['torch'][1] / cpu:11.1f}x" if "torch" in times else "           -"
            print(f"{op:<28} {name:<9} {sec * 1e3:8.2f} {n / sec / 1e6:8.1f} {gbs / 1e9:5.1f} "
                  f"{gbs / bw:7.0%} {ratio:>8} {vs_before:>9} {cpu * 1e3:7.2f} {cpu_ratio:>12}")
    print("\ntorch = torch.randn / diffusers add_noise + torch.randn / diffusers DDPMScheduler.step "
          "(generator); numba and before write into a preallocated out=; medians of --repeat rounds. "
          "vs base: before's (or, for guidance, plain's) time over this one. GB/s counts the unguided "
          "call's bytes for every guidance implementation (guided moves 4 more per element, 8 with the mirror).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
