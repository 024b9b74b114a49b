"""Training ε-networks (or x0 / v networks) with torch, reproducibly and resumably.

One iteration ``it`` (0-based) draws everything from pure functions of (seed, it): the time
steps and the batch — fresh points of the analytic datasets (:data:`fastddpm.data.ANALYTIC`),
else indices into the fixed training set — from NumPy's Philox generator keyed by (seed, it),
and the forward
noise from fastddpm's counter-based generator with stream ``TRAIN_STREAM + it`` inside
``fastddpm.q_sample`` (Numba on CPU, Triton on CUDA). So a run resumed from a checkpoint at
iteration k makes exactly the same updates as an uninterrupted run, and a fixed seed gives
bit-identical weights on the same machine, thread count and torch build.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, checkpoint as ckpt
from .data import ANALYTIC, Dataset, draw, load_dataset
from .distributed import RankContext, init
from .nets import MODEL_CLASSES, build
from .ops import q_sample
from .schedule import SCHEDULES, Schedule

PREDICTIONS = ckpt.PREDICTIONS
TRAIN_STREAM = 2**30  # noise stream of iteration it is TRAIN_STREAM + it (< 2**31 for Triton)
DEFAULT_N = 10_000  # samples generated for a synthetic dataset given by name
# Share of training labels replaced by the "no label" class in a conditional run (classifier-free
# guidance, Ho & Salimans 2022: 0.1-0.2; DiT 0.1), so that one model is conditional and
# unconditional. docs/training.md, "Conditional models", has the digits sweep behind it.
DEFAULT_LABEL_DROPOUT = 0.1
# The label-dropout draws of iteration it come from NumPy's Philox keyed (seed + 2**32, it): a key of
# their own, so the batch, t and noise of a conditional run are those of the unconditional run.
_DROPOUT_KEY = 2**32

# Per-kind defaults: "vector" for [B, D] data (ResMLP), "image" for [B, C, H, W] (UNet).
DEFAULT_NET = {
    "vector": ("ResMLP", {"width": 64, "depth": 3, "fourier_features": 16, "fourier_scale": 25.0}),
    "image": ("UNet", {"base_channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1, "attention": True}),
}
DEFAULTS = {"lr": 2e-3, "lr_schedule": "constant", "lr_warmup": 0, "ema": 0.999}  # when no kind default applies
DEFAULT_NUM_STEPS = 1000  # T when the schedule is given by name
# One torch/Numba thread while training (restored afterwards): these nets are too small to gain from
# intra-op threads, and on the shared 2-core EPYC two threads ran 10-14x *slower* than one (OpenMP
# threads spin-waiting for a core; docs/training.md, "Throughput"). ``fastddpm train --threads``
# and ``fastddpm.train(num_threads=...)`` share this default.
DEFAULT_THREADS = 1
# The training settings a data kind gets when not given (train(..., x=None)).
# Vector: ResMLP(64, 3 blocks, 16 Fourier frequencies to 25), v-prediction, 5,000 × 1024,
# lr 3e-3 with a 100-step warm-up and cosine decay, fresh points for the analytic datasets.
# Why v-prediction: with ε-prediction x̂0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ multiplies the net's error by
# √(1−ᾱ)/√ᾱ = 88–156 at t ≥ 940; on the tails of x_T (|x| ≈ 3–4, rarely seen in training) the
# ResMLP's ε̂ is off by ~0.4, so the deterministic samplers (dpmpp2m, ddim) put a few samples
# 250–450 units out (dpmpp2m-20 SW ratio 57, ddpm-1000 unaffected). v̂ gives x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂:
# no amplification, no outliers (docs/training.md). Butterfly, 4000 samples, seed 0
# (bench/train_recipe_sweep.py; 2-core EPYC, loaded): 5,000 × 1024 → ddpm-1000 p50 0.0083 /
# p90 0.040 / SW ratio 0.97, dpmpp2m-20 (logsnr spacing) 0.0073 / 0.049 / 1.12, 142 s CPU;
# 8,000 × 512 lr 2e-3 → 0.0101 / 0.046 / 0.95, 158 s CPU (same samples per second, fewer per step
# is slower: a step costs 12.6 ms at batch 256, 24 ms at 1024 — bench/train_step_profile.py).
# Image: the U-Net step costs ~40× the MLP's per sample, hence the smaller batch. Digits, the
# default UNet(16, (1, 2)), 1000 samples scored by fastddpm.metrics.digit_scores (share ≥ 0.9
# confident / max class-share deviation from 0.1; bench/digits_sweep.py, one thread, idle EPYC):
# 3,000 × 64 constant lr (the earlier default, 177 s CPU) → dpmpp2m-20 0.867 / 0.029;
# 6,000 × 64, cosine decay with a 100-step warm-up (348 s) → dpmpp2m-20 0.905 / 0.027, ddpm-250
# 0.939 / 0.024; the same with v-prediction 0.896 / 0.028 and 0.935 / 0.025 — no gain, so ε stays.
KIND_DEFAULTS = {
    "vector": {"iters": 5000, "batch_size": 1024, "lr": 3e-3, "lr_schedule": "cosine", "lr_warmup": 100,
               "prediction": "v_prediction"},
    "image": {"iters": 6000, "batch_size": 64, "lr": 2e-3, "lr_schedule": "cosine", "lr_warmup": 100,
              "prediction": "epsilon"},
}
LR_SCHEDULES = ("constant", "cosine")
DATA_MODES = ("auto", "fresh", "fixed")
# Settings that must match between a checkpoint and a run resuming from it.
_RESUME_KEYS = ("dataset", "model", "schedule", "batch_size", "lr", "lr_schedule", "lr_warmup", "ema", "seed",
                "prediction", "min_snr_gamma", "grad_clip", "data", "conditional")


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns. ``losses[i]`` is the (weighted) loss of iteration i."""

    losses: list[float]
    model: torch.nn.Module
    ema_model: torch.nn.Module | None
    checkpoint: Path | None
    schedule: Schedule
    dataset: Dataset
    train_config: dict[str, Any]
    seconds: float  # wall time of the iterations run by this call
    samples_per_s: float

    @property
    def prediction(self) -> str:
        """What the net predicts ('epsilon' | 'sample' | 'v_prediction'): pass it to fastddpm.sample."""
        return self.train_config["prediction"]


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {str(device)!r}")
    return device


