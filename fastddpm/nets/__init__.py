"""ε-networks: every net is an ``nn.Module`` with ``forward(x_t, t)``, t int64 [B].

The built-in nets keep the shared-t convention (time path computed once per step when all
samples share t; ``accepts_shared_t = True``); a new net should too — see
:mod:`fastddpm.nets.embedding` for the three rules.

``MODEL_CLASSES`` names the classes a checkpoint may ask for; ``build(name, **kwargs)`` makes
one. Any user module with the same call signature works wherever a built-in net does; to load
it from a checkpoint, add it to ``MODEL_CLASSES`` first (its constructor keywords are stored).
"""
from __future__ import annotations

from .embedding import TIME_EMBEDDINGS, SinusoidalEmbedding, time_rows
from .mlp import ACTIVATIONS, MLP
from .resmlp import ResMLP
from .unet import UNet

MODEL_CLASSES = {"MLP": MLP, "ResMLP": ResMLP, "UNet": UNet}


def build(class_name: str, **kwargs):
    """An instance of ``MODEL_CLASSES[class_name]`` built with ``kwargs``."""
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {class_name!r}; known: {', '.join(sorted(MODEL_CLASSES))} "
                         "(register a custom class in fastddpm.nets.MODEL_CLASSES)")
    return MODEL_CLASSES[class_name](**kwargs)


__all__ = ["ACTIVATIONS", "MLP", "MODEL_CLASSES", "ResMLP", "SinusoidalEmbedding", "TIME_EMBEDDINGS", "UNet", "build",
           "time_rows"]
