"""Distillation: a student that samples in 1–4 network calls, trained from a checkpoint (``fastddpm.distill``).

Two methods, each trained against targets the teacher produces through fastddpm's own fused
update kernels (``fastddpm.ddim_step`` with a row per sample: Numba on CPU, Triton on CUDA), the
teacher in eval mode, its calls batched over the whole batch with per-sample timesteps:

- ``progressive`` (Salimans & Ho 2022, google-research/diffusion_distillation ``dpm.py``): rounds
  that halve the steps. In a round whose teacher takes N DDIM steps on a grid g₀ > g₁ > … (the
  run ends at a clean sample, ᾱ = 1), the student takes N/2: for a student step t = g₂ⱼ → t″ =
  g₂ⱼ₊₂ the teacher makes two DDIM steps t → g₂ⱼ₊₁ → t″ from x_t ~ q(x_t | x₀), and the
  student's target is the x̃ whose single DDIM step lands where the teacher's two did:
      x̃ = (x_t″ − (σ_t″/σ_t)·x_t) / (α_t″ − (σ_t″/σ_t)·α_t)     (x̃ = x_t″ at the last step)
  regressed in the student's parametrisation (v by default: v = α·ε̃ − σ·x̃ with ε̃ = (x_t − α·x̃)/σ;
  plain v-MSE is the "SNR + 1" weighting of the paper). The student of round r is the teacher of
  round r + 1 (its EMA when ``ema`` is on); each round starts a fresh Adam and decays the learning
  rate linearly to 0, as the anchor's configs do. A teacher that predicts something else than the
  student (an ε-network) first gets a conversion round: the same regression with ONE teacher step
  per student step (the student learns the teacher's own x̂0 in its parametrisation). The student
  is a K-step DDIM on explicit timesteps — an ordinary row table of the ddim sampler.
- ``consistency`` (consistency distillation, Song et al. 2023, with the exact target): the student
  learns the consistency function of the teacher's probability-flow ODE, f(x_t, t) = the end x₀ of
  the ODE trajectory through x_t, at the K timesteps it samples at. The target is that end itself:
  the teacher solves the ODE from x_t ~ q(x_t | x₀) to t = 0 with DPM-Solver++(2M) on a log-SNR
  grid (:data:`TEACHER_SOLVER`) — ``fastddpm.sampling.loop.solve``, the bulk sampler's loop and
  fused kernels started from x_t, one shared-t run per timestep — which is cheap here, where the
  paper bootstraps to avoid it. The student samples with the ``consistency`` sampler
  (fastddpm.kernels.samplers.consistency: denoise, re-noise to the next timestep, repeat), whose
  fresh noise at every step keeps the rare deterministic-ODE outliers (samples stuck between two
  lobes of the butterfly) from surviving to the end.
- ``consistency-bootstrap`` (Song et al. 2023, openai/consistency_models ``consistency_losses``):
  one round on a grid of N points; for adjacent points t > t′ the teacher makes one DDIM step
  x_t → x̂_t′ and the student learns f_θ(x_t, t) = f_θ⁻(x̂_t′, t′) (x̂0 of the outputs; f = identity
  at the clean end), θ⁻ an EMA of θ with decay ``target_ema`` (the paper's μ). Samples with the
  ``consistency`` sampler at any of the grid's timesteps; converges far more slowly than the exact
  target (docs/training.md).

Everything random is a pure function of (seed, iteration): the step indices and the batch (fresh
points of an analytic dataset, or indices into the training set) from NumPy's Philox keyed by
(seed, it), the forward noise from fastddpm's generator on stream ``DISTILL_STREAM + it`` (inside
``fastddpm.q_sample``). With the optimisation loop of :func:`fastddpm.train`
(:class:`fastddpm.training.Updates`: Adam, clipping, EMA, DDP, checkpoints) a resumed distillation
equals an uninterrupted one, and a fixed seed gives bit-identical students (same machine, threads
and torch build).

The student is an ordinary checkpoint: ``config.json`` records how it samples
(``"sampling": {"sampler", "steps", "spacing": [timesteps], ...}``), which Pipeline,
``fastddpm sample``, the ONNX export (its ``fastddpm.sampling`` metadata) and the torchrun
sharding take as their defaults; ``train.distill`` records the method, the teacher (path and the
SHA-256 of its weights) and the settings.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, checkpoint as ckpt
from .data import ANALYTIC, Dataset, draw
from .nets import build
from .ops import ddim_step, q_sample
from .schedule import Schedule
from .training import (DATA_MODES, DEFAULT_THREADS, Updates, _check_positive_int, _threads, check_resume,
                       data_kind, run_context, training_data, training_target)

METHODS = ("progressive", "consistency", "consistency-bootstrap")
# Noise stream of iteration it: DISTILL_STREAM + it (< 2**30, below fastddpm.train's TRAIN_STREAM
# range, so a distillation with the teacher's training seed never reuses its training noise).
DISTILL_STREAM = 2**29
MAX_ITERATIONS = 2**29
# The default method, by measurement (docs/training.md, "Distillation"; bench/distill_bench.py, 20,000
# samples, seed 1): on the default butterfly model, 4 steps, 2-core EPYC: consistency p50 0.0080 / p90
# 0.047 / SW 1.09× the floor / 0.015 % beyond 0.5 (all four targets) in 303 CPU s; progressive p50
# 0.0096 / p90 0.053 / SW 0.92× / 0.22 % beyond 0.5 in 358 CPU s — the deterministic student keeps
# the ODE's outliers (the teacher's own dpmpp2m-20: 0.28 %). At 1–2 steps progressive is the closer
# to the curve (docs/training.md).
DEFAULT_METHOD = "consistency"
DEFAULT_STEPS = 4
STUDENT_PREDICTION = "v_prediction"  # Salimans & Ho: ε-prediction fails at 1–2 steps (x̂0 divides by α ≈ 0)
# consistency: the teacher's ODE solve from x_t to 0 — DPM-Solver++(2M), uniform in log-SNR, with
# ``points`` network calls from t = T − 1 and proportionally fewer (in log-SNR span, at least
# ``min_points``) from lower t. dpmpp2m-20 (log-SNR) on the default butterfly model: p90 0.047
# against 0.045 for dpmpp2m-100 (docs/sampling.md), so the targets are the ODE's ends to ~5 %.
TEACHER_SOLVER = {"sampler": "dpmpp2m", "points": 20, "min_points": 4}
# consistency: where a K-step student samples (and so where it is trained): T = 1000 values, scaled to
# other T; other K: log-spaced from T − 1 to T/20. docs/training.md ("Distillation") measures the
# students at these timesteps; no sweep over other timesteps is recorded there.
CONSISTENCY_TIMESTEPS = {1: [999], 2: [999, 199], 3: [999, 499, 99], 4: [999, 499, 199, 49]}
# Per method and data kind (fastddpm.training.data_kind): the settings not given. docs/training.md
# ("Distillation") measures the default butterfly and digits models distilled with these; the
# individual settings were not swept there.
# teacher_steps: progressive — the first round's teacher DDIM steps (steps·2^R, R rounds);
# consistency-bootstrap — the N points of its grid; iters: per round (progressive) or in all.
METHOD_DEFAULTS = {
    ("progressive", "vector"): {"teacher_steps": 256, "iters": 3000, "batch_size": 1024, "lr": 1e-3,
                                "ema": None},
    ("progressive", "image"): {"teacher_steps": 128, "iters": 1500, "batch_size": 64, "lr": 5e-4, "ema": None},
    ("consistency", "vector"): {"iters": 3000, "batch_size": 1024, "lr": 1e-3, "ema": None},
    ("consistency", "image"): {"iters": 3000, "batch_size": 64, "lr": 5e-4, "ema": None},
    ("consistency-bootstrap", "vector"): {"teacher_steps": 64, "iters": 20000, "batch_size": 512, "lr": 2e-4,
                                          "ema": 0.999, "target_ema": 0.95},
    ("consistency-bootstrap", "image"): {"teacher_steps": 64, "iters": 10000, "batch_size": 64, "lr": 2e-4,
                                         "ema": 0.999, "target_ema": 0.95},
}
# Settings that must match between a checkpoint and a distillation resuming from it.
_RESUME_KEYS = ("method", "steps", "teacher", "teacher_solver", "teacher_steps", "iters", "batch_size", "lr", "ema", "target_ema",
                "seed", "data", "dataset", "model", "prediction", "grad_clip", "timesteps")


class DistillationError(ValueError):
    """A teacher or setting that cannot be distilled; the message says why and what to do."""


@dataclasses.dataclass
class DistillResult:
    """What :func:`distill` returns; ``losses[i]`` is the loss of iteration i (all rounds)."""

    losses: list[float]
    model: torch.nn.Module           # the student's raw weights
    ema_model: torch.nn.Module | None
    checkpoint: Path | None
    schedule: Schedule
    sampling: dict[str, Any]         # how the student samples: keywords of fastddpm.sample
    prediction: str                  # the student's parametrisation
    config: dict[str, Any]           # what the checkpoint records as config["train"]
    seconds: float                   # wall time of the iterations run by this call

    @property
    def student(self) -> torch.nn.Module:
        """The weights the student samples with: the EMA when there is one, else the raw weights."""
        return self.ema_model if self.ema_model is not None else self.model


def grid(num_steps: int, n: int) -> np.ndarray:
    """``n`` descending timesteps, diffusers' "trailing" spacing round(T − j·T/n) − 1, j = 0 … n − 1:
    from T − 1 (pure noise) down. These grids nest — the grid of n/2 is every other point of the
    grid of n — which progressive distillation's halving needs."""
    return np.array([int(round(num_steps - j * num_steps / n)) - 1 for j in range(n)], dtype=np.int64)


