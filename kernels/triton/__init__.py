"""Triton GPU kernels (CPU tensors only under TRITON_INTERPRET=1): one file per op.

Exposes exactly what fastddpm.ops calls — randn, q_sample, ddpm_step, ddim_step — plus the
schedule tables built on the device (schedule_tables, respaced_betas).
"""
from .ddim_step import ddim_step
from .ddpm_step import ddpm_step
from .q_sample import q_sample
from .randn import randn
from .schedule import respaced_betas, schedule_tables

__all__ = ["randn", "q_sample", "ddpm_step", "ddim_step", "schedule_tables", "respaced_betas"]
