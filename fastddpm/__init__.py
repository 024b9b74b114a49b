"""fastddpm: a fast, reproducible DDPM sampling engine (Triton on GPU, Numba on CPU)."""
from .backends import BACKENDS, BackendUnavailableError
from .kernels.samplers import NAMES as SAMPLERS  # every sampler (one module each in kernels/samplers/)
from .ops import ddim_step, ddpm_step, q_sample, randn
from .schedule import SCHEDULES, Schedule

__version__ = "0.1.0"

# Parts that import torch, onnxruntime or matplotlib load on first use, so that
# ``import fastddpm`` stays light and works without torch (the ONNX runtime path).
# (The training code lives in fastddpm/training.py so that no submodule shadows the function
# ``fastddpm.train`` once imported.)
_LAZY = {
    "sample": "fastddpm.sampling",
    "Pipeline": "fastddpm.pipelines",
    "load": "fastddpm.checkpoint",
    "save": "fastddpm.checkpoint",
    "train": "fastddpm.training",
    "distill": "fastddpm.distillation",
    "export_onnx": "fastddpm.onnx_export",
    "OnnxSampler": "fastddpm.pipelines",
    # The drop-in diffusers schedulers (need diffusers). Top-level names because a diffusers
    # pipeline saved with one records its library as "fastddpm" and loads the class from there.
    "FusedDDPMScheduler": "fastddpm.diffusers",
    "FusedDDIMScheduler": "fastddpm.diffusers",
    "FusedDPMSolverMultistepScheduler": "fastddpm.diffusers",
    "FusedUniPCMultistepScheduler": "fastddpm.diffusers",
    "FusedEulerAncestralDiscreteScheduler": "fastddpm.diffusers",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastddpm' has no attribute {name!r}")



__all__ = [
    "BACKENDS", "BackendUnavailableError", "SAMPLERS", "SCHEDULES", "Schedule",
    "ddim_step", "ddpm_step", "q_sample", "randn", "__version__",
]