def _resolve_schedule(schedule, num_steps) -> Schedule:
    if isinstance(schedule, Schedule):
        if num_steps is not None and num_steps != schedule.num_steps:
            raise ValueError(f"num_steps={num_steps} contradicts the given schedule's {schedule.num_steps} steps")
        return schedule
    if isinstance(schedule, str):
        return Schedule.create(schedule, DEFAULT_NUM_STEPS if num_steps is None else num_steps)
    raise TypeError(f"schedule must be a fastddpm.Schedule or one of {', '.join(SCHEDULES)}, got {schedule!r}")


def data_kind(sample_shape) -> str:
    """'vector' for samples of shape [D], 'image' for [C, H, W]: the key of :data:`DEFAULT_NET` and
    :data:`KIND_DEFAULTS`."""
    return "vector" if len(tuple(sample_shape)) == 1 else "image"


def net_class(net, sample_shape) -> str:
    """The class name ``net`` stands for: 'auto' (or None) → the data kind's default
    (:data:`DEFAULT_NET`: ResMLP for vectors, UNet for images); a class name → itself."""
    return DEFAULT_NET[data_kind(sample_shape)][0] if net in ("auto", None) else net


def training_data(name, n: int | None = None, *, seed: int = 0, noise: float | None = None,
                  labels=None) -> Dataset:
    """The dataset ``train(name, n=n, seed=seed)`` trains on: ``n`` defaults to :data:`DEFAULT_N` for
    the synthetic sets and to all rows of digits or a .npy file. ``noise``: the 2-D toys' noise;
    ``labels``: a labels .npy for a .npy data file."""
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if n is None and isinstance(name, str) and name != "digits" and not name.endswith(".npy"):
        n = DEFAULT_N
    return load_dataset(name, n, seed=seed, noise=noise, labels=labels)


def _resolve_net(net, net_kwargs, dataset: Dataset, num_steps: int, num_classes: int = 0):
    """(model, model_config or None) for net = 'auto' | class name | nn.Module; ``num_classes`` > 0:
    a conditional net over that many classes."""
    if isinstance(net, torch.nn.Module):
        if net_kwargs:
            raise ValueError("net_kwargs only apply when net is a class name")
        if num_classes and getattr(net, "num_classes", 0) != num_classes:
            raise ValueError(f"conditional=True: the given module must be conditional over the dataset's "
                             f"{num_classes} classes (num_classes = {num_classes}, null_label, and "
                             f"forward(x_t, t, labels)); it has num_classes = {getattr(net, 'num_classes', None)!r}")
        return net, None
    shape = dataset.sample_shape
    kind = data_kind(shape)
    net = net_class(net, shape)
    if net not in MODEL_CLASSES:
        raise ValueError(f"net must be 'auto', a torch.nn.Module or one of {', '.join(sorted(MODEL_CLASSES))}; "
                         f"got {net!r}")
    kwargs = dict(DEFAULT_NET[kind][1]) if net == DEFAULT_NET[kind][0] else {}
    kwargs.update(net_kwargs or {})
    kwargs.setdefault("num_steps", num_steps)
    if num_classes:
        if net == "MLP":
            raise ValueError("conditional=True: net='MLP' has no label embedding; use 'ResMLP' (vectors) or "
                             "'UNet' (images)")
        kwargs["num_classes"] = num_classes
    if net in ("MLP", "ResMLP"):
        if len(shape) != 1:
            raise ValueError(f"the {net} takes vector data [n, D]; dataset {dataset.name!r} has samples of "
                             f"shape {shape} (use net='UNet')")
        kwargs.setdefault("dim", shape[0])
    elif net == "UNet":
        if len(shape) != 3:
            raise ValueError(f"the UNet takes images [n, C, H, W]; dataset {dataset.name!r} has samples of "
                             f"shape {shape} (use net='ResMLP')")
        kwargs.setdefault("in_channels", shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # reseeded by train(); this only keeps the global RNG untouched
        model = build(net, **kwargs)
    if net == "UNet" and (shape[1] % model.downsample_factor or shape[2] % model.downsample_factor):
        raise ValueError(f"image size {shape[1:]} must be divisible by {model.downsample_factor} "
                         f"for channel_mults={kwargs.get('channel_mults')}")
    return model, {"class": net, "kwargs": model.config}


def _batch_indices(seed: int, it: int, n: int, batch_size: int, num_steps: int):
    rng = np.random.Generator(np.random.Philox(key=[seed, it]))
    return rng.integers(0, n, batch_size), rng.integers(0, num_steps, batch_size)


def fresh_batch(dataset: Dataset, seed: int, it: int, batch_size: int, num_steps: int, *, labels: bool = False):
    """(x0 float32 [batch_size, …] in model space, t int64 [batch_size]) of iteration ``it``: a pure
    function of (seed, it) — t, then the points, from NumPy's Philox keyed by (seed, it).
    ``labels=True``: (x0, t, labels int64 [batch_size]), the points' classes from the same draws."""
    rng = np.random.Generator(np.random.Philox(key=[seed, it]))
    t = rng.integers(0, num_steps, batch_size)
    raw, y = draw(dataset.name, batch_size, rng, dataset.params.get("noise"), labels=True)
    x0 = dataset.normalization.normalize(raw).astype(np.float32)
    return (x0, t, y) if labels else (x0, t)


def drop_labels(labels: np.ndarray, seed: int, it: int, p: float, null_label: int) -> np.ndarray:
    """Iteration ``it``'s labels with a share ``p`` replaced by ``null_label`` (label dropout, so the
    model also learns the unconditional output that guidance needs): each label independently,
    from NumPy's Philox keyed (seed + 2**32, it) — a pure function of (seed, it), so resume and the
    ranks of a distributed run drop the same rows."""
    if p <= 0:
        return labels
    rng = np.random.Generator(np.random.Philox(key=[seed + _DROPOUT_KEY, it]))
    return np.where(rng.random(labels.shape[0]) < p, np.int64(null_label), labels)


def learning_rate(it: int, iters: int, lr: float, schedule: str, warmup: int) -> float:
    """lr at iteration ``it`` (0-based): linear warm-up lr·(it+1)/warmup over the first ``warmup``
    iterations, then constant or cosine decay lr·½(1 + cos(π·(it − warmup)/(iters − warmup))) to 0.
    A pure function of ``it``, so resuming needs no scheduler state."""
    if it < warmup:
        return lr * (it + 1) / warmup
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (it - warmup) / max(1, iters - warmup)))


