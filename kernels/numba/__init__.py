"""Numba CPU kernels: parallel over chunks of CHUNK elements, noise generated per chunk."""
from .randn import randn
from .q_sample import q_sample
from .step import ddim_step, ddpm_step

__all__ = ["randn", "q_sample", "ddpm_step", "ddim_step"]
