"""Sampling: the loop (:func:`sample`), its options, samplers' plans, timestep respacing and bulk
writes.

Importing this package does not import torch: the ONNX Runtime path reuses the loop with a
NumPy model. The torch adapters import torch when a torch model is used.

:class:`Pipeline` and :class:`OnnxSampler` live one floor up, in :mod:`fastddpm.pipelines`
(``from fastddpm import Pipeline``); nothing here imports that floor, so
``fastddpm.sampling.Pipeline`` is an ImportError that says where they went.
"""
from .loop import SamplingRun, Trajectory, run_in_memory, sample
from .options import SamplingOptions
from .plan import SAMPLERS, Plan, make_plan
from .timesteps import SPACINGS, step_pairs, timesteps

_MOVED = ("Pipeline", "OnnxSampler")


def __getattr__(name):
    # Not a re-export: importing fastddpm.pipelines from here would be an upward import (the pipeline
    # floor imports this package). An ImportError, not an AttributeError, so that
    # `from fastddpm.sampling import Pipeline` shows this message rather than Python's generic one.
    if name in _MOVED:
        raise ImportError(f"fastddpm.sampling.{name} moved one floor up: use `from fastddpm import {name}` "
                          f"(or `from fastddpm.pipelines import {name}`)")
    raise AttributeError(f"module 'fastddpm.sampling' has no attribute {name!r}")


__all__ = ["sample", "SamplingOptions", "SamplingRun", "Trajectory", "run_in_memory",
           "SAMPLERS", "Plan", "make_plan", "SPACINGS", "timesteps", "step_pairs"]