def consistency_timesteps(num_steps: int, steps: int) -> list[int]:
    """The timesteps a ``steps``-call consistency student samples at (and is trained at):
    :data:`CONSISTENCY_TIMESTEPS` scaled from T = 1000 to ``num_steps``; other step counts
    log-spaced from T − 1 down to T/20. Strictly decreasing, in [0, T)."""
    if steps in CONSISTENCY_TIMESTEPS:
        pts = [v * num_steps / 1000.0 for v in CONSISTENCY_TIMESTEPS[steps]]
        pts[0] = num_steps - 1
    else:
        pts = np.geomspace(num_steps - 1, max(1.0, num_steps / 20.0), steps)
    out = [min(num_steps - 1, int(round(v))) for v in pts]
    for i in range(1, steps):
        out[i] = min(out[i], out[i - 1] - 1)
    if out[-1] < 0:
        raise ValueError(f"steps={steps} is too many for a schedule of T = {num_steps} timesteps")
    return out


def teacher_solve_timesteps(alphas_cumprod, t0: int, solver: dict = TEACHER_SOLVER) -> list[int]:
    """The teacher's ODE solve from t0 to 0: uniform in log-SNR, ``points`` calls over the whole
    span T − 1 → 0 and proportionally fewer over a shorter one (at least ``min_points``)."""
    from .sampling.timesteps import logsnr_timesteps

    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    lam = 0.5 * (np.log(ac) - np.log1p(-ac))
    share = (lam[0] - lam[t0]) / (lam[0] - lam[-1])
    n = min(t0 + 1, max(int(solver["min_points"]), int(round(solver["points"] * share))))
    return logsnr_timesteps(ac[: t0 + 1], n).tolist()


