"""Time-step embeddings shared by the nets, and the shared-t convention every built-in net keeps.

Shared t (time conditioning once per step)
------------------------------------------
In a sampling loop every sample of a step has the same t, so the loop hands torch nets t as a
stride-0 view ``t1.expand(B)`` (fastddpm.sampling.models) and ONNX graphs a t of shape [1]
(fastddpm.runtime). A net that keeps the convention computes its whole time path (embedding,
its MLP, every per-layer projection) on ``time_rows(t)`` — one row when t is shared, B rows
otherwise — and lets broadcasting apply it: ``[1, W]`` against ``[B, W]`` (or ``[1, C, 1, 1]``
against ``[B, C, H, W]``). Outputs equal the per-sample path to float32 rounding; on the
butterfly MLP the time path is two thirds of the FLOPs at any B, so this is what makes a step
cheap (docs/sampling.md).

To keep it in a new net:
1. ``rows = time_rows(t)`` first, then compute every t-only tensor from ``rows``: shapes
   [R, …] with R = 1 or B. Never index or reshape with B inside the time path and never
   ``expand``/``repeat`` the time features to B yourself; meet the x-dependent tensors only in
   broadcasting elementwise ops (``h + proj(emb)``, ``h * (1 + scale[:, :, None, None])``).
2. Set the class attribute ``accepts_shared_t = True``. :func:`fastddpm.export_onnx` then gives
   the graph's ``t`` input its own dynamic axis (so it takes [1] as well as [B]) and records
   ``fastddpm.shared_t = "1"`` in the metadata, which tells the ONNX Runtime engine to pass t
   of shape [1]. A module without the attribute is exported and run with t [B], as before.
3. Test it like tests/test_shared_t.py: shared (stride-0 and [1]) == per-sample t, torch and ONNX.

A user's module that knows nothing of this keeps working: it receives a stride-0 [B] view,
which is an ordinary int64 [B] tensor to every torch op.
"""
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


def time_rows(t: torch.Tensor) -> torch.Tensor:
    """The rows of t that a net's time path runs on: t[:1] when every sample shares t, else t.

    t: int64 [B] (or a 0-d tensor). Shared means a stride-0 view (``t1.expand(B)``, what the
    sampling loop passes) or a single element ([1] or 0-d); the result then has shape [1] and
    the time features broadcast against the batch. A genuinely per-sample t comes back as is.
    Whether t is shared is read from its shape and strides, never from its values (no host
    sync, and an ONNX trace with t [2] keeps the per-row graph, which accepts [1] and [B]).
    """
    if t.dim() == 0:
        return t.reshape(1)
    # Strides only: a size comparison would be a TracerWarning (and a constant) in an ONNX trace.
    if t.dim() == 1 and t.stride(0) == 0:
        return t[:1]
    return t


class LabelEmbedding(nn.Module):
    """Class labels joined with the time embedding: ``emb + table[labels]`` (improved-diffusion's
    ``label_emb``; DiT adds its label embedding to the time embedding the same way).

    ``num_classes`` = K real classes plus one "no label" class (index K, :attr:`null_label`), so
    one model serves conditional and unconditional sampling, and classifier-free guidance
    (training replaces a share of the labels by K: ``label_dropout``, fastddpm.training). The
    table starts at zero, so a fresh conditional net computes what the unconditional one would.

    ``labels`` None means "no label" for every sample: the embedding is then one row and the
    shared-t broadcast is kept ([1, E]); with labels [B] the result is [B, E] (a per-sample
    condition: the time path itself still runs once).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes")
        self.null_label = self.num_classes
        self.table = nn.Embedding(self.num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((1,), self.null_label, dtype=torch.int64, device=emb.device)
        return emb + self.table(labels)

    @classmethod
    def make(cls, config: dict, num_classes, dim: int):
        """A LabelEmbedding for ``num_classes`` > 0 (recorded in the net's ``config``), None for 0
        (an unconditional net: config unchanged, so its checkpoints and export-cache keys are too)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: unconditional), got {num_classes!r}")
        if num_classes == 0:
            return None
        config["num_classes"] = num_classes
        return cls(num_classes, dim)

    @staticmethod
    def attributes(embed) -> tuple:
        """(num_classes, null_label) a net exposes: (0, None) when it is unconditional."""
        return (0, None) if embed is None else (embed.num_classes, embed.null_label)


def check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(value, name: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value
