"""Accept models whose forward returns an output object (diffusers' UNet2DModel → ``.sample``).

No diffusers import: a module is recognised by duck typing (a ``config`` with ``in_channels`` and
``sample_size``), so the core never pulls in diffusers.
"""
from __future__ import annotations

import sys


def is_diffusers_unet(model) -> bool:
    config = getattr(model, "config", None)
    return (type(model).__module__.startswith("diffusers.") and config is not None
            and hasattr(config, "get") and "in_channels" in config and "sample_size" in config)


def diffusers_sample_shape(model) -> tuple[int, ...]:
    """[C, H, W] of one sample from a UNet2DModel config (sample_size int or (H, W))."""
    size = model.config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(model.config["in_channels"]), int(h), int(w))


def as_fastddpm_model(model):
    """``model`` unchanged, or a diffusers UNet wrapped so that ``model(x, t)`` returns a tensor.

    The wrapper is an nn.Module (the torch loop, CUDA graphs and ONNX export see a plain net) and
    carries ``sample_shape`` from the UNet config.
    """
    if not is_diffusers_unet(model):
        return model
    torch = sys.modules["torch"]

    class DiffusersUNet(torch.nn.Module):
        """``unet(x, t).sample`` as ``forward(x [B, C, H, W], t int64 [B]) -> [B, C, H, W]``."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet
            self.sample_shape = diffusers_sample_shape(unet)

        def forward(self, x, t):
            return self.unet(x, t, return_dict=False)[0]

    return DiffusersUNet(model)