def _rounds(method: str, steps: int, teacher_steps: int, convert: bool) -> list[tuple[int, int]]:
    """[(teacher grid size, teacher DDIM steps per student step)] per round."""
    if method != "progressive":
        return [(teacher_steps, 1)]
    rounds = [(teacher_steps, 1)] if convert else []
    n = teacher_steps
    while n > steps:
        rounds.append((n, 2))
        n //= 2
    return rounds


def _load_teacher(checkpoint, device):
    """(Checkpoint, its path or None) from a path or a loaded Checkpoint; refuses what cannot teach."""
    if isinstance(checkpoint, ckpt.Checkpoint):
        teacher = checkpoint
    elif isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if path.lower().endswith(".onnx"):
            raise DistillationError(f"checkpoint {path!r} is an ONNX file; distill trains a torch student from a "
                                    "fastddpm checkpoint directory (fastddpm train's output)")
        if ckpt.is_diffusers_dir(path):
            raise DistillationError(
                f"checkpoint {path!r} is a diffusers pipeline directory; distill needs a fastddpm checkpoint, which "
                "records the training data the student learns on (train one with `fastddpm train`, or sample the "
                "diffusers model with `fastddpm sample DIR`)")
        teacher = ckpt.load(path, device=device)
    else:
        raise TypeError(f"checkpoint must be a checkpoint directory path or a fastddpm.checkpoint.Checkpoint, got "
                        f"{type(checkpoint).__name__}")
    config = teacher.config if isinstance(teacher.config, dict) else {}
    train = config.get("train") or {}
    if (teacher.sampling or {}).get("sampler") is not None or train.get("kind") == "distill":
        raise DistillationError(
            f"checkpoint {teacher.path} is already a distilled student ({(teacher.sampling or {}).get('sampler')}, "
            f"{(teacher.sampling or {}).get('steps')} steps); distil its teacher "
            f"({(train.get('teacher') or {}).get('path', 'the checkpoint it was distilled from')}) instead")
    if teacher.model.__class__.__name__ not in ckpt_model_classes():
        raise DistillationError(f"the teacher's model class {type(teacher.model).__name__} is not registered in "
                                "fastddpm.nets.MODEL_CLASSES; the student checkpoint could not be saved")
    if getattr(teacher.model, "num_classes", 0):
        raise DistillationError(
            f"checkpoint {teacher.path} is a class-conditional model ({teacher.model.num_classes} classes); distill "
            "supports unconditional teachers only (the student would not learn the labels or the guidance)")
    if getattr(teacher.model, "learn_sigma", False):
        raise DistillationError(
            f"checkpoint {teacher.path} has a learned-variance network (learn_sigma); distill a model trained with "
            "fixed variances (the student samples deterministically and would not use the variance output)")
    return teacher


