"""Argument checks shared by the public ops: every error names the argument and what is allowed."""
from __future__ import annotations

import numbers

import numpy as np

from .backends import is_torch_tensor

HOST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_INDEX = 2**63 - 1


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


def check_host_keys(backend: str, **keys) -> None:
    """Seeds/streams given as tensors are read on the device: only the Triton backend does."""
    for name, value in keys.items():
        if backend != "triton" and is_torch_tensor(value):
            raise TypeError(f"{name} as a tensor is accepted by backend='triton' only; "
                            f"pass an int to backend={backend!r}")


def check_offset(offset, numel: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset must be a non-negative integer, got {type(offset).__name__}")
    if offset < 0 or int(offset) + numel > MAX_INDEX:
        raise ValueError(f"offset must lie in [0, 2**63 - numel), got {offset}")
    return int(offset)


def check_clip(clip):
    if clip is None:
        return None
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not clip > 0 or not np.isfinite(clip):
        raise ValueError(f"clip must be None or a finite number > 0, got {clip!r}")
    return float(clip)


def host_array(x, name: str, *, dtypes=HOST_DTYPES) -> np.ndarray:
    """A zero-copy NumPy view of a NumPy array or CPU torch tensor, checked for the kernels."""
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; CPU backends need CPU tensors")
        if x.requires_grad:
            x = x.detach()
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
        if x.dtype not in _torch_dtypes(dtypes):
            hint = ""
            if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
                hint = " (float16 and bfloat16 run on backend='triton', with CUDA tensors)"
            raise TypeError(f"{name} must be {' or '.join(d.name for d in dtypes)}, got {x.dtype}{hint}")
        return x.numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(d.name for d in dtypes)}, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray first)")
    return x


def _torch_dtypes(dtypes):
    import torch

    return [getattr(torch, d.name) for d in dtypes]


def check_batch_shape(x: np.ndarray, name: str) -> tuple[int, int]:
    """(B, D) of an array [B, …]: B samples of D elements each."""
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension [B, ...], got a scalar")
    batch = x.shape[0]
    if batch == 0:
        return 0, 0
    return batch, x.size // batch


def check_same(x: np.ndarray, y: np.ndarray, name_x: str, name_y: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{name_y} has shape {tuple(y.shape)} but {name_x} has shape {tuple(x.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"{name_y} has dtype {y.dtype} but {name_x} has dtype {x.dtype}")


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


def check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
        raise FloatingPointError(f"{name} contains NaN or inf (first at flat index {bad})")
