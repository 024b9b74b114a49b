"""Sampling: the loop (:func:`sample`), its options, samplers' plans, timestep respacing, bulk
writes, and :class:`Pipeline` (a checkpoint or an ONNX file, with the engine choice).

Importing this package does not import torch: the ONNX Runtime path reuses the loop with a
NumPy model. The torch adapters import torch when a torch model is used.
"""
from .loop import SamplingRun, Trajectory, run_in_memory, sample
from .options import SamplingOptions
from .pipeline import OnnxSampler, Pipeline
from .plan import SAMPLERS, Plan, make_plan
from .timesteps import SPACINGS, step_pairs, timesteps

__all__ = ["sample", "Pipeline", "OnnxSampler", "SamplingOptions", "SamplingRun", "Trajectory", "run_in_memory",
           "SAMPLERS", "Plan", "make_plan", "SPACINGS", "timesteps", "step_pairs"]
