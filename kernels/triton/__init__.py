"""Triton GPU kernels (CPU tensors only under TRITON_INTERPRET=1): one file per op.

Exposes exactly what the public ops call — randn, q_sample, ddpm_step, ddim_step. The sampling
loop's fused update is update.LoopUpdate.
"""
from .ddim_step import ddim_step
from .ddpm_step import ddpm_step
from .q_sample import q_sample
from .randn import randn

__all__ = ["randn", "q_sample", "ddpm_step", "ddim_step"]
