"""MLP ε-network for low-dimensional data ([B, dim]) with t entering every hidden layer."""
from __future__ import annotations

import torch
from torch import nn

from .embedding import TIME_EMBEDDINGS, SinusoidalEmbedding, check_choice, check_int, time_rows

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}


class MLP(nn.Module):
    """ε̂ = MLP(x_t, t) for data of shape [B, dim].

    ``depth`` hidden layers of ``width`` units; before each hidden activation the layer adds a
    projection of t: with ``time_embedding="sinusoidal"`` (default) a per-layer linear map of
    one shared sinusoidal→MLP embedding, with ``"learned"`` a per-layer learned table
    ``nn.Embedding(num_steps, width)`` — the original butterfly net's per-layer projection of
    t, written as a lookup so it does not depend on the scale of t. Output: [B, dim].

    Shared t (fastddpm.nets.embedding): the time path runs on ``time_rows(t)``, so a stride-0
    or [1] t costs one row however large B is, and its [1, width] projections broadcast.
    """

    accepts_shared_t = True

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, activation: str = "silu",
                 time_embedding: str = "sinusoidal", num_steps: int = 1000, time_dim: int | None = None):
        super().__init__()
        check_int(dim, "dim")
        check_int(width, "width")
        check_int(depth, "depth")
        check_int(num_steps, "num_steps")
        check_choice(activation, "activation", tuple(ACTIVATIONS))
        check_choice(time_embedding, "time_embedding", TIME_EMBEDDINGS)
        time_dim = width if time_dim is None else check_int(time_dim, "time_dim", 2)
        self.config = dict(dim=dim, width=width, depth=depth, activation=activation,
                           time_embedding=time_embedding, num_steps=num_steps, time_dim=time_dim)
        self.sample_shape = (dim,)
        self.num_steps = num_steps
        act = ACTIVATIONS[activation]
        self.layers = nn.ModuleList(nn.Linear(dim if i == 0 else width, width) for i in range(depth))
        self.acts = nn.ModuleList(act() for _ in range(depth))
        if time_embedding == "sinusoidal":
            self.time_embed = nn.Sequential(SinusoidalEmbedding(time_dim), nn.Linear(time_dim, time_dim), act())
            self.time_proj = nn.ModuleList(nn.Linear(time_dim, width) for _ in range(depth))
        else:
            self.time_embed = None
            self.time_proj = nn.ModuleList(nn.Embedding(num_steps, width) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t: float [B, dim]; t: int64 [B] in [0, num_steps), or [1] / stride-0 when shared. Returns [B, dim]."""
        rows = time_rows(t)  # [R] with R = 1 (shared t) or B
        emb = rows if self.time_embed is None else self.time_embed(rows)  # [R, time_dim]
        h = x_t
        for layer, proj, act in zip(self.layers, self.time_proj, self.acts):
            h = act(layer(h) + proj(emb))  # [B, width] + [R, width]
        return self.out(h)
