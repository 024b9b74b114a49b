"""The end-to-end demo: train, sample, evaluate, draw, report (``fastddpm demo``).

``run_demo()`` with no arguments trains the default model on the 2-D butterfly, draws 10,000
samples with ddpm-1000 and the fast sampler (``FAST_SAMPLER``: dpmpp2m-sde-20), compares both
with fresh data, trains the 1-D constant-5.0 model of the introduction and follows its samples
from x_T to x_0, and writes into ``out``:

    model/                    checkpoint (config.json, model/ema safetensors)
    constant_model/           the 1-D constant-5.0 checkpoint
    samples_ddpm-1000.npy     samples in data space [n, D]
    samples_dpmpp2m-sde-20.npy
    metrics.json              every number of the report
    report.md                 metrics table and figure links
    schedules.png forward.png forward_path_1d.png reverse.png reverse_paths_1d.png
    samples.png loss.png

Budgets: ``full`` (the default model, under 3 minutes on two CPU cores) and ``ci`` (a few
hundred iterations and 2,000 samples, for tests; same files, rougher figures).

``distill=True`` (``fastddpm demo --distill``) also distils the model into a 4-step student
(fastddpm.distill's default method) and samples it at 4 and 2 steps beside ddpm-1000 and
the fast sampler (``student/``, ``samples_student-4.npy``, ``samples_student-2.npy``, in the report,
the samples figure and metrics.json). It is off by default: the distillation alone takes about
five times as long as the training (docs/training.md, "Distillation": 303 CPU s, 277 s wall for
the butterfly on the 2-core EPYC), which takes the demo past its 3-minute budget on two cores.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, metrics, plots
from ._io import atomic_open, write_text
from .data import DATASETS, Dataset, Normalization, load_dataset
from .machine import cpu_model
from .pipelines import Pipeline
from .sampling import make_plan
from .sampling.options import FAST_SAMPLER
from .schedule import Schedule

# the default fast sampler (its one home, with the measurements: fastddpm/sampling/options.py)
SAMPLERS = (("ddpm", 1000), FAST_SAMPLER)  # (sampler, steps), each with the sampler's default spacing
# One torch/Numba thread for training, as `fastddpm train --threads 1` (its default): these nets
# are too small to gain from intra-op threads, and on a shared 2-core machine two threads ran
# 10-14x slower (docs/training.md, Performance).
TRAIN_THREADS = 1
METRICS = ("sliced_wasserstein", "sw_baseline", "sw_ratio", "precision", "recall")
FORWARD_TS = (10, 25, 50, 100, 200, 500)
FIGURES = ("schedules", "forward", "forward_path_1d", "reverse", "reverse_paths_1d", "samples", "loss")
FIGURE_TITLES = {
    "schedules": "Noise schedules compared", "forward": "Forward process",
    "forward_path_1d": "Forward process of x₀ = 5.0", "reverse": "Reverse process",
    "reverse_paths_1d": "Reverse paths of the constant-5.0 model", "samples": "Samples vs data",
    "loss": "Training loss",
}
# The 1-D example of the introduction: every sample is 5.0. Its schedule reaches noise
# (ᾱ_T ≈ 4e-5), so x_T ~ N(0, 1) really is where the reverse process starts; the text's
# T = 50, β_T = 0.01 ends at ᾱ_T = 0.78 and never forgets x_0.
CONSTANT_VALUE = 5.0
CONSTANT_SCHEDULE = {"name": "linear", "num_steps": 100, "beta_start": 1e-4, "beta_end": 0.2}


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work the demo does. ``iters=None``: the training default of ``fastddpm train``."""

    iters: int | None
    n_samples: int
    n_eval: int
    constant_iters: int
    constant_samples: int
    distill_iters: int | None = None  # None: fastddpm.distill's default


BUDGETS = {
    "full": Budget(iters=None, n_samples=10_000, n_eval=10_000, constant_iters=2000, constant_samples=2000),
    "ci": Budget(iters=300, n_samples=1000, n_eval=1000, constant_iters=200, constant_samples=200, distill_iters=40),
}
STUDENT_STEPS = (4, 2)  # the distilled student is sampled at these steps (--distill)


