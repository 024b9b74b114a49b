"""Time-step embeddings shared by the nets: t (int64 [B]) → float features [B, dim]."""
from __future__ import annotations

import math

import torch
from torch import nn

TIME_EMBEDDINGS = ("sinusoidal", "learned")


class SinusoidalEmbedding(nn.Module):
    """Transformer-style features [sin(t·f_k), cos(t·f_k)] with f_k = 10000^(−k/(dim/2)).

    Input t: int or float [B]; output float32 [B, dim]. The frequencies are a
    non-persistent buffer (rebuilt from ``dim``), so checkpoints hold only learned weights.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim must be an even integer >= 2, got {dim!r}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(value, name: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value