def loss_weights(schedule: Schedule, t: torch.Tensor, prediction: str, min_snr_gamma: float | None):
    """Min-SNR-γ weights (Hang et al. 2023) per sample, expressed for the chosen target.

    With SNR_t = ᾱ_t/(1−ᾱ_t): ε-target min(SNR, γ)/SNR, x0-target min(SNR, γ),
    v-target min(SNR, γ)/(SNR + 1). ``None`` for no weighting.
    """
    if min_snr_gamma is None:
        return None
    snr = schedule.tables(t.device)["snr"][t]
    clipped = torch.clamp(snr, max=float(min_snr_gamma))
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "sample":
        return clipped
    return clipped / (snr + 1.0)


def training_target(schedule: Schedule, x0, noise, t, prediction: str):
    """The regression target for ``prediction``: ε, x0, or v = √ᾱ_t·ε − √(1−ᾱ_t)·x0."""
    if prediction == "epsilon":
        return noise
    if prediction == "sample":
        return x0
    tables = schedule.tables(x0.device)
    view = (-1,) + (1,) * (x0.dim() - 1)
    return (tables["sqrt_alphas_cumprod"][t].view(view) * noise
            - tables["sqrt_one_minus_alphas_cumprod"][t].view(view) * x0)


# Nichol & Dhariwal (2021), "Improved DDPM": L_hybrid = L_simple + λ·L_vlb, λ = 0.001. L_vlb = Σ_t L_t,
# so a uniformly drawn t contributes λ·T·L_t (improved-diffusion's loss_type MSE with learned_range:
# mse + vb for T = 1000).
VLB_WEIGHT = 0.001


def vlb_terms(schedule: Schedule, x0, x_t, t, output, v, prediction: str, *, discrete: bool = False):
    """L_t in bits per dimension, per sample [B]: KL(q(x_{t−1} | x_t, x0) ‖ p(x_{t−1} | x_t)) for
    t > 0 and the decoder's −log p(x0 | x_1) at t = 0 (improved-diffusion's ``_vb_terms_bpd``).

    p's mean is the posterior mean at the x̂0 of ``output`` (the network's prediction, held fixed by
    the caller), its log-variance frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2 — the
    ``learned_range`` variance the ddpm sampler reads. The decoder is the discretised Gaussian of
    8-bit images in [−1, 1] (bins of ±1/255, the paper's) for image data (``discrete``), a
    Gaussian density for vectors.
    """
    tab = schedule.tables(x0.device, x0.dtype)
    view = (-1,) + (1,) * (x0.dim() - 1)
    at = lambda name: tab[name][t].view(view)  # noqa: E731
    sa, s1 = at("sqrt_alphas_cumprod"), at("sqrt_one_minus_alphas_cumprod")
    if prediction == "epsilon":
        x0_hat = (x_t - s1 * output) / sa
    elif prediction == "v_prediction":
        x0_hat = sa * x_t - s1 * output
    else:
        x0_hat = output
    c1, c2 = at("posterior_mean_coef1"), at("posterior_mean_coef2")
    true_mean, model_mean = c1 * x0 + c2 * x_t, c1 * x0_hat + c2 * x_t
    true_logvar = at("posterior_log_variance_clipped")
    frac = (v + 1.0) / 2.0
    model_logvar = frac * torch.log(at("betas")) + (1.0 - frac) * true_logvar
    kl = 0.5 * (-1.0 + model_logvar - true_logvar + torch.exp(true_logvar - model_logvar)
                + (true_mean - model_mean) ** 2 * torch.exp(-model_logvar))
    if discrete:
        inv_std = torch.exp(-0.5 * model_logvar)
        centred = x0 - model_mean
        cdf_plus = torch.special.ndtr(inv_std * (centred + 1.0 / 255.0))
        cdf_minus = torch.special.ndtr(inv_std * (centred - 1.0 / 255.0))
        log_prob = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                               torch.where(x0 > 0.999, torch.log((1.0 - cdf_minus).clamp(min=1e-12)),
                                           torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))))
    else:
        log_prob = torch.distributions.Normal(model_mean, torch.exp(0.5 * model_logvar)).log_prob(x0)
    bits = torch.where((t == 0).view(view), -log_prob, kl) / math.log(2.0)
    return bits.flatten(1).mean(1)


