"""Argument checks shared by the public ops: every error names the argument and what is allowed."""
from __future__ import annotations

import numbers

import numpy as np

# The checks the kernels need live in kernels/ (which imports nothing from fastddpm); re-exported here.
from .kernels._checks import check_choice, check_offset, check_uint32, host_timesteps, is_torch_tensor  # noqa: F401

HOST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_host_keys(backend: str, **keys) -> None:
    """Seeds/streams given as tensors are read on the device: only the Triton backend does."""
    for name, value in keys.items():
        if backend != "triton" and is_torch_tensor(value):
            raise TypeError(f"{name} as a tensor is accepted by backend='triton' only; "
                            f"pass an int to backend={backend!r}")


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


def check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(-1)))[0])
        raise FloatingPointError(f"{name} contains NaN or inf (first at flat index {bad})")
