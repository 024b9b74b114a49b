"""The end-to-end demo: train, sample, evaluate, draw, report (``fastddpm demo``).

``run_demo()`` with no arguments trains the default model on the 2-D butterfly, draws 10,000
samples with ddpm-1000 and dpmpp2m-20, compares both with fresh data, trains the 1-D
constant-5.0 model of the introduction and follows its samples from x_T to x_0, and writes
into ``out``:

    model/                    checkpoint (config.json, model/ema safetensors)
    constant_model/           the 1-D constant-5.0 checkpoint
    samples_ddpm-1000.npy     samples in data space [n, D]
    samples_dpmpp2m-20.npy
    metrics.json              every number of the report
    report.md                 metrics table and figure links
    schedules.png forward.png forward_path_1d.png reverse.png reverse_paths_1d.png
    samples.png loss.png

Budgets: ``full`` (the default model, under 3 minutes on two CPU cores) and ``ci`` (a few
hundred iterations and 2,000 samples, for tests; same files, rougher figures).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import plots
from .schedule import Schedule

SAMPLERS = (("ddpm", 1000), ("dpmpp2m", 20))
FORWARD_TS = (10, 25, 50, 100, 200, 500)
FIGURES = ("schedules", "forward", "forward_path_1d", "reverse", "reverse_paths_1d", "samples", "loss")
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


BUDGETS = {
    "full": Budget(iters=None, n_samples=10_000, n_eval=10_000, constant_iters=2000, constant_samples=2000),
    "ci": Budget(iters=300, n_samples=1000, n_eval=1000, constant_iters=200, constant_samples=200),
}


@dataclasses.dataclass
class DemoResult:
    out: Path
    report: Path
    figures: dict[str, Path]
    samples: dict[str, Path]
    checkpoint: Path
    metrics: dict


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_data(name: str, n: int, *, seed: int, model_space: bool = False) -> np.ndarray:
    """``n`` points of a built-in dataset (``fastddpm.data``), in data space by default."""
    from .data import load_dataset

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


def evaluate(samples: np.ndarray, data: np.ndarray, *, seed: int = 0) -> dict:
    """The metrics of fastddpm.metrics for samples against data (both in data space)."""
    from . import metrics

    return metrics.evaluate(samples, data, seed=seed)


def _sample(model, schedule, n, sampler, steps, *, seed, sample_shape, progress, trajectory=None,
            prediction="epsilon"):
    from .sampling import sample

    kw = {"prediction": prediction}
    if trajectory is not None:
        kw.update(return_trajectory=True, trajectory_steps=trajectory)
    return sample(model, schedule, n, sampler=sampler, steps=steps, seed=seed, progress=progress,
                  sample_shape=sample_shape, **kw)


def plot_reverse_from_checkpoint(checkpoint, out, *, n=2000, sampler="ddpm", steps=None, panels=6,
                                 seed=0, paths_out=None, progress=True) -> list[str]:
    """Sample ``n`` points from a checkpoint with a trajectory and draw the reverse process
    (and, for a 1-D model, the per-sample paths). Returns the written paths."""
    from .checkpoint import load

    loaded = load(checkpoint)
    model, schedule, norm = loaded.model, loaded.schedule, loaded.normalization
    shape = tuple(loaded.sample_shape)
    from .sampling import make_plan

    K = make_plan(schedule, sampler, steps).num_steps
    x, traj = _sample(model, schedule, n, sampler, steps, seed=seed, sample_shape=shape,
                      progress=progress, trajectory=reverse_positions(K, panels),
                      prediction=loaded.prediction)
    written = [plots.plot_reverse(out, list(traj.x), traj.timesteps)]
    if plots.data_kind(np.asarray(x)) == "1d":
        dense = _sample(model, schedule, min(n, 500), sampler, steps, seed=seed, sample_shape=shape,
                        progress=False, trajectory="all", prediction=loaded.prediction)[1]
        paths_out = paths_out or str(Path(out).with_name(Path(out).stem + "_paths.png"))
        xs = [norm.denormalize(np.asarray(v)) for v in dense.x]
        written.append(plots.plot_paths_1d(paths_out, xs, dense.timesteps))
    return written


def reverse_positions(num_steps: int, panels: int = 6) -> list[int]:
    """Loop positions for reverse-process panels: x_T, then ever closer to the end, where the
    structure appears (with K steps: 0, K/2, 3K/4, …, K)."""
    panels = max(2, int(panels))
    remaining = [0.5 ** k for k in range(panels - 1)] + [0.0]
    return sorted({int(round(num_steps * (1 - r))) for r in remaining})


def run_demo(dataset: str = "butterfly", out="runs/demo", budget: str = "full", *, seed: int = 0,
             device: str = "cpu", progress: bool = True, log: Callable[[str], None] | None = None
             ) -> DemoResult:
    """Train, sample (ddpm-1000 and dpmpp2m-20), evaluate, draw and report; see the module doc."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}; got {budget!r}")
    from .data import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    b = BUDGETS[budget]
    log = log or (lambda msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .train import train

    timings: dict[str, float] = {}
    figures: dict[str, Path] = {}

    # 1. Train the default model.
    log(f"[1/5] training the default model on {dataset} ({budget} budget)")
    kw = {} if b.iters is None else {"iters": b.iters}
    tic = time.perf_counter()
    res = train(dataset, out / "model", seed=seed, device=device, progress=progress, **kw)
    timings["train_s"] = time.perf_counter() - tic
    model = res.ema_model if res.ema_model is not None else res.model
    schedule, ds = res.schedule, res.dataset
    shape = tuple(ds.sample_shape)
    figures["loss"] = Path(plots.plot_loss(out / "loss.png", res.losses,
                                           title=f"Training loss, {dataset} ({len(res.losses):,} iterations)"))

    # 2. Sample with both samplers; keep a trajectory of the ddpm run for the reverse figure.
    log(f"[2/5] sampling {b.n_samples:,} points with " + " and ".join(f"{s}-{k}" for s, k in SAMPLERS))
    samples, sample_files, traj = {}, {}, None
    for sampler, steps in SAMPLERS:
        name = f"{sampler}-{steps}"
        tic = time.perf_counter()
        if traj is None:
            x, traj = _sample(model, schedule, b.n_samples, sampler, steps, seed=seed, sample_shape=shape,
                              progress=progress, trajectory=reverse_positions(steps, 6))
        else:
            x = _sample(model, schedule, b.n_samples, sampler, steps, seed=seed, sample_shape=shape,
                        progress=progress)
        timings[f"sample_{name}_s"] = time.perf_counter() - tic
        samples[name] = ds.normalization.denormalize(np.asarray(x))
        sample_files[name] = out / f"samples_{name}.npy"
        _atomic_save_npy(sample_files[name], samples[name])

    # 3. Evaluate against fresh data (a seed the training set did not use), with the distance
    #    between two fresh data sets as the floor a perfect model would reach.
    log(f"[3/5] evaluating against {b.n_eval:,} fresh data points")
    fresh = make_data(dataset, b.n_eval, seed=seed + 1_000_003)
    fresh2 = make_data(dataset, b.n_eval, seed=seed + 2_000_003)
    metrics = {"data vs data (floor)": evaluate(fresh2, fresh, seed=seed)}
    for name, x in samples.items():
        metrics[name] = evaluate(x, fresh, seed=seed)

    # 4. The 1-D constant-5.0 example: forward noise paths, a tiny model, its reverse paths.
    log("[4/5] the 1-D constant-5.0 example")
    const_sched = Schedule.create(**{k: v for k, v in CONSTANT_SCHEDULE.items()})
    figures["forward_path_1d"] = Path(plots.plot_forward_path_1d(out / "forward_path_1d.png", const_sched,
                                                                 CONSTANT_VALUE, seed=seed))
    const = _constant_dataset(b.constant_samples * 5)
    tic = time.perf_counter()
    cres = train(const, out / "constant_model", schedule=const_sched, iters=b.constant_iters, seed=seed,
                 device=device, progress=progress)
    timings["train_constant_s"] = time.perf_counter() - tic
    cmodel = cres.ema_model if cres.ema_model is not None else cres.model
    cx, ctraj = _sample(cmodel, const_sched, b.constant_samples, "ddpm", None, seed=seed,
                        sample_shape=(1,), progress=False, trajectory="all")
    cx = np.asarray(cx).reshape(-1)
    metrics["constant-5.0 ddpm-100"] = {"mean": float(cx.mean()), "std": float(cx.std()),
                                        "abs_mean_error": float(abs(cx.mean() - CONSTANT_VALUE))}
    figures["reverse_paths_1d"] = Path(plots.plot_paths_1d(
        out / "reverse_paths_1d.png", list(ctraj.x), ctraj.timesteps, target=CONSTANT_VALUE,
        title=f"Constant-5.0 model: {b.constant_samples} samples from x_T ~ N(0, 1) to x₀ "
              f"(mean {cx.mean():.4f}, std {cx.std():.4f})"))

    # 5. Figures and the report.
    log("[5/5] drawing figures and writing the report")
    figures["schedules"] = Path(plots.plot_schedules(out / "schedules.png", num_steps=schedule.num_steps))
    ts = sorted({min(t, schedule.num_steps - 1) for t in FORWARD_TS} | {schedule.num_steps - 1})
    figures["forward"] = Path(plots.plot_forward(
        out / "forward.png", schedule, ds.x[:5000], ts, seed=seed,
        title=f"Forward process q(x_t | x₀) on {dataset} (model space), {schedule.name} schedule"))
    figures["reverse"] = Path(plots.plot_reverse(
        out / "reverse.png", list(traj.x), traj.timesteps, data=ds.x[: b.n_samples],
        title=f"Reverse process, ddpm-{schedule.num_steps} (model space): x_T → x₀"))
    figures["samples"] = Path(plots.plot_samples(
        out / "samples.png", samples, fresh,
        title=f"{dataset}: generated samples vs fresh data ({b.n_samples:,} each, data space)"))
    info = {
        "dataset": dataset, "budget": budget, "seed": seed, "device": device,
        "train": {"iters": len(res.losses), "batch_size": res.train_config.get("batch_size"),
                  "model": res.train_config.get("model"), "schedule": schedule.to_config(),
                  "samples_per_s": res.samples_per_s, "final_loss": float(np.mean(res.losses[-100:]))},
        "timings_s": timings, "metrics": metrics, "machine": machine_name(),
        "fastddpm_version": _version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write_text(out / "metrics.json", json.dumps(info, indent=2, default=_json_default) + "\n")
    report = out / "report.md"
    _atomic_write_text(report, _report(info, figures, sample_files, out))
    return DemoResult(out=out, report=report, figures=figures, samples=sample_files,
                      checkpoint=Path(res.checkpoint), metrics=metrics)


def _constant_dataset(n: int):
    """The constant-5.0 data with identity normalisation, so the model itself maps N(0, 1)
    noise to 5.0 as in the introduction (the built-in dataset would learn the point 0)."""
    from .data import Dataset, Normalization

    return Dataset("constant", np.full((n, 1), CONSTANT_VALUE, dtype=np.float32), Normalization.identity(1))


def _version() -> str:
    from . import __version__

    return __version__


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    return str(obj)


def machine_name() -> str:
    """'AMD EPYC 7B13, 2 cores, Linux' (or the GPU name when torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = f"{cpu}, {os.cpu_count()} cores, {platform.system()}"
    try:
        import torch

        if torch.cuda.is_available():
            name += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return name


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _report(info: dict, figures: dict, sample_files: dict, out: Path) -> str:
    m = info["metrics"]
    rows = [k for k in m if not k.startswith("constant")]
    cols = sorted({c for k in rows for c in m[k]}, key=lambda c: (c != "sliced_wasserstein", c))
    t = info["timings_s"]
    lines = [
        f"# fastddpm demo: {info['dataset']}",
        "",
        f"fastddpm {info['fastddpm_version']}, {info['date']}, on {info['machine']} "
        f"(device {info['device']}, budget `{info['budget']}`, seed {info['seed']}).",
        "",
        "## Training",
        "",
        f"- {info['train']['iters']:,} iterations, batch {info['train']['batch_size']}, "
        f"{info['train']['samples_per_s']:,.0f} samples/s, {t['train_s']:.1f} s; "
        f"final loss (mean of the last 100) {info['train']['final_loss']:.4f}.",
        f"- model: `{json.dumps(info['train']['model'], default=_json_default)}`",
        f"- schedule: `{json.dumps(info['train']['schedule'], default=_json_default)}`",
        "- checkpoint: [`model/`](model/)",
        "",
        "## Samples against fresh data",
        "",
        "Each sampler drew the same number of samples as the fresh data set; `data vs data` is "
        "the distance between two fresh data sets of that size, the floor a perfect model reaches.",
        "",
        "| | " + " | ".join(cols) + " | time (s) |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for k in rows:
        secs = t.get(f"sample_{k}_s")
        lines.append(f"| {k} | " + " | ".join(_fmt(m[k].get(c, "")) for c in cols)
                     + f" | {'' if secs is None else f'{secs:.1f}'} |")
    c = m.get("constant-5.0 ddpm-100")
    if c:
        lines += ["", "## The constant-5.0 example", "",
                  f"A 1-D model trained on data that is always {CONSTANT_VALUE} "
                  f"(schedule `{json.dumps(CONSTANT_SCHEDULE)}`) samples mean {c['mean']:.4f}, "
                  f"std {c['std']:.4f} ({t.get('train_constant_s', float('nan')):.1f} s of training).",
                  "", "[`constant_model/`](constant_model/)"]
    lines += ["", "## Files", ""]
    lines += [f"- samples `{k}`: [`{p.name}`]({p.name})" for k, p in sample_files.items()]
    lines += ["- every number above: [`metrics.json`](metrics.json)", "", "## Figures", ""]
    titles = {
        "schedules": "Noise schedules compared", "forward": "Forward process",
        "forward_path_1d": "Forward process of x₀ = 5.0", "reverse": "Reverse process",
        "reverse_paths_1d": "Reverse paths of the constant-5.0 model", "samples": "Samples vs data",
        "loss": "Training loss",
    }
    for key in FIGURES:
        if key in figures:
            rel = os.path.relpath(figures[key], out)
            lines += [f"### {titles[key]}", "", f"![{titles[key]}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"