@torch.no_grad()
def _ema_update(ema_params, params, decay: float) -> None:
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def run_context(device, distributed, checkpoint_every, out, out_name: str):
    """The set-up of a training run (train and distill): ``checkpoint_every`` checked (it needs
    ``out``, described as ``out_name`` in the error), the rank context (a RankContext given, or
    initialised when ``distributed`` is true) and the device. Returns (checkpoint_every, ctx, device)."""
    if checkpoint_every is not None:
        checkpoint_every = _check_positive_int(checkpoint_every, "checkpoint_every")
        if out is None:
            raise ValueError(f"checkpoint_every needs out ({out_name})")
    ctx = None
    if distributed:
        ctx = distributed if isinstance(distributed, RankContext) else init(device)
        device = ctx.device
    return checkpoint_every, ctx, _resolve_device(device)


def train(dataset, out=None, *, net="auto", net_kwargs: dict | None = None, schedule="linear",
          num_steps: int | None = None, iters: int | None = None, batch_size: int | None = None,
          lr: float | None = None, lr_schedule: str | None = None, lr_warmup: int | None = None,
          ema: float | None = DEFAULTS["ema"], data: str = "auto", seed: int = 0, device="cpu",
          prediction: str | None = None, min_snr_gamma: float | None = None, grad_clip: float | None = 1.0,
          checkpoint_every: int | None = None, resume=False, n: int | None = None,
          num_threads: int | None = DEFAULT_THREADS, progress: bool = True, distributed=False,
          learn_sigma: bool = False, conditional: bool = False, label_dropout: float = DEFAULT_LABEL_DROPOUT,
          labels=None) -> TrainResult:
    """Train a diffusion network on ``dataset`` and (with ``out``) write a checkpoint there.

    dataset: a name of :data:`fastddpm.data.DATASETS`, a ``.npy`` path (loaded with ``n``
      samples, ``seed``) or a :class:`fastddpm.data.Dataset`.
    net: 'auto' (ResMLP for [n, D], UNet for [n, C, H, W]), 'ResMLP', 'MLP', 'UNet' with ``net_kwargs``, or
      any ``nn.Module`` with ``forward(x_t, t)`` (saved only if it is a registered class).
    schedule: a :class:`Schedule` or a schedule name with ``num_steps`` (default 1000).
    iters, batch_size, lr, lr_schedule, lr_warmup, prediction: None → the data kind's default
      (:data:`KIND_DEFAULTS`): vectors 5000 × 1024, lr 3e-3, 100 warm-up iterations, cosine,
      v-prediction; images 6000 × 64, lr 2e-3, 100 warm-up iterations, cosine, ε-prediction.
      The prediction is saved in the checkpoint (and on :class:`TrainResult`); pass it on when
      sampling a result's model.
    data: 'fresh' draws new points every iteration (analytic datasets only), 'fixed' samples
      batches from ``dataset.x``; 'auto' is 'fresh' for the analytic datasets
      (:data:`fastddpm.data.ANALYTIC`, loaded by name) and 'fixed' otherwise.
    Loss: mean squared error to the ``prediction`` target (ε, x0 or v) with t uniform in
    [0, T), optionally min-SNR-γ weighted; Adam(lr), gradient-norm clipping at ``grad_clip``,
    learning rate warmed up linearly over ``lr_warmup`` iterations, then constant or
    cosine-decayed to 0 at ``iters`` (``lr_schedule``, :func:`learning_rate`), EMA of the
    weights with decay min(ema, (1+k)/(10+k)) at update k (the warm-up of the EMA).
    checkpoint_every: also save to ``out`` every so many iterations (atomically).
    resume: True (resume from ``out``) or a checkpoint path: continue that run to ``iters``
      iterations in total (with the cosine lr schedule, the same ``iters`` as the run saved); the result equals an uninterrupted run with the same settings.
    num_threads: CPU threads for torch and Numba during this call (restored afterwards); default
      :data:`DEFAULT_THREADS` (1, as ``fastddpm train``); None keeps the current settings.
      Bit-identical results need the same thread count.
    distributed: True (join the torchrun job; device becomes cuda:LOCAL_RANK or cpu) or a
      :class:`fastddpm.distributed.RankContext`: DistributedDataParallel over the ranks, each
      taking its rows of every global batch (see fastddpm.distributed); rank 0 writes ``out``.
    learn_sigma: learned variances (Nichol & Dhariwal 2021): the net (ResMLP or UNet) also outputs
      the variance interpolation v, trained by L_hybrid = L_simple + λ·L_vlb (λ =
      :data:`VLB_WEIGHT`, the paper's 0.001; :func:`vlb_terms`); the checkpoint records
      ``variance="learned_range"`` as its sampling default (the ddpm sampler reads v, the others
      use the prediction half). Whether it pays: docs/training.md, "Learned variances".
    conditional: train a class-conditional model on the dataset's labels (digits, the labelled toys
      of :data:`fastddpm.data.LABELLED`, or a .npy with ``labels``, a labels .npy of one integer per
      row): the net gets a label embedding of K + 1 classes joined with its time embedding, the
      last being "no label", and ``label_dropout`` (default :data:`DEFAULT_LABEL_DROPOUT`) of the
      training labels are replaced by it (:func:`drop_labels`), so that one model samples
      conditionally, unconditionally and with classifier-free guidance. The label set (classes,
      training counts, dropout) is saved in the checkpoint.
    """
    if num_threads is not None:
        num_threads = _check_positive_int(num_threads, "num_threads")
        with _threads(num_threads):
            return train(dataset, out, net=net, net_kwargs=net_kwargs, schedule=schedule, num_steps=num_steps,
                         iters=iters, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                         lr_warmup=lr_warmup, ema=ema, data=data, seed=seed, device=device,
                         prediction=prediction, min_snr_gamma=min_snr_gamma, grad_clip=grad_clip,
                         checkpoint_every=checkpoint_every, resume=resume, n=n, progress=progress,
                         distributed=distributed, num_threads=None, learn_sigma=learn_sigma,
                         conditional=conditional, label_dropout=label_dropout, labels=labels)
    if iters is not None:
        _check_positive_int(iters, "iters")
    if batch_size is not None:
        _check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if iters is not None and iters >= 2**30:
        raise ValueError(f"iters must be < 2**30, got {iters}")
    _check_settings(lr, lr_schedule, lr_warmup, prediction)  # None: the data kind's default, checked below
    if data not in DATA_MODES:
        raise ValueError(f"data must be one of {', '.join(map(repr, DATA_MODES))}; got {data!r}")
    if not isinstance(learn_sigma, bool):
        raise ValueError(f"learn_sigma must be True or False, got {learn_sigma!r}")
    if ema is not None and not (isinstance(ema, (int, float)) and 0.0 <= ema < 1.0):
        raise ValueError(f"ema must be None or a decay in [0, 1), got {ema!r}")
    ema = None if ema in (None, 0, 0.0) else float(ema)
    if min_snr_gamma is not None and not (isinstance(min_snr_gamma, (int, float)) and min_snr_gamma > 0):
        raise ValueError(f"min_snr_gamma must be None or a number > 0, got {min_snr_gamma!r}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and grad_clip > 0):
        raise ValueError(f"grad_clip must be None or a number > 0, got {grad_clip!r}")
    if not isinstance(conditional, bool):
        raise TypeError(f"conditional must be True or False, got {conditional!r}")
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) or not 0 <= label_dropout < 1:
        raise ValueError(f"label_dropout must be a number in [0, 1) (the share of labels replaced by 'no label'), "
                         f"got {label_dropout!r}")
    if labels is not None and not conditional:
        raise ValueError("labels (a labels file) is given but conditional=False: pass conditional=True "
                         "(--conditional) to train a conditional model on them")
    checkpoint_every, ctx, device = run_context(device, distributed, checkpoint_every, out, "the checkpoint directory")
    schedule = _resolve_schedule(schedule, num_steps)

    if isinstance(dataset, Dataset):
        if n is not None:
            raise ValueError("n applies only when dataset is given by name")
        if labels is not None:
            raise ValueError("labels (a labels file) applies when dataset is a .npy path; a Dataset carries its own")
    else:
        dataset = training_data(str(dataset), n, seed=seed, labels=labels)
    num_classes = 0
    if conditional:
        if dataset.labels is None:
            from .data import LABELLED

            raise ValueError(f"conditional=True needs labels: dataset {dataset.name!r} has none (labelled: "
                             f"{', '.join(LABELLED)}, or a .npy data file with labels=FILE / --labels FILE)")
        num_classes = int(dataset.num_classes)
    analytic = dataset.name in ANALYTIC and "seed" in dataset.params  # built by load_dataset
    if data == "fresh" and not analytic:
        raise ValueError(f"data='fresh' needs an analytic dataset loaded by name ({', '.join(ANALYTIC)}); "
                         f"{dataset.name!r} can only be trained with data='fixed' (or 'auto')")
    data = ("fresh" if analytic else "fixed") if data == "auto" else data
    kind_name = data_kind(dataset.sample_shape)
    kind = KIND_DEFAULTS[kind_name]
    iters = kind["iters"] if iters is None else int(iters)
    batch_size = kind["batch_size"] if batch_size is None else int(batch_size)
    lr = kind["lr"] if lr is None else lr
    lr_schedule = kind["lr_schedule"] if lr_schedule is None else lr_schedule
    lr_warmup = int(kind["lr_warmup"] if lr_warmup is None else lr_warmup)
    prediction = kind["prediction"] if prediction is None else prediction
    if ctx is not None and batch_size < ctx.world_size:  # after the default (issue 16: TypeError before)
        raise ValueError(f"batch_size={batch_size} must be >= the number of ranks ({ctx.world_size})")
    if batch_size > len(dataset.x):  # allowed (batches are drawn with replacement), but say so
        warnings.warn(f"batch_size={batch_size} is larger than the dataset ({len(dataset.x)} rows): every batch "
                      "repeats rows (drawn with replacement); pass a smaller batch_size or more data", stacklevel=2)
    if learn_sigma and not isinstance(net, torch.nn.Module):
        if net_class(net, dataset.sample_shape) not in ("ResMLP", "UNet"):
            raise ValueError(f"learn_sigma needs net='ResMLP' or 'UNet' (their output carries the variance "
                             f"interpolation); got net={net!r}")
        net_kwargs = {**(net_kwargs or {}), "learn_sigma": True}
    model, model_config = _resolve_net(net, net_kwargs, dataset, schedule.num_steps, num_classes)
    if learn_sigma and not getattr(model, "learn_sigma", False):
        raise ValueError("learn_sigma=True needs a net that outputs the variance channel (learn_sigma = True: "
                         "fastddpm.nets.ResMLP / UNet(learn_sigma=True)); this module does not say it does")
    if model_config is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(model_config["class"], **model_config["kwargs"])
    model.to(device).train()
    updates = Updates(model, lr=lr, grad_clip=grad_clip, ema=ema, device=device, ctx=ctx)

    train_config = {
        "dataset": dataset.to_config(),
        "model": model_config or {"class": type(model).__name__},
        "schedule": schedule.to_config(),
        "iters": iters, "batch_size": batch_size, "lr": float(lr), "lr_schedule": lr_schedule,
        "lr_warmup": lr_warmup, "ema": ema, "data": data,
        "seed": int(seed),
        "prediction": prediction, "min_snr_gamma": None if min_snr_gamma is None else float(min_snr_gamma),
        "grad_clip": None if grad_clip is None else float(grad_clip),
        "optimizer": "Adam", "device": str(device), "torch_version": torch.__version__,
        "fastddpm_version": __version__,
    }
    if learn_sigma:  # recorded only when set: checkpoints of fixed-variance runs resume as before
        train_config["learn_sigma"] = True
    label_set = None
    if conditional:
        from .data import LABELLED
        from .labels import LabelSet

        null_label = int(getattr(model, "null_label", num_classes))
        label_set = LabelSet(num_classes, null_label, tuple(dataset.label_counts()), float(label_dropout),
                             LABELLED.get(dataset.name, (None, None))[1])
        train_config["conditional"] = {"num_classes": num_classes, "null_label": null_label,
                                       "label_dropout": float(label_dropout)}
    if ctx is not None:
        train_config["world_size"] = ctx.world_size
        ctx.check_consistent("training", {**{k: v for k, v in train_config.items() if k != "device"},
                                          "out": None if out is None else str(Path(out).absolute()),
                                          "resume": str(resume), "checkpoint_every": checkpoint_every})
    start = 0
    if resume:
        resume_path = Path(out) if resume is True else Path(resume)
        if resume is True and out is None:
            raise ValueError("resume=True resumes from out; give out or a checkpoint path")
        check_resume(resume_path, train_config, _RESUME_KEYS + ("learn_sigma",)
                     + (("iters",) if lr_schedule == "cosine" else ()))
        start = updates.restore(resume_path, device)
        if start > iters:
            raise ValueError(f"checkpoint {resume_path} is already at iteration {start} > iters={iters}")

    data_x = torch.as_tensor(dataset.x, device=device)
    data_y = dataset.labels if conditional else None
    n_data = data_x.shape[0]
    # Distributed: this rank's rows [lo, hi) of every global batch, their noise at offset lo·D.
    lo, hi = ctx.rows(batch_size) if ctx is not None else (0, batch_size)
    noise_offset = lo * int(np.prod(dataset.sample_shape))

    def save(step: int):
        return updates.save(out, step, schedule, normalization=dataset.normalization, prediction=prediction,
                            model_config=model_config, train_config=train_config, sample_shape=dataset.sample_shape,
                            sampling={"variance": "learned_range"} if learn_sigma else None, labels=label_set)

    def loss_of(it: int):
        if data == "fresh":
            x0_np, t_np, y_np = fresh_batch(dataset, int(seed), it, batch_size, schedule.num_steps, labels=True)
            x0 = torch.from_numpy(x0_np[lo:hi]).to(device)
            t = torch.from_numpy(t_np[lo:hi]).to(device)
        else:
            idx, t_np = _batch_indices(int(seed), it, n_data, batch_size, schedule.num_steps)
            x0 = data_x[torch.from_numpy(idx[lo:hi]).to(device)]
            t = torch.from_numpy(t_np[lo:hi]).to(device)
            y_np = data_y[idx] if data_y is not None else None
        inputs = (t,)
        if conditional:  # the global batch's labels, a share dropped to "no label", then this rank's rows
            y_np = drop_labels(y_np, int(seed), it, float(label_dropout), label_set.null_label)
            inputs = (t, torch.from_numpy(np.ascontiguousarray(y_np[lo:hi], dtype=np.int64)).to(device))
        x_t, noise = q_sample(schedule, x0, t, seed=int(seed), stream=TRAIN_STREAM + it, offset=noise_offset)
        target = training_target(schedule, x0, noise, t, prediction)
        out = updates.forward(x_t, *inputs)
        if learn_sigma:  # [prediction | v]
            out, v = out[:, : x0.shape[1]], out[:, x0.shape[1]:]
        per_sample = F.mse_loss(out, target, reduction="none").flatten(1).mean(1)
        weights = loss_weights(schedule, t, prediction, min_snr_gamma)
        loss = (per_sample if weights is None else per_sample * weights).mean()
        if learn_sigma:  # λ·L_vlb: a uniform t stands for the sum over T terms; the prediction held fixed
            vlb = vlb_terms(schedule, x0, x_t, t, out.detach(), v, prediction, discrete=kind_name == "image")
            loss = loss + VLB_WEIGHT * schedule.num_steps * vlb.mean()
        return loss

    tic = time.perf_counter()
    updates.run(start, iters, loss_of, lr_of=lambda it: learning_rate(it, iters, float(lr), lr_schedule, lr_warmup),
                batch_size=batch_size, progress=progress, desc=f"train {dataset.name}",
                checkpoint_every=checkpoint_every, save=save if out is not None else None)
    seconds = time.perf_counter() - tic
    path = save(iters) if out is not None else None
    if ctx is not None:
        ctx.barrier()  # rank 0 has written the checkpoint when any rank returns
    model.eval()
    if label_set is not None:  # "frequencies" labels of a sampling run read the training counts from the net
        for net_ in (model, updates.ema_model):
            if net_ is not None:
                net_.label_counts = label_set.counts
    done_here = iters - start
    return TrainResult(losses=updates.all_losses(), model=model, ema_model=updates.ema_model, checkpoint=path,
                       schedule=schedule, dataset=dataset, train_config=train_config, seconds=seconds,
                       samples_per_s=done_here * batch_size / seconds if seconds > 0 else float("nan"))


