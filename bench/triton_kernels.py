"""Triton kernel throughput: fastddpm's q_sample and ddpm_step against torch eager (diffusers'
``DDPMScheduler.add_noise`` and ``DDPMScheduler.step``), and against the GPU's own
device-to-device copy bandwidth, at 2^20 … 2^28 float32 elements.

    python bench/triton_kernels.py                  # CUDA: full table (markdown) on stdout
    python bench/triton_kernels.py --json out.json  # also write the rows as JSON
    python bench/triton_kernels.py --sweep-block    # step at 2^24 for several BLOCK sizes

Bytes counted as useful traffic (per element, float32; half for bfloat16): ddpm_step and the
loop's update 12 (read x_t and the model output, write x_prev; the noise comes from registers);
dpmpp2m 20 (also read and write x̂0_prev); q_sample 12 (read x0, write x_t and ε); copy 8
(read + write). "of copy" = GB/s ÷ the copy's GB/s at the same size and dtype, measured in
the same process. Uniform and per-sample t, float32 and bfloat16; the L2 is flushed (256 MB
written) before every timed rep, so the bytes come from HBM. Without a CUDA device this prints why and exits 0; ``--device cpu`` with
TRITON_INTERPRET=1 runs a tiny smoke pass of the script itself (timings meaningless).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

STEP_BYTES = 12
Q_SAMPLE_BYTES = 12
COPY_BYTES = 8
# The H200's L2 is 60 MB: 2^20-2^23 float32 tensors (x, model output, out) fit in it, so a
# rep that rereads them from the previous one measures L2, not HBM. Before every rep a 256 MB
# buffer is written (outside the timed events), which evicts them.
FLUSH_BYTES = 256 << 20
_FLUSH = {}


def _flush_l2(device: torch.device) -> None:
    if device.type != "cuda":
        return
    buf = _FLUSH.get(device)
    if buf is None:
        buf = _FLUSH[device] = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    buf.zero_()


def _timer(device: torch.device, fn, *, warmup: int, reps: int) -> float:
    """Median seconds per call; CUDA events around each call (the GPU's own time), L2 flushed
    before each."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            _flush_l2(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cases(n: int, device: torch.device, dtype, schedule, scheduler):
    """(op, implementation, bytes per element, is the torch-eager baseline, callable) at n
    elements of ``dtype``, as [n / 4096, 4096] tensors."""
    import fastddpm
    from fastddpm.kernels.triton.update import LoopUpdate
    from fastddpm.sampling.plan import make_plan

    size = torch.empty((), dtype=dtype).element_size()
    batch = max(1, n // 4096)
    shape = (batch, n // batch)
    x = torch.randn(shape, device=device).to(dtype)
    m = torch.randn(shape, device=device).to(dtype)
    out = torch.empty_like(x)
    noise = torch.empty_like(x)
    x0_prev = torch.zeros_like(x)
    t_batch = torch.randint(0, schedule.num_steps, (batch,), device=device)
    src, dst = x.reshape(-1), out.reshape(-1)
    # The loop's kernel: coefficient row k of a plan's float32 table, k/offset/seed in memory.
    loops = {}
    for sampler, steps, k in (("ddpm", 1000, 500), ("dpmpp2m", 20, 10)):
        plan = make_plan(schedule, sampler, steps)
        coef = torch.tensor(plan.coef, dtype=torch.float32, device=device)
        ctl = torch.tensor([k, 0, 1], dtype=torch.int64, device=device)
        loops[sampler] = LoopUpdate(sampler, coef, ctl, n, n // batch, prediction="epsilon", noise=plan.noisy)
    yield "copy", "torch copy_", 2 * size, False, lambda: dst.copy_(src)
    yield ("ddpm_step, uniform t", "fastddpm triton (z in-kernel)", 3 * size, False,
           lambda: fastddpm.ddpm_step(schedule, x, m, 500, seed=1, stream=7, out=out, backend="triton"))
    yield ("ddpm_step, per-sample t", "fastddpm triton (z in-kernel, float32 rows)", 3 * size, False,
           lambda: fastddpm.ddpm_step(schedule, x, m, t_batch, seed=1, stream=7, out=out, backend="triton"))
    yield ("loop update ddpm, z in-kernel", "fastddpm LoopUpdate (in place)", 3 * size, False,
           lambda: loops["ddpm"](x, m))
    yield ("loop update dpmpp2m", "fastddpm LoopUpdate (in place)", 5 * size, False,
           lambda: loops["dpmpp2m"](x, m, x0_prev))
    if dtype == torch.float32:
        if scheduler is not None:
            gen = torch.Generator(device=device).manual_seed(0)
            yield ("ddpm_step, uniform t", "diffusers DDPMScheduler.step", STEP_BYTES, True,
                   lambda: scheduler.step(m, 500, x, generator=gen, return_dict=False))
        yield ("q_sample, ε drawn", "fastddpm triton (ε written out)", Q_SAMPLE_BYTES, False,
               lambda: fastddpm.q_sample(schedule, x, t_batch, seed=1, stream=3, out=out, backend="triton"))
        yield ("q_sample, ε given", "fastddpm triton", Q_SAMPLE_BYTES, False,
               lambda: fastddpm.q_sample(schedule, x, t_batch, noise, out=out, backend="triton"))
        if scheduler is not None:
            yield ("q_sample, ε given", "diffusers add_noise", Q_SAMPLE_BYTES, True,
                   lambda: scheduler.add_noise(x, noise, t_batch))


def run(sizes, device, *, warmup, reps, dtypes=(torch.float32, torch.bfloat16)):
    import fastddpm

    try:
        from diffusers import DDPMScheduler
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small",
                                  clip_sample=False)
    except ImportError:  # the GPU image has no diffusers unless its wheel is brought
        scheduler = None
    schedule = fastddpm.Schedule.linear(1000)
    rows = []
    for n in sizes:
        for dtype in dtypes:
            copy_gbs, ref_time, first = None, {}, len(rows)
            for op, impl, nbytes, eager, fn in _cases(n, device, dtype, schedule, scheduler):
                sec = _timer(device, fn, warmup=warmup, reps=reps)
                gbs = n * nbytes / sec / 1e9
                if op == "copy":
                    copy_gbs = gbs
                if eager:
                    ref_time[op] = sec
                rows.append({"n": n, "dtype": str(dtype).replace("torch.", ""), "op": op, "impl": impl,
                             "bytes_per_element": nbytes, "ms": sec * 1e3, "GB/s": gbs,
                             "of_copy": gbs / copy_gbs if copy_gbs else None})
            for row in rows[first:]:
                if row["op"] in ref_time:
                    row["speedup_vs_eager"] = ref_time[row["op"]] / (row["ms"] / 1e3)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def sweep_block(n, device, blocks, *, warmup, reps):
    """ddpm_step at n elements for each BLOCK (num_warps = BLOCK/512, 16 elements per thread)."""
    import importlib

    import fastddpm

    utils = importlib.import_module("fastddpm.kernels.triton.utils")
    original = utils.launch_config
    schedule = fastddpm.Schedule.linear(1000)
    x = torch.randn(n, device=device)
    out = torch.empty_like(x)
    rows = []
    try:
        for block in blocks:
            utils.launch_config = lambda _n, b=block: (b, max(1, min(16, b // 512)))
            sec = _timer(device, lambda: fastddpm.ddpm_step(schedule, x, x, 500, seed=1, out=out,
                                                            backend="triton"), warmup=warmup, reps=reps)
            rows.append({"n": n, "BLOCK": block, "ms": sec * 1e3, "GB/s": n * STEP_BYTES / sec / 1e9})
    finally:
        utils.launch_config = original
    return rows


def _markdown(rows, machine):
    lines = [f"Machine: {machine}", "",
             "| elements | dtype | op | implementation | B/elem | ms | GB/s | of copy | speed-up vs eager |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        of_copy = f"{100 * r['of_copy']:.0f} %" if r.get("of_copy") else ""
        speed = f"{r['speedup_vs_eager']:.2f}×" if "speedup_vs_eager" in r else ""
        lines.append(f"| 2^{r['n'].bit_length() - 1} | {r['dtype']} | {r['op']} | {r['impl']} | "
                     f"{r['bytes_per_element']} | {r['ms']:.3f} | "
                     f"{r['GB/s']:.0f} | {of_copy} | {speed} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--min-log2", type=int, default=20)
    parser.add_argument("--max-log2", type=int, default=28)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--sweep-block", action="store_true", help="only sweep BLOCK for the step at 2^24")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated data dtypes")
    args = parser.parse_args(argv)

    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench/triton_kernels.py: no CUDA device here; nothing measured "
                  "(the Triton kernels need a GPU; see docs/triton.md).")
            return 0
        if interpreting:
            print("bench/triton_kernels.py: TRITON_INTERPRET is set, so Triton would interpret the kernels "
                  "instead of compiling them; unset it to benchmark.")
            return 0
        device = torch.device("cuda")
        machine = f"{torch.cuda.get_device_name()} (torch {torch.__version__}, triton " \
                  f"{__import__('triton').__version__}, CUDA {torch.version.cuda})"
    else:
        if not interpreting:
            print("--device cpu is a smoke test of this script under TRITON_INTERPRET=1; set it first.")
            return 2
        device = torch.device("cpu")
        cpu = platform.processor() or platform.machine()
        machine = f"CPU smoke test under the Triton interpreter ({cpu}); " \
                  "timings are meaningless"
    sizes = [1 << k for k in range(args.min_log2, args.max_log2 + 1)]

    if args.sweep_block:
        rows = sweep_block(1 << min(24, args.max_log2), device, [512, 1024, 2048, 4096, 8192],
                           warmup=args.warmup, reps=args.reps)
        print(f"Machine: {machine}\n\n| BLOCK | ms | GB/s |\n|---:|---:|---:|")
        for r in rows:
            print(f"| {r['BLOCK']} | {r['ms']:.3f} | {r['GB/s']:.0f} |")
    else:
        rows = run(sizes, device, warmup=args.warmup, reps=args.reps,
                   dtypes=tuple(getattr(torch, d) for d in args.dtypes.split(",")))
        print(_markdown(rows, machine))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"machine": machine, "rows": rows}, fh, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
