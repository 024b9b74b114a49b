"""Distillation (issue 24): quality at 1/2/4 steps and CPU time per method, the digits student, and
quality-matched throughput of the butterfly student — each in one process, side by side.

    python bench/distill_bench.py [--sections quality,digits,throughput] [--butterfly CKPT] [--digits CKPT]
                                  [--methods consistency,progressive] [--n 20000] [--throughput-n 1000000]
                                  [--rounds 3] [--workdir DIR] [--json rows.json]

- ``quality``: distil the butterfly checkpoint (default: train the default model first, `fastddpm
  train --dataset butterfly`) with each method's defaults; wall and CPU seconds of the distillation
  (time.process_time: this process's CPU, all threads); then ``--n`` samples (seed 1) of the
  student at 4, 2 and 1 steps — a consistency student at subsets of its trained timesteps
  (fastddpm.distillation.CONSISTENCY_TIMESTEPS), a progressive one from the round that makes
  each step count (one run down to 1 step; its 4- and 2-step rounds' checkpoints kept) — scored
  against the curve (p50 / p90 distance, share beyond 0.5 units) and by sliced Wasserstein over
  the data-vs-data floor; the teacher's ddpm-1000 and dpmpp2m-20 beside them.
- ``digits``: distil the default digits model (consistency, 4 steps) and score 2000 samples of the
  student and of the teacher's ddpm-250 with fastddpm.metrics.digit_scores.
- ``throughput``: ``--throughput-n`` butterfly samples in alternating rounds, batch 8192 for all:
  the 4-step consistency student, the teacher's dpmpp2m-20 and the demo's fast sampler
  (fastddpm.demo.FAST_SAMPLER, dpmpp2m-sde-20) through ``Pipeline.sample``
  (engine="auto": the measured fastest runtime) and diffusers' DPMSolverMultistepScheduler-20
  (dpmsolver++, order 2, log-SNR) on the same torch net handed a stride-0 t; medians, samples/s,
  ratios; each path's quality scored on the first ``--n`` samples of its own output.

Every row names the machine (fastddpm.benchmark.machine) and the load average when it was taken.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def load():
    return round(os.getloadavg()[0], 1)


def butterfly_scores(x, n_ref=20000) -> dict:
    from fastddpm import metrics

    x = np.asarray(x)[:n_ref]
    q = metrics.support_quantiles(x, "butterfly")  # p50 … p99.9, mean, far (share beyond 0.5)
    ev = metrics.evaluate(x, "butterfly", n_ref=min(len(x), n_ref), seed=0)
    return {"p50": q["p50"], "p90": q["p90"], "p99": q["p99"], "p99.9": q["p99.9"], "beyond_0.5": q["far"],
            "max": float(metrics.support_distance(x, "butterfly").max()), "sw_ratio": ev["sw_ratio"]}


def ensure(path, dataset, workdir, log):
    """The checkpoint at ``path``, or the default model trained into workdir (fastddpm.train's defaults)."""
    import fastddpm

    if path:
        return path
    out = os.path.join(workdir, dataset)
    if not os.path.isdir(out):
        print(f"training the default {dataset} model into {out}", file=log)
        fastddpm.train(dataset, out, progress=False)
    return out


def timed_distill(teacher, out, **kw):
    import fastddpm

    load0, w0, c0 = load(), time.perf_counter(), time.process_time()
    r = fastddpm.distill(teacher, out, progress=False, **kw)
    return r, {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "load_start": load0,
               "load_end": load()}


def section_quality(teacher, methods, n, workdir, log):
    import fastddpm
    from fastddpm import checkpoint as ckpt
    from fastddpm.distillation import consistency_timesteps

    rows = []
    t = fastddpm.load(teacher)
    pipe_t = fastddpm.Pipeline(t)
    for sampler, steps in (("ddpm", 1000), ("dpmpp2m", 20)):
        x = pipe_t.sample(n, sampler=sampler, steps=steps, seed=1, progress=False)
        rows.append({"section": "quality", "path": f"teacher {sampler}-{steps}", "steps": steps,
                     **butterfly_scores(x), "load": load()})
        print(rows[-1], file=log, flush=True)
    for method in methods:
        out = os.path.join(workdir, f"student-{method}")
        if method == "progressive":  # one run down to 1 step; the 4- and 2-step rounds' students kept
            kept, real_save = {}, ckpt.save

            def save(path, *args, **kwargs):
                result = real_save(path, *args, **kwargs)
                steps = (kwargs.get("sampling") or {}).get("steps")
                if steps in (4, 2) and steps not in kept and kwargs.get("train_state", {}).get("step", 0) % \
                        kwargs["train_config"]["iters"] == 0:
                    kept[steps] = os.path.join(workdir, f"student-progressive-{steps}")
                    shutil.rmtree(kept[steps], ignore_errors=True)
                    shutil.copytree(path, kept[steps])
                return result

            from fastddpm import distillation
            defaults = distillation.METHOD_DEFAULTS[("progressive", "vector")]
            ckpt.save = save
            try:
                r, cost = timed_distill(teacher, out, method=method, steps=1, checkpoint_every=defaults["iters"])
            finally:
                ckpt.save = real_save
            rounds = len(r.config["rounds"])
            students = {1: out, **kept}
            for steps, path in sorted(students.items(), reverse=True):
                done = int(np.log2(defaults["teacher_steps"] // steps))  # rounds that make this student
                x = fastddpm.Pipeline.from_checkpoint(path).sample(n, seed=1, progress=False)
                rows.append({"section": "quality", "path": f"progressive student", "steps": steps,
                             **butterfly_scores(x), "load": load(),
                             "distill_wall_s": cost["wall_s"] * done / rounds, "distill_cpu_s": cost["cpu_s"] * done / rounds})
                print(rows[-1], file=log, flush=True)
        else:
            r, cost = timed_distill(teacher, out, method=method, steps=4)
            pipe = fastddpm.Pipeline.from_checkpoint(out)
            for steps in (4, 2, 1):
                spacing = consistency_timesteps(1000, steps)
                x = pipe.sample(n, seed=1, progress=False, sampler="consistency", steps=steps, spacing=spacing)
                rows.append({"section": "quality", "path": f"{method} student", "steps": steps, "timesteps": spacing,
                             **butterfly_scores(x), "load": load(),
                             "distill_wall_s": cost["wall_s"], "distill_cpu_s": cost["cpu_s"]})
                print(rows[-1], file=log, flush=True)
    return rows


def section_score(teacher, workdir, n, log):
    """Score the students a ``quality`` run left in ``workdir`` again (same seed and n), with the
    teacher's references: for re-scoring without distilling again."""
    import fastddpm
    from fastddpm.distillation import consistency_timesteps

    rows = []
    pipe_t = fastddpm.Pipeline.from_checkpoint(teacher)
    for sampler, steps in (("ddpm", 1000), ("dpmpp2m", 20), ("dpmpp2m-sde", 20), ("ddim", 4), ("dpmpp2m", 4)):
        x = pipe_t.sample(n, sampler=sampler, steps=steps, seed=1, progress=False)
        rows.append({"section": "score", "path": f"teacher {sampler}-{steps}", "steps": steps, **butterfly_scores(x),
                     "load": load()})
        print(rows[-1], file=log, flush=True)
    cons = os.path.join(workdir, "student-consistency")
    if os.path.isdir(cons):
        pipe = fastddpm.Pipeline.from_checkpoint(cons)
        for steps in (4, 2, 1):
            x = pipe.sample(n, seed=1, progress=False, sampler="consistency", steps=steps,
                            spacing=consistency_timesteps(1000, steps))
            rows.append({"section": "score", "path": "consistency student", "steps": steps, **butterfly_scores(x),
                         "load": load()})
            print(rows[-1], file=log, flush=True)
    for steps, name in ((4, "student-progressive-4"), (2, "student-progressive-2"), (1, "student-progressive")):
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            x = fastddpm.Pipeline.from_checkpoint(path).sample(n, seed=1, progress=False)
            rows.append({"section": "score", "path": "progressive student", "steps": steps, **butterfly_scores(x),
                         "load": load()})
            print(rows[-1], file=log, flush=True)
    return rows


def section_digits(teacher, workdir, log, method="consistency", n=2000):
    import fastddpm
    from fastddpm.metrics import digit_scores

    out = os.path.join(workdir, f"digits-student-{method}")
    r, cost = timed_distill(teacher, out, method=method, steps=4)
    rows = []
    for name, pipe, kw in (("teacher ddpm-250", fastddpm.Pipeline.from_checkpoint(teacher), {"sampler": "ddpm", "steps": 250}),
                           (f"{method} student 4 steps", fastddpm.Pipeline.from_checkpoint(out), {})):
        x = pipe.sample(n, seed=1, progress=False, **kw)
        s = digit_scores(x)
        rows.append({"section": "digits", "path": name, "confident": s["confident"],
                     "class_hist_max_dev": s["class_hist_max_dev"], "frechet": s["frechet"], "load": load(),
                     **({"distill_wall_s": cost["wall_s"], "distill_cpu_s": cost["cpu_s"]} if "student" in name else {})})
        print(rows[-1], file=log, flush=True)
    return rows


def section_throughput(teacher, student, n, n_score, rounds, log, spacings=()):
    import torch

    import fastddpm
    from bench.net_throughput import diffusers_dpm_loop
    from fastddpm.demo import FAST_SAMPLER

    t = fastddpm.load(teacher)
    pipe_t, pipe_s = fastddpm.Pipeline(t), fastddpm.Pipeline.from_checkpoint(student)
    batch = 8192
    outs = {}
    fns = {
        "student consistency-4 (Pipeline, engine auto)": lambda: pipe_s.sample(n, batch_size=batch, progress=False),
        **{f"student consistency-{len(sp)} at {sp} (Pipeline, engine auto)":
           (lambda sp=sp: pipe_s.sample(n, batch_size=batch, progress=False, sampler="consistency", steps=len(sp),
                                        spacing=list(sp))) for sp in spacings},
        "teacher dpmpp2m-20 (Pipeline, engine auto)": lambda: pipe_t.sample(n, sampler="dpmpp2m", steps=20,
                                                                           batch_size=batch, progress=False),
        f"teacher {FAST_SAMPLER[0]}-{FAST_SAMPLER[1]} (Pipeline, engine auto; the demo's fast sampler)":
            lambda: pipe_t.sample(n, sampler=FAST_SAMPLER[0], steps=FAST_SAMPLER[1], batch_size=batch, progress=False),
        "diffusers DPMSolverMultistep-20, torch net, shared t": lambda: t.normalization.denormalize(
            diffusers_dpm_loop(t.model, t.schedule, n, 20, batch, t.prediction).numpy()),
    }
    for pipe in (pipe_s, pipe_t):  # warm-up: engine choice (measured once, cached), JIT
        pipe.sample(64, batch_size=batch, progress=False)
    times = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for r in range(rounds):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
            cpus[k].append(time.process_time() - c0)
        print(f"  throughput round {r + 1}/{rounds} (load {load()})", file=log, flush=True)
    rows = []
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k in fns:
        rows.append({"section": "throughput", "path": k, "n": n, "s_median": med[k], "s_min": min(times[k]),
                     "s_all": times[k], "cpu_s_median": float(np.median(cpus[k])), "samples_per_s": n / med[k],
                     "x_vs_dpmpp2m20": med["teacher dpmpp2m-20 (Pipeline, engine auto)"] / med[k],
                     "x_vs_diffusers": med["diffusers DPMSolverMultistep-20, torch net, shared t"] / med[k],
                     **butterfly_scores(np.asarray(outs[k])[:n_score]), "load": load(), "rounds": rounds,
                     "torch_threads": torch.get_num_threads()})
        print(rows[-1], file=log, flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default="quality,digits,throughput")
    p.add_argument("--butterfly", default=None, help="teacher checkpoint (default: train the default model)")
    p.add_argument("--digits", default=None, help="digits teacher checkpoint (default: train the default model)")
    p.add_argument("--methods", default="consistency,progressive")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--throughput-n", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--student-spacing", action="append", default=[], metavar="T1,T2,...",
                   help="throughput: also the student at these of its timesteps (repeatable), e.g. 999,199,49")
    p.add_argument("--workdir", default=None)
    p.add_argument("--student", default=None, help="throughput: the 4-step student checkpoint (default: "
                   "WORKDIR/student-consistency, distilled when absent)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from fastddpm import machine

    log = sys.stderr
    workdir = args.workdir or tempfile.mkdtemp(prefix="distill-bench-")
    os.makedirs(workdir, exist_ok=True)
    info = {"cpu": machine.cpu_model(), **{k: v for k, v in machine.cpu_id().items()},
            "avx512": machine.cpu_features().get("avx512f"), "cores": machine.cores(), "versions": machine.versions()}
    print(json.dumps(info), file=log)
    sections = args.sections.split(",")
    rows = []
    butterfly = ensure(args.butterfly, "butterfly", workdir, log) if {"quality", "score", "throughput"} & set(sections) \
        else None
    if "quality" in sections:
        rows += section_quality(butterfly, args.methods.split(","), args.n, workdir, log)
    if "score" in sections:
        rows += section_score(butterfly, workdir, args.n, log)
    if "digits" in sections:
        rows += section_digits(ensure(args.digits, "digits", workdir, log), workdir, log)
    if "throughput" in sections:
        student = args.student or os.path.join(workdir, "student-consistency")
        if not os.path.isdir(student):
            timed_distill(butterfly, student, method="consistency", steps=4)
        rows += section_throughput(butterfly, student, args.throughput_n, args.n, args.rounds, log,
                                   [tuple(int(v) for v in sp.split(",")) for sp in args.student_spacing])
    for r in rows:
        print(json.dumps({**r, "cpu": info["cpu"], "family": info.get("family"), "model": info.get("model")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