class Updates:
    """The optimisation loop that :func:`train` and :func:`fastddpm.distill` share (one home).

    Adam (fused where the device allows), a learning rate per iteration from ``lr_of(it)`` (a pure
    function of it: resuming needs no scheduler state), gradient-norm clipping, an EMA of the
    weights with decay min(ema, (1+k)/(10+k)) at its k-th update (k counts from ``ema_start``),
    DistributedDataParallel over the ranks of ``ctx`` (rank r's local mean loss weighted by
    n_r·W/B, so DDP's average is the full batch's mean), the loss of every iteration kept on the
    device (one sync at the end), a progress bar and checkpoints every ``checkpoint_every``
    iterations. ``loss_of(it)`` computes iteration it's loss through :attr:`forward` (the model,
    DDP-wrapped on several ranks); everything random in it must be a pure function of (seed, it),
    which is what makes a resumed run equal an uninterrupted one.
    """

    def __init__(self, model, *, lr: float, grad_clip, ema, device, ctx=None):
        self.model, self.ctx, self.device = model, ctx, device
        self.grad_clip, self.ema, self.lr = grad_clip, ema, float(lr)
        self.forward = ctx.wrap(model) if ctx is not None else model
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False) if ema is not None else None
        self.optimizer = self.new_optimizer()
        self.params = list(model.parameters())
        self.losses: list[float] = []  # of iterations before this call's first (from a checkpoint)
        self._buf, self._buf_start, self._done = None, 0, 0

    def new_optimizer(self):
        """A fresh Adam over the model's parameters (distillation starts one per round).

        fused Adam: one kernel over all parameters. ResMLP(64, 3 blocks) step on one EPYC core
        (bench/train_step_profile.py, 300 steps, loaded machine): 3.0–3.2 ms per-parameter loop,
        1.5–2.2 ms foreach, 0.4–0.8 ms fused — the loop was ~20 % of a 13.8 ms training iteration
        at batch 256."""
        model = self.model
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, fused=fused or None)
        return self.optimizer

    def restart_ema(self) -> None:
        """EMA := the current weights (a distillation round starts its average afresh)."""
        if self.ema_model is not None:
            with torch.no_grad():
                for e, p in zip(self.ema_model.parameters(), self.model.parameters()):
                    e.copy_(p)

    def restore(self, path: Path, device, extra: dict | None = None) -> int:
        """Model, EMA, optimizer, loss history (and ``extra`` modules: {file name: module}) from the
        checkpoint at ``path``; returns its iteration."""
        config = ckpt.read_config(path)
        ckpt.load_weights(self.model, path, ckpt.MODEL, config=config)
        if self.ema_model is not None:
            ckpt.load_weights(self.ema_model, path, ckpt.EMA, config=config)
        for name, module in (extra or {}).items():
            ckpt.load_weights(module, path, name, config=config)
        state = ckpt.load_train_state(path, device=device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.losses = [float(v) for v in state["losses"]]
        return int(state["step"])

    def _global(self, buf) -> list[float]:
        return (self.ctx.mean(buf.clone()) if self.ctx is not None else buf).tolist()

    def all_losses(self) -> list[float]:
        """The loss of every iteration so far (mean over the ranks)."""
        done = self._buf[: self._done - self._buf_start] if self._buf is not None else None
        return self.losses + (self._global(done) if done is not None else [])

    def save(self, out, step: int, schedule, *, extra: dict | None = None, **checkpoint_fields):
        """Write the checkpoint (rank 0 only) at iteration ``step``; ``checkpoint_fields`` go to
        fastddpm.checkpoint.save, ``extra`` ({file name: module}) as further weights files."""
        losses = self.all_losses()[:step]
        if self.ctx is not None and not self.ctx.is_main:
            return Path(out)
        return ckpt.save(out, self.model, schedule, ema_model=self.ema_model, extra_weights=extra,
                         train_state={"step": step, "optimizer": self.optimizer.state_dict(), "losses": losses},
                         **checkpoint_fields)

    def run(self, start: int, stop: int, loss_of, *, lr_of, batch_size: int, progress: bool = True,
            desc: str = "train", total: int | None = None, ema_start: int = 0, checkpoint_every=None,
            save=None, bar=None, after_step=None) -> None:
        """Iterations start … stop − 1. ``bar``: a tqdm to update (else one is made for ``total``
        iterations, default ``stop``); ``save(done)`` is called every ``checkpoint_every`` iterations
        (not at ``stop``: the caller saves the end); ``after_step(it)`` after each optimizer step
        (consistency distillation's target network)."""
        from tqdm.auto import tqdm

        ctx, params = self.ctx, self.params
        ema_params = list(self.ema_model.parameters()) if self.ema_model is not None else []
        if self._buf is None:
            self._buf_start = start
            self._buf = torch.empty((total or stop) - start, device=self.device)
        buf, b0 = self._buf, self._buf_start
        own_bar = bar is None
        if own_bar:
            quiet_rank = ctx is not None and not ctx.is_main
            bar = tqdm(total=total or stop, initial=start, disable=not progress or quiet_rank, desc=desc,
                       unit="it", dynamic_ncols=True)
        optimizer = self.optimizer  # (distillation makes a new one per round)
        for it in range(start, stop):
            for group in optimizer.param_groups:
                group["lr"] = lr_of(it)
            loss = loss_of(it)
            if ctx is not None:  # DDP averages over ranks; this makes it the mean over the global batch
                loss = loss * ctx.loss_weight(batch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, float(self.grad_clip), foreach=True)
            optimizer.step()
            if after_step is not None:
                after_step(it)
            if self.ema_model is not None:
                k = it - ema_start
                _ema_update(ema_params, params, min(self.ema, (1.0 + k) / (10.0 + k)))
            buf[it - b0] = loss.detach()
            done = it + 1
            self._done = done
            if progress and (done % 50 == 0 or done == stop):
                bar.set_postfix(loss=f"{buf[max(0, done - 50 - b0):done - b0].mean().item():.4f}", refresh=False)
            bar.update(1)
            if checkpoint_every is not None and save is not None and done % checkpoint_every == 0 and done < stop:
                save(done)
        if own_bar:
            bar.close()
        if self.ema_model is not None:  # buffers (none in the built-in nets) follow the live model
            for eb, b in zip(self.ema_model.buffers(), self.model.buffers()):
                eb.copy_(b)


def check_resume(path: Path, config: dict, keys) -> None:
    """Refuse to resume from ``path`` when any of ``keys`` differs between its saved settings and
    ``config`` (a ValueError naming each)."""
    saved = ckpt.read_config(path).get("train") or {}
    diff = [k for k in keys if saved.get(k) != json_roundtrip(config.get(k))]
    if diff:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume from {path}: settings differ ({detail})")


def _check_settings(lr, lr_schedule, lr_warmup, prediction) -> None:
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)
                               and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if lr_schedule is not None and lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(map(repr, LR_SCHEDULES))}; got {lr_schedule!r}")
    if lr_warmup is not None and (isinstance(lr_warmup, bool) or not isinstance(lr_warmup, (int, np.integer))
                                  or lr_warmup < 0):
        raise ValueError(f"lr_warmup must be an integer >= 0 (iterations), got {lr_warmup!r}")
    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}; got {prediction!r}")


class _threads:
    """Temporarily run torch's intra-op pool and Numba's pool with n threads."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import numba

        self.saved = (torch.get_num_threads(), numba.get_num_threads())
        torch.set_num_threads(self.n)
        numba.set_num_threads(min(self.n, numba.config.NUMBA_NUM_THREADS))

    def __exit__(self, *exc):
        import numba

        torch.set_num_threads(self.saved[0])
        numba.set_num_threads(self.saved[1])


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj))


__all__ = ["DEFAULTS", "DEFAULT_LABEL_DROPOUT", "DEFAULT_NET", "DEFAULT_NUM_STEPS", "DEFAULT_THREADS", "KIND_DEFAULTS",
           "TrainResult", "VLB_WEIGHT", "data_kind", "drop_labels", "net_class", "training_data", "fresh_batch",
           "learning_rate", "loss_weights", "train", "training_target", "vlb_terms"]