@dataclasses.dataclass
class DemoResult:
    out: Path
    report: Path
    figures: dict[str, Path]
    samples: dict[str, Path]
    checkpoint: Path
    metrics: dict       # per sampler: sliced_wasserstein, sw_baseline, sw_ratio, precision, recall
    constant: dict      # the constant-5.0 model's samples: mean, std, abs_mean_error


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def make_data(name: str, n: int, *, seed: int, model_space: bool = False) -> np.ndarray:
    """``n`` points of a built-in dataset (``fastddpm.data``), in data space by default."""
    ds = load_dataset(name, n, seed=seed)
    return ds.x if model_space else ds.raw()


def read_losses(source) -> dict:
    """Training losses from a checkpoint directory (its train state) or a .json/.npy/.csv file.

    Returns ``{"step": [...], "loss": [...]}``.
    """
    path = Path(source)
    if path.is_dir():
        from .checkpoint import read_config

        cfg = read_config(path)
        state = cfg.get("train_state") or {}
        losses = state.get("losses")
        if losses is None:
            state_file = path / "train_state.json"
            if state_file.exists():
                losses = json.loads(state_file.read_text()).get("losses")
        if not losses:
            raise ValueError(f"checkpoint {path} records no training losses "
                             "(it was not written by fastddpm.train, or with an older version)")
    elif path.suffix == ".json":
        obj = json.loads(path.read_text())
        if isinstance(obj, dict) and "loss" in obj:
            return {"step": list(obj.get("step", range(1, len(obj["loss"]) + 1))), "loss": list(obj["loss"])}
        losses = obj["losses"] if isinstance(obj, dict) else obj
    elif path.suffix == ".npy":
        losses = np.load(path, allow_pickle=False).reshape(-1).tolist()
    elif path.suffix in (".csv", ".txt"):
        losses = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=1).reshape(-1).tolist()
    elif not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a checkpoint directory or a losses file")
    else:
        raise ValueError(f"cannot read losses from {path}: use a checkpoint directory or a .json/.npy/.csv file")
    return {"step": list(range(1, len(losses) + 1)), "loss": [float(v) for v in losses]}


def evaluate(samples: np.ndarray, dataset: str, *, n_ref: int, seed: int = 0) -> dict:
    """Scalar metrics of :func:`fastddpm.metrics.evaluate` (samples in data space vs fresh data)."""
    m = metrics.evaluate(samples, dataset, n_ref=n_ref, seed=seed)
    out = {k: float(m[k]) for k in METRICS}
    if dataset in metrics.SUPPORT_DATASETS:
        q = metrics.support_quantiles(samples, dataset)
        out.update({"support_p50": q["p50"], "support_p90": q["p90"]})
    return out


def _sample(pipe, n, sampler, steps, *, seed, progress, trajectory=None):
    """Samples in data space from a Pipeline (and the trajectory, also in data space)."""
    kw = {} if trajectory is None else {"return_trajectory": True, "trajectory_steps": trajectory}
    return pipe.sample(n, sampler=sampler, steps=steps, seed=seed, progress=progress, **kw)


def plot_reverse_from_checkpoint(checkpoint, out, *, n=2000, sampler="ddpm", steps=None, panels=6,
                                 seed=0, paths_out=None, progress=True) -> list[str]:
    """Sample ``n`` points from a checkpoint with a trajectory and draw the reverse process
    (and, for a 1-D model, the per-sample paths). Returns the written paths."""
    pipe = Pipeline.from_checkpoint(checkpoint)
    K = make_plan(pipe.schedule, sampler, steps).num_steps
    x, traj = _sample(pipe, n, sampler, steps, seed=seed, progress=progress,
                      trajectory=reverse_positions(K, panels))
    written = [plots.plot_reverse(out, list(traj.x), traj.timesteps,
                                  title=f"Reverse process, {sampler}-{K}: x_T → x₀")]
    if plots.data_kind(np.asarray(x)) == "1d":
        dense = _sample(pipe, min(n, 500), sampler, steps, seed=seed, progress=False, trajectory="all")[1]
        paths_out = paths_out or str(Path(out).with_name(Path(out).stem + "_paths.png"))
        written.append(plots.plot_paths_1d(paths_out, list(dense.x), dense.timesteps))
    return written