def ckpt_model_classes():
    from .nets import MODEL_CLASSES

    return MODEL_CLASSES


def _teacher_identity(teacher) -> dict:
    files = (teacher.config or {}).get("files") or {}
    name = ckpt.EMA if teacher.weights == "ema" else ckpt.MODEL
    return {"path": str(Path(teacher.path).absolute()), "weights": name,
            "sha256": (files.get(name) or {}).get("sha256"), "prediction": teacher.prediction}


def _dataset_of(teacher, dataset, seed):
    if dataset is None:
        record = ((teacher.config or {}).get("train") or {}).get("dataset")
        if not isinstance(record, dict):
            raise DistillationError(
                f"checkpoint {teacher.path} records no training dataset (saved without a train config); pass "
                "dataset= (a name, a .npy path or a fastddpm.data.Dataset) to distil on")
        return Dataset.from_config(record)
    if isinstance(dataset, Dataset):
        return dataset
    return training_data(str(dataset), seed=seed)


def distill(checkpoint, out=None, *, steps: int = DEFAULT_STEPS, method: str = DEFAULT_METHOD,
            teacher_steps: int | None = None, iters: int | None = None, batch_size: int | None = None,
            lr: float | None = None, ema: float | None | str = "auto", target_ema: float | None = None,
            dataset=None, data: str = "auto", seed: int = 0, device="cpu", net=None, net_kwargs: dict | None = None,
            grad_clip: float | None = 1.0, checkpoint_every: int | None = None, resume=False,
            num_threads: int | None = DEFAULT_THREADS, progress: bool = True, distributed=False) -> DistillResult:
    """Distil the checkpoint ``checkpoint`` (a fastddpm checkpoint directory or a loaded Checkpoint)
    into a student that samples in ``steps`` network calls, and (with ``out``) save it there.

    method: "progressive" (Salimans & Ho 2022; the student is a ``steps``-step DDIM on explicit
      timesteps) or "consistency" (Song et al. 2023; the student samples with the ``consistency``
      sampler); see the module docstring, and docs/training.md ("Distillation") for how they compare.
    teacher_steps: progressive — the DDIM steps of the first round's teacher (``steps``·2^R: R
      rounds halve it down to ``steps``; a ``steps`` that does not divide it, or a quotient that is
      not a power of two, is an error); consistency — the points of the consistency grid.
    iters: iterations per round (progressive) or in all (consistency); batch_size, lr: Adam's
      (the learning rate decays linearly to 0 over each round); ema: decay of the weights' EMA
      (None: no EMA; the EMA of a round teaches the next round and is what the student samples
      with); target_ema: consistency's μ. None / "auto" → :data:`METHOD_DEFAULTS` for the method
      and the data kind.
    dataset: the x₀ the student learns on (default: the teacher's training data, from its
      checkpoint); data: "fresh" / "fixed" / "auto" as :func:`fastddpm.train`.
    net, net_kwargs: a different student architecture (a class name of fastddpm.nets, initialised
      afresh with ``seed``); default: the teacher's, initialised from its weights.
    checkpoint_every, resume, num_threads, progress, distributed, device, grad_clip, seed: as
      :func:`fastddpm.train` (resume continues the run saved in ``out`` — or the given path — and
      ends with exactly the student of an uninterrupted run).
    """
    if num_threads is not None:
        num_threads = _check_positive_int(num_threads, "num_threads")
        with _threads(num_threads):
            return distill(checkpoint, out, steps=steps, method=method, teacher_steps=teacher_steps, iters=iters,
                           batch_size=batch_size, lr=lr, ema=ema, target_ema=target_ema, dataset=dataset, data=data,
                           seed=seed, device=device, net=net, net_kwargs=net_kwargs, grad_clip=grad_clip,
                           checkpoint_every=checkpoint_every, resume=resume, num_threads=None, progress=progress,
                           distributed=distributed)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    steps = _check_positive_int(steps, "steps")
    for name, value in (("teacher_steps", teacher_steps), ("iters", iters), ("batch_size", batch_size)):
        if value is not None:
            _check_positive_int(value, name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if data not in DATA_MODES:
        raise ValueError(f"data must be one of {', '.join(map(repr, DATA_MODES))}; got {data!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if ema != "auto" and ema is not None and not (isinstance(ema, (int, float)) and 0.0 <= ema < 1.0):
        raise ValueError(f"ema must be 'auto', None or a decay in [0, 1), got {ema!r}")
    if target_ema is not None and not (isinstance(target_ema, (int, float)) and 0.0 <= target_ema < 1.0):
        raise ValueError(f"target_ema must be None or a decay in [0, 1), got {target_ema!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise ValueError(f"grad_clip must be None or a number > 0, got {grad_clip!r}")
    if resume and out is None and resume is True:
        raise ValueError("resume=True resumes from out; give out or a checkpoint path")
    checkpoint_every, ctx, device = run_context(device, distributed, checkpoint_every, out,
                                                "the student's checkpoint directory")

    teacher = _load_teacher(checkpoint, device)
    schedule, T = teacher.schedule, teacher.schedule.num_steps
    dataset = _dataset_of(teacher, dataset, seed)
    if tuple(dataset.sample_shape) != tuple(teacher.sample_shape):
        raise DistillationError(f"dataset {dataset.name!r} has samples of shape {dataset.sample_shape} but the "
                                f"teacher's are {tuple(teacher.sample_shape)}")
    analytic = dataset.name in ANALYTIC and "seed" in dataset.params
    if data == "fresh" and not analytic:
        raise ValueError(f"data='fresh' needs an analytic dataset ({', '.join(ANALYTIC)}); {dataset.name!r} can "
                         "only be distilled with data='fixed' (or 'auto')")
    data = ("fresh" if analytic else "fixed") if data == "auto" else data
    defaults = METHOD_DEFAULTS[(method, data_kind(dataset.sample_shape))]
    if method == "consistency":
        if teacher_steps is not None:
            raise ValueError("teacher_steps applies to methods 'progressive' and 'consistency-bootstrap'; the "
                             "consistency teacher solves the ODE to t = 0 (fastddpm.distillation.TEACHER_SOLVER)")
        teacher_steps = steps
    teacher_steps = int(teacher_steps or defaults["teacher_steps"])
    iters = int(iters or defaults["iters"])
    batch_size = int(batch_size or defaults["batch_size"])
    lr = float(lr or defaults["lr"])
    ema = defaults["ema"] if ema == "auto" else (None if ema in (None, 0, 0.0) else float(ema))
    if method == "consistency-bootstrap":
        target_ema = float(defaults["target_ema"] if target_ema is None else target_ema)
    elif target_ema is not None:
        raise ValueError("target_ema applies to method='consistency-bootstrap' only")
    if teacher_steps > T:
        raise ValueError(f"teacher_steps={teacher_steps} is more than the schedule's T = {T} timesteps")
    if method == "progressive":
        ratio = teacher_steps // steps
        if teacher_steps % steps or ratio & (ratio - 1) or ratio < 2:
            raise ValueError(
                f"steps={steps} must divide teacher_steps={teacher_steps} with a power of two ≥ 2 as the quotient "
                f"(progressive distillation halves the steps each round); e.g. teacher_steps={steps * 64} or "
                f"{steps * 32}")
    elif steps > teacher_steps:
        raise ValueError(f"steps={steps} must be at most teacher_steps={teacher_steps} (the consistency grid)")
    elif steps > T:
        raise ValueError(f"steps={steps} must be at most the schedule's T = {T}")
    if ctx is not None and batch_size < ctx.world_size:
        raise ValueError(f"batch_size={batch_size} must be >= the number of ranks ({ctx.world_size})")

    prediction = STUDENT_PREDICTION
    convert = method == "progressive" and teacher.prediction != prediction
    rounds = _rounds(method, steps, teacher_steps, convert)
    total = iters * len(rounds)
    if total >= MAX_ITERATIONS:
        raise ValueError(f"iters × rounds = {total} must be < 2**29")
    if method == "progressive":
        timesteps = grid(T, teacher_steps)[:: teacher_steps // steps].tolist()
        sampling = {"sampler": "ddim", "steps": steps, "spacing": timesteps, "eta": 0.0}
    elif method == "consistency":
        timesteps = consistency_timesteps(T, steps)
        sampling = {"sampler": "consistency", "steps": steps, "spacing": timesteps}
    else:  # the bootstrap's grid holds the trained timesteps: sample at the grid points nearest the table's
        g = grid(T, teacher_steps)
        timesteps = sorted({int(g[np.abs(g - v).argmin()]) for v in consistency_timesteps(T, steps)}, reverse=True)
        sampling = {"sampler": "consistency", "steps": len(timesteps), "spacing": timesteps}

    # The student: the teacher's architecture and weights, or a new net.
    if net is None:
        if net_kwargs:
            raise ValueError("net_kwargs apply when net names a class (a different student architecture)")
        model_config = copy.deepcopy((teacher.config or {})["model"])
        student = copy.deepcopy(teacher.model)
    else:
        kwargs = dict(net_kwargs or {})
        kwargs.setdefault("num_steps", T)
        if net in ("MLP", "ResMLP"):
            kwargs.setdefault("dim", int(teacher.sample_shape[0]))
        elif net == "UNet":
            kwargs.setdefault("in_channels", int(teacher.sample_shape[0]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = build(net, **kwargs)
        model_config = {"class": net, "kwargs": student.config}
    student.to(device).train().requires_grad_(True)
    teacher_model = teacher.model.eval().requires_grad_(False)

    config = {
        "kind": "distill", "method": method, "steps": steps, "timesteps": timesteps, "teacher": _teacher_identity(teacher),
        "teacher_solver": TEACHER_SOLVER if method == "consistency" else None,
        "teacher_steps": teacher_steps, "rounds": [list(r) for r in rounds], "iters": iters, "batch_size": batch_size,
        "lr": lr, "lr_schedule": "linear", "ema": ema, "target_ema": target_ema, "seed": int(seed), "data": data,
        "dataset": dataset.to_config(), "model": model_config, "schedule": schedule.to_config(),
        "prediction": prediction, "grad_clip": None if grad_clip is None else float(grad_clip),
        "optimizer": "Adam", "device": str(device), "torch_version": torch.__version__, "fastddpm_version": __version__,
    }
    if ctx is not None:
        config["world_size"] = ctx.world_size
        ctx.check_consistent("distillation", {**{k: v for k, v in config.items() if k != "device"},
                                              "out": None if out is None else str(Path(out).absolute()),
                                              "resume": str(resume), "checkpoint_every": checkpoint_every})
    updates = Updates(student, lr=lr, grad_clip=grad_clip, ema=ema, device=device, ctx=ctx)
    # The network whose outputs are the round's targets: the teacher (progressive: the previous round's
    # student; consistency: the target network θ⁻, with the fixed teacher making the ODE step).
    round_teacher = copy.deepcopy(student).eval().requires_grad_(False)
    extra_name = {"progressive": "teacher", "consistency": None, "consistency-bootstrap": "target"}[method]
    start = 0
    if resume:
        resume_path = Path(out) if resume is True else Path(resume)
        check_resume(resume_path, config, _RESUME_KEYS)
        files = ckpt.read_config(resume_path)["files"]
        extra = {f"{extra_name}.safetensors": round_teacher} if f"{extra_name}.safetensors" in files else {}
        start = updates.restore(resume_path, device, extra)
        if start > total:
            raise ValueError(f"checkpoint {resume_path} is already at iteration {start} > {total}")
        if start % iters and not extra and extra_name is not None:
            raise ValueError(f"checkpoint {resume_path} stopped inside a round but holds no {extra_name} weights; "
                             "it cannot be resumed (start again without resume)")

    data_x = torch.as_tensor(dataset.x, device=device)
    n_data, D = data_x.shape[0], int(np.prod(dataset.sample_shape))
    lo, hi = ctx.rows(batch_size) if ctx is not None else (0, batch_size)
    noise_offset = lo * D
    tables = schedule.tables(device)
    sqrt_ab, sqrt_1m = tables["sqrt_alphas_cumprod"], tables["sqrt_one_minus_alphas_cumprod"]
    view = (-1,) + (1,) * len(dataset.sample_shape)

    def alpha_sigma(t):  # α, σ at t [B] (t = −1: the clean end, α = 1, σ = 0), shaped to broadcast
        clean = t < 0
        i = t.clamp(min=0)
        a = torch.where(clean, torch.ones_like(sqrt_ab[i]), sqrt_ab[i])
        s = torch.where(clean, torch.zeros_like(sqrt_1m[i]), sqrt_1m[i])
        return a.view(view).to(torch.float32), s.view(view).to(torch.float32)

    def batch(it: int, count: int):
        """(x0 [local rows], index [local rows] in [0, count)) of iteration it: pure in (seed, it)."""
        rng = np.random.Generator(np.random.Philox(key=[int(seed), it]))
        idx = rng.integers(0, count, batch_size)
        if data == "fresh":
            x0 = dataset.normalization.normalize(draw(dataset.name, batch_size, rng, dataset.params.get("noise")))
            x0 = torch.from_numpy(x0.astype(np.float32)[lo:hi]).to(device)
        else:
            x0 = data_x[torch.from_numpy(rng.integers(0, n_data, batch_size)[lo:hi]).to(device)]
        return x0, torch.from_numpy(idx[lo:hi]).to(device)

    state = {"round": None}

    def setup_round(r: int, resumed: bool) -> None:
        n, factor = rounds[r]
        g = torch.from_numpy(np.append(grid(T, n), -1)).to(device)  # the round teacher's grid, −1 = clean end
        state.update(round=r, grid=g, factor=factor, n=n, student_steps=n // factor if method == "progressive" else n)
        if method == "progressive":
            if r == 0:
                state["teacher"], state["teacher_prediction"] = teacher_model, teacher.prediction
            else:
                state["teacher"], state["teacher_prediction"] = round_teacher, prediction
                if not resumed:  # the previous round's student (its EMA when there is one) teaches this round
                    round_teacher.load_state_dict(updates.ema_model.state_dict() if updates.ema_model is not None
                                                  else student.state_dict())
        else:
            state["teacher"], state["teacher_prediction"] = teacher_model, teacher.prediction
            if not resumed:
                round_teacher.load_state_dict(student.state_dict())  # θ⁻ starts at θ
        if not resumed:
            updates.new_optimizer()
            updates.restart_ema()

    def student_x0(out, x_t, a, s):
        if prediction == "v_prediction":
            return a * x_t - s * out
        if prediction == "epsilon":
            return (x_t - s * out) / a
        return out

    def progressive_loss(it: int):
        g, factor = state["grid"], state["factor"]
        x0, k = batch(it, state["student_steps"])
        i = k * factor
        t = g[i]
        x_t, _ = q_sample(schedule, x0, t, seed=int(seed), stream=DISTILL_STREAM + it, offset=noise_offset)
        with torch.no_grad():
            x = x_t
            for j in range(factor):  # the teacher's DDIM steps, one batched call each, rows per sample
                m = state["teacher"](x, g[i + j])
                x = ddim_step(schedule, x, m, g[i + j], prev_t=g[i + j + 1], prediction=state["teacher_prediction"])
            a_t, s_t = alpha_sigma(t)
            a_n, s_n = alpha_sigma(g[i + factor])
            r = s_n / s_t
            x_tgt = (x - r * x_t) / (a_n - r * a_t)
            eps_tgt = (x_t - a_t * x_tgt) / s_t
            target = training_target(schedule, x_tgt, eps_tgt, t, prediction)
        return F.mse_loss(updates.forward(x_t, t), target)

    solvers = {}  # per student timestep: the teacher's ODE solve from it to 0, built once

    def teacher_end(x_t, tau: int):
        """The end x₀ of the teacher's probability-flow ODE from x_t at tau (the fused dpmpp2m loop)."""
        from .sampling.loop import Solver
        from .sampling.options import SamplingOptions

        if tau not in solvers:
            spacing = teacher_solve_timesteps(schedule.alphas_cumprod, tau)
            options = SamplingOptions(sampler=TEACHER_SOLVER["sampler"], steps=len(spacing), spacing=spacing,
                                      prediction=teacher.prediction, progress=False,
                                      device=device if device.type != "cpu" else None)
            net, options = teacher_runtime(options)
            solvers[tau] = Solver(net, schedule, options, hi - lo, dataset.sample_shape)
        end = solvers[tau](x_t)
        return end if isinstance(end, torch.Tensor) else torch.from_numpy(end).to(device)

    def teacher_runtime(options):
        """The network the teacher's solves call: on the CPU the runtime fastddpm's engine="auto"
        measures fastest for this batch (an onnxruntime session of the export form, usually: the
        solves share t; docs/onnx.md), else the torch module."""
        if device.type != "cpu":
            return teacher_model, options
        from .pipelines import Pipeline, engines

        pipe = Pipeline(teacher)
        net, _, options = engines.choose(pipe, "auto", options.replace(prediction=teacher.prediction,
                                                                     sample_shape=teacher.sample_shape),
                                         n=max(1, (hi - lo) // max(1, len(timesteps))))
        return net, options

    taus = torch.tensor(timesteps, dtype=torch.int64, device=device)

    def direct_loss(it: int):
        x0, k = batch(it, len(timesteps))
        t = taus[k]
        x_t, _ = q_sample(schedule, x0, t, seed=int(seed), stream=DISTILL_STREAM + it, offset=noise_offset)
        with torch.no_grad():
            end = torch.empty_like(x_t)
            for j, tau in enumerate(timesteps):  # one shared-t teacher run per student timestep
                rows = (k == j).nonzero().flatten()
                if rows.numel():
                    end[rows] = teacher_end(x_t[rows].contiguous(), tau)
            a_t, s_t = alpha_sigma(t)
            target = training_target(schedule, end, (x_t - a_t * end) / s_t, t, prediction)
        return F.mse_loss(updates.forward(x_t, t), target)

    def consistency_loss(it: int):
        g = state["grid"]
        x0, j = batch(it, state["n"])
        t, t_next = g[j], g[j + 1]
        x_t, _ = q_sample(schedule, x0, t, seed=int(seed), stream=DISTILL_STREAM + it, offset=noise_offset)
        with torch.no_grad():
            m = state["teacher"](x_t, t)
            x_n = ddim_step(schedule, x_t, m, t, prev_t=t_next, prediction=state["teacher_prediction"])
            a_n, s_n = alpha_sigma(t_next)
            clean = (t_next < 0).view(view)
            target = torch.where(clean, x_n, student_x0(round_teacher(x_n, t_next.clamp(min=0)), x_n, a_n, s_n))
        a_t, s_t = alpha_sigma(t)
        pred = student_x0(updates.forward(x_t, t), x_t, a_t, s_t)
        # x-space error weighted by 1/σ_t² (= SNR + 1: the v-MSE scale of the progressive loss)
        return (((pred - target) ** 2) / (s_t * s_t)).mean()

    def after_step(it: int) -> None:
        if method == "consistency-bootstrap":
            with torch.no_grad():
                torch._foreach_lerp_(list(round_teacher.parameters()), list(student.parameters()), 1.0 - target_ema)

    def save(step: int, final: bool = False):
        r = min(len(rounds) - 1, max(0, (step - 1) // iters))
        if method == "progressive":
            n, factor = rounds[r]
            now = n // factor  # the steps this round's student learns to take
            done_sampling = dict(sampling, steps=now, spacing=grid(T, teacher_steps)[:: teacher_steps // now].tolist()) \
                if now != steps else sampling
        else:
            done_sampling = sampling
        extra = None if final or extra_name is None else {extra_name: round_teacher}
        return updates.save(out, step, schedule, extra=extra, normalization=dataset.normalization,
                            prediction=prediction, model_config=model_config, train_config=config,
                            sample_shape=dataset.sample_shape, sampling=done_sampling)

    from tqdm.auto import tqdm

    quiet = not progress or (ctx is not None and not ctx.is_main)
    bar = tqdm(total=total, initial=start, disable=quiet, dynamic_ncols=True, unit="it",
               desc=f"distill {method} → {steps} steps")
    loss_fn = {"progressive": progressive_loss, "consistency": direct_loss,
               "consistency-bootstrap": consistency_loss}[method]
    tic = time.perf_counter()
    try:
        for r in range(len(rounds)):
            r0, r1 = r * iters, (r + 1) * iters
            if start >= r1:
                continue
            setup_round(r, resumed=start > r0)
            updates.run(max(start, r0), r1, loss_fn, lr_of=lambda it, r0=r0: lr * (1.0 - (it - r0) / iters),
                        batch_size=batch_size, progress=progress, total=total, ema_start=r0, bar=bar,
                        checkpoint_every=checkpoint_every, save=save if out is not None else None,
                        after_step=after_step)
            if out is not None and checkpoint_every is not None and r1 % checkpoint_every == 0 and r1 < total:
                save(r1)
    finally:
        bar.close()
    seconds = time.perf_counter() - tic
    path = save(total, final=True) if out is not None else None
    if ctx is not None:
        ctx.barrier()
    student.eval()
    return DistillResult(losses=updates.all_losses(), model=student, ema_model=updates.ema_model, checkpoint=path,
                         schedule=schedule, sampling=sampling, prediction=prediction, config=config, seconds=seconds)


__all__ = ["CONSISTENCY_TIMESTEPS", "DEFAULT_METHOD", "DEFAULT_STEPS", "DISTILL_STREAM", "DistillResult",
           "DistillationError", "METHODS", "METHOD_DEFAULTS", "TEACHER_SOLVER", "consistency_timesteps", "distill",
           "grid", "teacher_solve_timesteps"]
