"""CPU micro benchmarks of the hot path: randn, q_sample, ddpm_step at 2²² float32 elements.

Implementations side by side, each in the same process on the same data:
- ``numba``: fastddpm's fused kernels (noise drawn in-kernel);
- ``numpy``: kernels/reference.py, the oracle (slow by design);
- ``torch``: torch eager — ``torch.randn`` with a generator, diffusers' ``add_noise`` on
  ``torch.randn`` noise, diffusers' ``DDPMScheduler.step`` with a generator.

Script mode prints a table with elements/s, GB/s, the fraction of the measured copy bandwidth
(``np.copyto`` of the same size) and the speed-up over torch/diffusers:

    python bench/kernels_cpu.py [--log2n 22] [--repeat 15]

bench/test_kernels_cpu.py runs the same cases under pytest-benchmark.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import fastddpm

LOG2N = 22
BATCH = 64  # samples; D = n / BATCH elements each
T_STEP = 500  # the timestep of the step benchmarks (diffusers takes one t per call)
SEED = 1234

# Bytes each call moves per element (float32): what the kernel must read and write at least.
BYTES_PER_ELEMENT = {"randn": 4, "q_sample": 12, "ddpm_step": 12}


def machine() -> str:
    """platform, CPU model, cores, thread counts — the line every result table carries."""
    import numba

    from fastddpm.benchmark import cpu_model

    model = cpu_model()

    desc = f"{platform.platform()}; {model}; {os.cpu_count()} cores; numba threads {numba.get_num_threads()}"
    try:
        import torch

        desc += f"; torch {torch.__version__} threads {torch.get_num_threads()}"
    except ImportError:
        pass
    return desc


def make_data(n: int):
    rng = np.random.default_rng(0)
    shape = (BATCH, n // BATCH)
    x = rng.standard_normal(shape, dtype=np.float32)
    m = rng.standard_normal(shape, dtype=np.float32)
    t = rng.integers(0, 1000, BATCH)
    return x, m, t


def cases(n: int = 2**LOG2N) -> dict[str, dict[str, callable]]:
    """{op: {implementation: zero-argument callable}}; torch entries are absent without torch."""
    sched = fastddpm.Schedule.linear(1000)
    x, m, t = make_data(n)
    out = np.empty_like(x)
    result = {
        "randn": {
            "numba": lambda: fastddpm.randn(n, seed=SEED, backend="numba"),
            "numpy": lambda: fastddpm.randn(n, seed=SEED, backend="numpy"),
        },
        "q_sample": {
            "numba": lambda: fastddpm.q_sample(sched, x, t, seed=SEED, out=out, backend="numba"),
            "numpy": lambda: fastddpm.q_sample(sched, x, t, seed=SEED, out=out, backend="numpy"),
        },
        "ddpm_step": {
            "numba": lambda: fastddpm.ddpm_step(sched, x, m, T_STEP, seed=SEED, out=out, backend="numba"),
            "numba (new out)": lambda: fastddpm.ddpm_step(sched, x, m, T_STEP, seed=SEED, backend="numba"),
            "numpy": lambda: fastddpm.ddpm_step(sched, x, m, T_STEP, seed=SEED, out=out, backend="numpy"),
        },
    }
    try:
        import torch
        from diffusers import DDPMScheduler
    except ImportError:
        return result
    gen = torch.Generator().manual_seed(SEED)
    tx, tm_, tt = torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(t)
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    result["randn"]["torch"] = lambda: torch.randn(n, generator=gen)
    result["q_sample"]["torch"] = lambda: ddpm.add_noise(tx, torch.randn(tx.shape, generator=gen), tt)
    result["ddpm_step"]["torch"] = lambda: ddpm.step(tm_, T_STEP, tx, generator=gen).prev_sample
    return result


def copy_bandwidth(n: int, repeat: int = 15) -> float:
    """Bytes/s of np.copyto on n float32 (read + write = 8 bytes per element), best of repeat."""
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    return 8 * n / best_time(lambda: np.copyto(dst, src), repeat)


def best_time(fn, repeat: int, warm_up: bool = True) -> float:
    """Best wall-clock seconds of ``repeat`` calls."""
    return best_times(fn, repeat, warm_up)[0]


def best_times(fn, repeat: int, warm_up: bool = True) -> tuple[float, float]:
    """(best wall seconds, best process CPU seconds summed over threads) of ``repeat`` calls.

    On a shared machine the CPU time is the steadier number: it does not count the time the
    process waits for a core.
    """
    if warm_up:
        fn()  # Numba compile / cache load, first-touch of buffers
    wall = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2n", type=int, default=LOG2N, help="elements per call = 2**log2n")
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per case (best is reported)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the (slow) NumPy reference")
    args = parser.parse_args(argv)
    n = 2**args.log2n
    print(f"machine: {machine()}")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average: {load} (others' jobs slow every column alike)")
    bw = copy_bandwidth(n, args.repeat)
    print(f"np.copyto bandwidth at 2^{args.log2n} float32: {bw / 1e9:.1f} GB/s\n")
    header = (f"{'op':<10} {'impl':<16} {'wall ms':>8} {'Melem/s':>9} {'GB/s':>6} {'of copy':>8} "
              f"{'vs torch':>9} {'cpu ms':>8} {'cpu vs torch':>13}")
    print(header)
    print("-" * len(header))
    for op, impls in cases(n).items():
        if args.no_numpy:
            impls.pop("numpy")
        # the reference takes seconds per call: one untimed-warm-up-free call is enough
        times = {name: best_times(fn, 1, warm_up=False) if name == "numpy" else best_times(fn, args.repeat)
                 for name, fn in impls.items()}
        for name, (sec, cpu) in times.items():
            gbs = BYTES_PER_ELEMENT[op] * n / sec
            ratio = f"{times['torch'][0] / sec:8.1f}x" if "torch" in times else "       -"
            cpu_ratio = f"{times['torch'][1] / cpu:12.1f}x" if "torch" in times else "            -"
            print(f"{op:<10} {name:<16} {sec * 1e3:8.2f} {n / sec / 1e6:9.1f} {gbs / 1e9:6.1f} "
                  f"{gbs / bw:8.0%} {ratio:>9} {cpu * 1e3:8.2f} {cpu_ratio:>13}")
    print("\ntorch = torch.randn / diffusers add_noise + torch.randn / "
          "diffusers DDPMScheduler.step (generator);"
          "\n'numba' writes into a preallocated out=, 'numba (new out)' allocates its result.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