def reverse_positions(num_steps: int, panels: int = 6) -> list[int]:
    """Loop positions for reverse-process panels: x_T, then ever closer to the end, where the
    structure appears (with K steps: 0, K/2, 3K/4, …, K)."""
    panels = max(2, int(panels))
    remaining = [0.5 ** k for k in range(panels - 1)] + [0.0]
    return sorted({int(round(num_steps * (1 - r))) for r in remaining})


def run_demo(dataset: str = "butterfly", out="runs/demo", budget: str = "full", *, seed: int = 0,
             device: str = "cpu", progress: bool = True, log: Callable[[str], None] | None = None,
             distill: bool = False) -> DemoResult:
    """Train, sample (ddpm-1000 and FAST_SAMPLER), evaluate, draw and report; see the module doc.
    ``distill``: also a 4-step distilled student, sampled at 4 and 2 steps."""
    from .training import train

    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}; got {budget!r}")
    if dataset not in DATASETS or dataset == "digits":
        raise ValueError(f"dataset must be one of {', '.join(d for d in DATASETS if d != 'digits')}; "
                         f"got {dataset!r}")
    b = BUDGETS[budget]
    log = log or (lambda msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    figures: dict[str, Path] = {}

    # 1. Train the default model (the defaults of `fastddpm train`).
    log(f"[1/5] training the default model on {dataset} ({budget} budget)")
    kw = {} if b.iters is None else {"iters": b.iters}
    tic = time.perf_counter()
    res = train(dataset, out / "model", seed=seed, device=device, progress=progress, **kw)
    timings["train_s"] = time.perf_counter() - tic
    figures["loss"] = Path(plots.plot_loss(out / "loss.png", res.losses,
                                           title=f"Training loss, {dataset} ({len(res.losses):,} iterations)"))
    pipe = Pipeline.from_checkpoint(res.checkpoint, device=device)   # what a user loads: EMA weights

    # 2. Sample with both samplers, in data space; keep a trajectory of the ddpm run.
    log(f"[2/5] sampling {b.n_samples:,} points with " + " and ".join(f"{s}-{k}" for s, k in SAMPLERS))
    samples, sample_files, traj = {}, {}, None
    for sampler, steps in SAMPLERS:
        name = f"{sampler}-{steps}"
        tic = time.perf_counter()
        if traj is None:
            x, traj = _sample(pipe, b.n_samples, sampler, steps, seed=seed, progress=progress,
                              trajectory=reverse_positions(steps))
            traj_name = name
        else:
            x = _sample(pipe, b.n_samples, sampler, steps, seed=seed, progress=progress)
        timings[f"sample_{name}_s"] = time.perf_counter() - tic
        samples[name] = np.asarray(x)
        sample_files[name] = out / f"samples_{name}.npy"
        _atomic_save_npy(sample_files[name], samples[name])

    if distill:  # the model distilled into a few-step student (fastddpm.distill's default method)
        from .distillation import consistency_timesteps, distill as distill_model

        log(f"[2/5] distilling the model into a {STUDENT_STEPS[0]}-step student and sampling it")
        tic = time.perf_counter()
        dres = distill_model(res.checkpoint, out / "student", steps=STUDENT_STEPS[0], seed=seed, device=device,
                             progress=progress, **({} if b.distill_iters is None else {"iters": b.distill_iters}))
        timings["distill_s"] = time.perf_counter() - tic
        spipe = Pipeline.from_checkpoint(dres.checkpoint, device=device)
        for steps in STUDENT_STEPS:
            name = f"student-{steps}"
            spec = {} if steps == STUDENT_STEPS[0] else (
                {"steps": steps, "spacing": consistency_timesteps(res.schedule.num_steps, steps)}
                if dres.sampling["sampler"] == "consistency" else None)
            if spec is None:  # a progressive student samples at its own steps only
                continue
            tic = time.perf_counter()
            samples[name] = np.asarray(spipe.sample(b.n_samples, seed=seed, progress=progress, **spec))
            timings[f"sample_{name}_s"] = time.perf_counter() - tic
            sample_files[name] = out / f"samples_{name}.npy"
            _atomic_save_npy(sample_files[name], samples[name])

    # 3. Evaluate against fresh data (seeds training did not use); fastddpm.metrics also
    #    measures two fresh data sets against each other: the floor a perfect model reaches.
    log(f"[3/5] evaluating against {b.n_eval:,} fresh data points")
    metrics = {name: evaluate(x, dataset, n_ref=b.n_eval, seed=seed) for name, x in samples.items()}

    # 4. The 1-D constant-5.0 example: forward noise paths, a tiny model, its reverse paths.
    log("[4/5] the 1-D constant-5.0 example")
    const_sched = Schedule.create(**CONSTANT_SCHEDULE)
    figures["forward_path_1d"] = Path(plots.plot_forward_path_1d(out / "forward_path_1d.png", const_sched,
                                                                 CONSTANT_VALUE, seed=seed))
    tic = time.perf_counter()
    cres = train(_constant_dataset(b.constant_samples * 5), out / "constant_model", schedule=const_sched,
                 iters=b.constant_iters, seed=seed, device=device, progress=progress)
    timings["train_constant_s"] = time.perf_counter() - tic
    cpipe = Pipeline.from_checkpoint(cres.checkpoint, device=device)
    cx, ctraj = _sample(cpipe, b.constant_samples, "ddpm", None, seed=seed, progress=False, trajectory="all")
    cx = np.asarray(cx, dtype=np.float64).reshape(-1)
    constant = {"mean": float(cx.mean()), "std": float(cx.std()),
                "abs_mean_error": float(abs(cx.mean() - CONSTANT_VALUE))}
    figures["reverse_paths_1d"] = Path(plots.plot_paths_1d(
        out / "reverse_paths_1d.png", list(ctraj.x), ctraj.timesteps, target=CONSTANT_VALUE,
        title=f"Constant-5.0 model: {b.constant_samples} samples from x_T ~ N(0, 1) to x₀ "
              f"(mean {cx.mean():.4f}, std {cx.std():.4f})"))

    # 5. Figures and the report.
    log("[5/5] drawing figures and writing the report")
    schedule, ds = res.schedule, res.dataset
    fresh = make_data(dataset, b.n_samples, seed=3 * 10**6 + seed)
    figures["schedules"] = Path(plots.plot_schedules(out / "schedules.png", num_steps=schedule.num_steps))
    ts = sorted({min(t, schedule.num_steps - 1) for t in FORWARD_TS} | {schedule.num_steps - 1})
    figures["forward"] = Path(plots.plot_forward(
        out / "forward.png", schedule, ds.x[:5000], ts, seed=seed,
        title=f"Forward process q(x_t | x₀) on {dataset} (normalised, as the network sees it), "
              f"{schedule.name} schedule"))
    figures["reverse"] = Path(plots.plot_reverse(
        out / "reverse.png", list(traj.x), traj.timesteps, data=fresh,
        title=f"Reverse process, {traj_name}: x_T → x₀"))
    figures["samples"] = Path(plots.plot_samples(
        out / "samples.png", samples, fresh,
        title=f"{dataset}: generated samples vs fresh data ({b.n_samples:,} each)"))
    info = {
        "dataset": dataset, "budget": budget, "seed": seed, "device": device,
        "train": {"iters": len(res.losses), "batch_size": res.train_config.get("batch_size"),
                  "model": res.train_config.get("model"), "schedule": schedule.to_config(),
                  "samples_per_s": res.samples_per_s, "final_loss": float(np.mean(res.losses[-100:]))},
        "timings_s": timings, "metrics": metrics, "constant": constant,
        "student": None if not distill else {"sampling": dres.sampling, "method": dres.config["method"],
                                             "iters": len(dres.losses), "checkpoint": "student/"},
        "machine": machine_name(), "fastddpm_version": _version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(out / "metrics.json", json.dumps(info, indent=2, default=_json_default) + "\n")
    report = out / "report.md"
    write_text(report, _report(info, figures, sample_files, out))
    return DemoResult(out=out, report=report, figures=figures, samples=sample_files,
                      checkpoint=Path(res.checkpoint), metrics=metrics, constant=constant)


def _constant_dataset(n: int):
    """The constant-5.0 data with identity normalisation, so the model itself maps N(0, 1)
    noise to 5.0 as in the introduction (the built-in dataset would learn the point 0)."""
    return Dataset("constant", np.full((n, 1), CONSTANT_VALUE, dtype=np.float32), Normalization.identity(1))


def _version() -> str:
    return __version__


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    return str(obj)


def machine_name() -> str:
    """'AMD EPYC 7B13, 2 cores, Linux' (or the GPU name when torch sees one)."""
    name = f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}"
    try:
        import torch

        if torch.cuda.is_available():
            name += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return name


def _report(info: dict, figures: dict, sample_files: dict, out: Path) -> str:
    m, t, tr = info["metrics"], info["timings_s"], info["train"]
    lines = [
        f"# fastddpm demo: {info['dataset']}",
        "",
        f"fastddpm {info['fastddpm_version']}, {info['date']}, on {info['machine']} "
        f"(device {info['device']}, budget `{info['budget']}`, seed {info['seed']}).",
        "",
        "## Training",
        "",
        f"- {tr['iters']:,} iterations, batch {tr['batch_size']}, {tr['samples_per_s']:,.0f} samples/s, "
        f"{t['train_s']:.1f} s; final loss (mean of the last 100) {tr['final_loss']:.4f}.",
        f"- model: `{json.dumps(tr['model'], default=_json_default)}`",
        f"- schedule: `{json.dumps(tr['schedule'], default=_json_default)}`",
        "- checkpoint: [`model/`](model/) (sampled with its EMA weights)",
        "",
        "## Samples against fresh data",
        "",
        "Sliced Wasserstein distance to a fresh data set of the same size (lower is better); the "
        "floor is the distance between two fresh data sets, what a perfect model scores, and the "
        "ratio divides by it (1.0 is perfect). Precision / recall: k-NN coverage (fastddpm.metrics).",
        "",
        "Distance to support: p50 / p90 of each sample's distance to the noise-free support in data "
        "units (`fastddpm.metrics.support_quantiles`; the butterfly: distance to the curve).",
        "",
        "| sampler | sliced Wasserstein | floor (data vs data) | ratio | precision | recall "
        "| support p50 | support p90 | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in m.items():
        sup = (f"{v['support_p50']:.4f} | {v['support_p90']:.4f}" if "support_p50" in v else "– | –")
        lines.append(f"| {k} | {v['sliced_wasserstein']:.4f} | {v['sw_baseline']:.4f} | {v['sw_ratio']:.2f} "
                     f"| {v['precision']:.3f} | {v['recall']:.3f} | {sup} | {t[f'sample_{k}_s']:.1f} |")
    if info.get("student"):
        st = info["student"]
        lines += ["", f"`student-K`: the model distilled into a {st['sampling']['steps']}-step student "
                      f"(`fastddpm distill`, method {st['method']}, {st['iters']:,} iterations, "
                      f"{t['distill_s']:.1f} s; checkpoint [`student/`](student/)) sampled with K network calls "
                      f"at timesteps {st['sampling']['spacing']} (or the first of them)."]
    c = info["constant"]
    lines += ["", "## The constant-5.0 example", "",
              f"A 1-D model trained on data that is always {CONSTANT_VALUE} (schedule "
              f"`{json.dumps(CONSTANT_SCHEDULE)}`, {t['train_constant_s']:.1f} s of training), sampled "
              f"with ddpm-{CONSTANT_SCHEDULE['num_steps']} from x_T ~ N(0, 1): mean {c['mean']:.4f}, "
              f"std {c['std']:.4f}. Checkpoint: [`constant_model/`](constant_model/).",
              "", "## Files", ""]
    lines += [f"- samples `{k}` (data space): [`{p.name}`]({p.name})" for k, p in sample_files.items()]
    lines += ["- every number above: [`metrics.json`](metrics.json)", "", "## Figures", ""]
    for key in FIGURES:
        if key in figures:
            rel = Path(os.path.relpath(figures[key], out)).as_posix()
            lines += [f"### {FIGURE_TITLES[key]}", "", f"![{FIGURE_TITLES[key]}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"
