"""Sampling: the loop (:func:`sample`), samplers' plans, timestep respacing, bulk writes, Pipeline.

Importing this package does not import torch: the ONNX Runtime path reuses the loop with a
NumPy model. Pipeline and the torch adapters import torch when used.
"""
from .loop import SamplingRun, Trajectory, run_in_memory, sample
from .plan import SAMPLERS, Plan, make_plan
from .timesteps import SPACINGS, step_pairs, timesteps


def __getattr__(name):
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'fastddpm.sampling' has no attribute {name!r}")


__all__ = ["sample", "Pipeline", "SamplingRun", "Trajectory", "run_in_memory", "SAMPLERS", "Plan",
           "make_plan", "SPACINGS", "timesteps", "step_pairs"]
