"""Argument checks the kernels share with fastddpm's public ops (every error names the argument).

They live here, at the bottom of the stack, because kernels/ imports nothing from the rest of
the package, which re-exports them.
"""
from __future__ import annotations

import numbers
import os
import sys

import numpy as np

MAX_INDEX = 2**63 - 1


def is_torch_tensor(x) -> bool:
    """Without importing torch: a tensor exists only if torch was imported by someone."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def interpreting_triton() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_choice(value, name: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_uint32(value, name: str) -> int:
    """Seeds and streams are Philox key words: integers in [0, 2³²)."""
    if is_torch_tensor(value):  # a 0-d integer tensor is accepted by the Triton path only
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer in [0, 2**32), got {type(value).__name__}")
    if not 0 <= int(value) < 2**32:
        raise ValueError(f"{name} must lie in [0, 2**32), got {value}")
    return int(value)


def check_offset(offset, numel: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset must be a non-negative integer, got {type(offset).__name__}")
    if offset < 0 or int(offset) + numel > MAX_INDEX:
        raise ValueError(f"offset must lie in [0, 2**63 - numel), got {offset}")
    return int(offset)


def host_timesteps(t, name: str, batch: int, num_steps: int, *, allow_final: bool = False) -> np.ndarray:
    """An int scalar or int array [B] of steps in [0, T) (or [-1, T) with allow_final) → int64."""
    low = -1 if allow_final else 0
    if is_torch_tensor(t):
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device} but the data are on the CPU")
        t = t.numpy()
    if isinstance(t, bool) or isinstance(t, float):
        raise TypeError(f"{name} must be an integer or an integer array, got {type(t).__name__}")
    arr = np.asarray(t)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != batch):
        raise ValueError(f"{name} must be an integer or have shape [B] = [{batch}], got shape {arr.shape}")
    if arr.size and (arr.min() < low or arr.max() >= num_steps):
        raise ValueError(f"{name} must lie in [{low}, {num_steps}) for this schedule (T = {num_steps}); "
                         f"got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)
