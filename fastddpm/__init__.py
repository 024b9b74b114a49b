"""fastddpm: a fast, reproducible DDPM sampling engine (Triton on GPU, Numba on CPU)."""
import sys

from .backends import BACKENDS, BackendUnavailableError
from .ops import ddim_step, ddpm_step, q_sample, randn
from .schedule import SCHEDULES, Schedule

__version__ = "0.1.0"

# Parts that import torch, onnxruntime or matplotlib load on first use, so that
# ``import fastddpm`` stays light and works without torch (the ONNX runtime path).
_LAZY = {
    "sample": "fastddpm.sampling",
    "Pipeline": "fastddpm.sampling",
    "load": "fastddpm.checkpoint",
    "save": "fastddpm.checkpoint",
    "train": "fastddpm.train",
    "export_onnx": "fastddpm.onnx_export",
    "OnnxSampler": "fastddpm.runtime",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastddpm' has no attribute {name!r}")


class _Package(type(sys.modules[__name__])):
    """``fastddpm.train`` is the function, although ``fastddpm/train.py`` is also a submodule.

    Importing a submodule makes the import system set it as an attribute of its package, so
    after the first ``fastddpm.train(...)`` (or any ``from fastddpm.train import …``) the name
    would turn into the module and the next call would fail with "'module' object is not
    callable". The submodule stays reachable as ``sys.modules["fastddpm.train"]`` and through
    ``from fastddpm.train import …``.
    """

    def __setattr__(self, name, value):
        if name in _LAZY and getattr(value, "__name__", None) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "BACKENDS", "BackendUnavailableError", "SCHEDULES", "Schedule",
    "ddim_step", "ddpm_step", "q_sample", "randn", "__version__",
]
