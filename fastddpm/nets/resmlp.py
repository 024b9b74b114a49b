"""Residual MLP ε-network for vector data [B, D] with Fourier features of x (the default vector net).

Why this net: a plain MLP on raw (x, y) is a smooth function of its input and blurs the thin
butterfly curve (issue 13: p90 distance to the curve 0.14 after 16,000 steps). Feeding it
sin/cos of x at geometrically spaced frequencies (Tancik et al. 2020, "Fourier features let
networks learn high frequency functions") lets it resolve the curve; pre-norm residual blocks
keep a deeper net trainable at a high learning rate.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .embedding import LabelEmbedding, SinusoidalEmbedding, check_int, time_rows
from .mlp import ACTIVATIONS


def fourier_frequencies(num_frequencies: int, scale: float) -> torch.Tensor:
    """Angular frequencies f_k = scale^(k/(K−1)), k = 0 … K−1 (1 … scale, geometric); [K] float32.

    With K = 1 the single frequency is 1. ``scale`` is in radians per unit of model space
    (normalised data, std 1), so the finest wavelength is 2π/scale.
    """
    if num_frequencies == 1:
        return torch.ones(1)
    k = torch.arange(num_frequencies, dtype=torch.float64) / (num_frequencies - 1)
    return (float(scale) ** k).to(torch.float32)


class FourierFeatures(nn.Module):
    """x [B, D] → [x, sin(f_k x_d), cos(f_k x_d)] [B, D·(1 + 2K)] (frequencies: :func:`fourier_frequencies`).

    The frequencies are a non-persistent buffer rebuilt from (num_frequencies, scale), which the
    checkpoint config stores; with num_frequencies = 0 this is the identity.
    """

    def __init__(self, dim: int, num_frequencies: int, scale: float):
        super().__init__()
        self.dim, self.num_frequencies = dim, num_frequencies
        self.out_dim = dim * (1 + 2 * num_frequencies)
        self.register_buffer("freqs", fourier_frequencies(max(num_frequencies, 1), scale), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_frequencies == 0:
            return x
        args = (x[:, :, None] * self.freqs).flatten(1)  # [B, D·K]
        return torch.cat([x, torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """h + W₂·act(W₁·act(LayerNorm(h)·(1 + scale(t)) + shift(t))): pre-norm, time as scale/shift.

    ``emb`` may be [1, E] (one t for the whole batch) or [B, E]; it broadcasts against h [B, W].
    W₂ starts at zero, so every block starts as the identity.
    """

    def __init__(self, width: int, time_dim: int, activation: str):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.time = nn.Linear(time_dim, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = ACTIVATIONS[activation]()
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time(emb).chunk(2, dim=1)
        r = self.act(self.norm(h) * (1.0 + scale) + shift)
        return h + self.fc2(self.act(self.fc1(r)))


class ResMLP(nn.Module):
    """ε̂ = ResMLP(x_t, t) for x_t float [B, dim], t int64 [B]; output [B, dim] — or, with
    ``learn_sigma``, [B, 2·dim] = [prediction | v], v the variance interpolation of Nichol & Dhariwal
    (2021; ``variance="learned_range"`` of the ddpm sampler, trained by fastddpm.train's L_hybrid).

    x_t → Fourier features (``fourier_features`` frequencies from 1 to ``fourier_scale`` rad per
    normalised unit, 0 = off) → Linear to ``width`` → ``depth`` residual blocks, each modulated
    by the time embedding (sinusoidal → Linear → SiLU → Linear, ``time_dim`` wide) → LayerNorm →
    act → Linear to dim.

    Time path once per step: when every sample shares t — a stride-0 t (what the sampling loop
    passes) or t of shape [1] (what ONNX graphs get) — the embedding is computed on one row and
    broadcast against the batch; a t with one entry per sample takes the same code with [B] rows.
    ``accepts_shared_t``: the ONNX export gives t its own axis and the ONNX Runtime engine passes
    t [1] (tests/test_shared_t.py checks both, torch and ORT).

    Conditional (``num_classes`` = K > 0): a label embedding of K + 1 classes (the last is "no
    label") is added to the time embedding (:class:`~fastddpm.nets.embedding.LabelEmbedding`).
    """

    accepts_shared_t = True

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, fourier_features: int = 16,
                 fourier_scale: float = 25.0, activation: str = "silu", num_steps: int = 1000,
                 time_dim: int = 64, learn_sigma: bool = False, num_classes: int = 0):
        super().__init__()
        check_int(dim, "dim")
        check_int(width, "width")
        check_int(depth, "depth")
        check_int(num_steps, "num_steps")
        check_int(fourier_features, "fourier_features", 0)
        time_dim = check_int(time_dim, "time_dim", 2)
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        if isinstance(fourier_scale, bool) or not isinstance(fourier_scale, (int, float)) or not (
                math.isfinite(fourier_scale) and fourier_scale >= 1.0):
            raise ValueError(f"fourier_scale must be a finite number >= 1 (the highest frequency, rad per "
                             f"normalised unit), got {fourier_scale!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {activation!r}")
        if not isinstance(learn_sigma, bool):
            raise ValueError(f"learn_sigma must be True or False, got {learn_sigma!r}")
        self.config = dict(dim=dim, width=width, depth=depth, fourier_features=fourier_features,
                           fourier_scale=float(fourier_scale), activation=activation, num_steps=num_steps,
                           time_dim=time_dim)
        if learn_sigma:  # recorded only when set, so that configs of fixed-variance nets stay as they were
            self.config["learn_sigma"] = True
        self.learn_sigma = learn_sigma
        self.label_embed = LabelEmbedding.make(self.config, num_classes, time_dim)
        self.num_classes, self.null_label = LabelEmbedding.attributes(self.label_embed)
        self.sample_shape = (dim,)
        self.num_steps = num_steps
        self.features = FourierFeatures(dim, fourier_features, float(fourier_scale))
        self.inp = nn.Linear(self.features.out_dim, width)
        self.time_embed = nn.Sequential(SinusoidalEmbedding(time_dim), nn.Linear(time_dim, time_dim), nn.SiLU(),
                                        nn.Linear(time_dim, time_dim))
        self.blocks = nn.ModuleList(ResBlock(width, time_dim, activation) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.act_out = ACTIVATIONS[activation]()
        self.out = nn.Linear(width, 2 * dim if learn_sigma else dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: float [B, dim]; t: int64 [B] (or [1], or a stride-0 [B] view) in [0, num_steps);
        labels (a conditional net, ``num_classes`` > 0): int64 [B] in [0, num_classes], the last
        being "no label" (None: no label for every sample)."""
        emb = self.time_embed(time_rows(t))  # [1, E] when all samples share t (embedded once), else [B, E]
        if self.label_embed is not None:
            emb = self.label_embed(emb, labels)
        h = self.inp(self.features(x_t))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.act_out(self.norm_out(h)))
