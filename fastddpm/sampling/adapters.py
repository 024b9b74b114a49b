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


def diffusers_classes(model) -> tuple[int, int | None]:
    """(num_classes, null_label) of a UNet2DModel: class-conditional when built with
    ``num_class_embeds`` E (a label lookup, ``class_embed_type`` None). Its "no label" class is
    ``unet.null_label`` when the user sets it (DiT's convention: E = K + 1, null K = E − 1, then
    the real classes are 0 … K − 1), else it has none (no unconditional sampling, no guidance)."""
    config = model.config
    e = config.get("num_class_embeds")
    if not e or config.get("class_embed_type") not in (None,):
        return 0, None
    null = getattr(model, "null_label", None)
    if null is not None and not (isinstance(null, int) and 0 <= null < e):
        raise ValueError(f"the UNet's null_label must be an int in [0, num_class_embeds = {e}), got {null!r}")
    return (e - 1 if null == e - 1 else e), null


def as_fastddpm_model(model):
    """``model`` unchanged, or a diffusers UNet wrapped so that ``model(x, t)`` returns a tensor.

    The wrapper is an nn.Module (the torch loop, CUDA graphs and ONNX export see a plain net) and
    carries ``sample_shape`` from the UNet config. A class-conditional UNet (``num_class_embeds``)
    is called ``model(x, t, labels)`` → ``unet(x, t, class_labels=labels)``, with ``num_classes``
    and ``null_label`` from :func:`diffusers_classes`.
    """
    if not is_diffusers_unet(model):
        return model
    torch = sys.modules["torch"]
    num_classes, null_label = diffusers_classes(model)

    class DiffusersUNet(torch.nn.Module):
        """``unet(x, t).sample`` as ``forward(x [B, C, H, W], t int64 [B]) -> [B, C, H, W]``."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet
            self.sample_shape = diffusers_sample_shape(unet)
            self.num_classes, self.null_label = num_classes, null_label

        def forward(self, x, t, labels=None):
            if self.num_classes and labels is None:
                if self.null_label is None:
                    raise ValueError("this class-conditional UNet2DModel needs labels (it has no 'no label' class)")
                labels = torch.full((x.shape[0],), self.null_label, dtype=torch.int64, device=x.device)
            if labels is not None:
                return self.unet(x, t, class_labels=labels, return_dict=False)[0]
            return self.unet(x, t, return_dict=False)[0]

    return DiffusersUNet(model)
