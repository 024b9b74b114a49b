"""Model adapters: what the loop calls to get the network output for one batch at one step.

Two kinds of model are accepted:
- a torch ``nn.Module`` called as ``model(x, t)`` with x float [B, …] and t int64 [B];
- any object with ``array_api == "numpy"`` called as ``model(x: np.ndarray, t: np.ndarray[int64])
  -> np.ndarray`` (the ONNX Runtime sampler is one; no torch needed).

``host_model`` gives a function on NumPy arrays for the CPU loop (torch modules get
``torch.from_numpy`` views both ways, no copies); the torch loop calls modules directly.
"""
from __future__ import annotations

import sys

import numpy as np


def model_kind(model) -> str:
    """'numpy' or 'torch' (an nn.Module), or a TypeError saying what is accepted."""
    if getattr(model, "array_api", None) == "numpy":
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    raise TypeError(
        f"model must be a torch nn.Module called as model(x, t), or an object with array_api == 'numpy' "
        f"called as model(x: np.ndarray, t: np.ndarray[int64]) -> np.ndarray; got {type(model).__name__}"
    )


def model_device(model):
    """The device of a module's first parameter or buffer (CPU when it has none)."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_output(out, x, k: int, t: int, num_steps: int):
    """The model output must have x's shape (and, on the host, be an array)."""
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"the model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)} "
                         f"at step {k + 1}/{num_steps} (t={t}); it must return one value per input element")


def host_model(model, kind: str, dtype, timesteps=()):
    """A function f(x [B, …] np.ndarray, t int) -> C-contiguous np.ndarray of x's dtype.

    Torch modules get t as a stride-0 view of one int64 (``expand``): no allocation per step,
    and a net may compute its time path once when ``t.stride(0) == 0`` (all samples share t).
    """
    if kind == "numpy":
        def call(x, t):
            out = model(x, np.full(x.shape[0], t, dtype=np.int64))
            if not isinstance(out, np.ndarray):
                raise TypeError(f"a model with array_api == 'numpy' must return a NumPy array, got {type(out).__name__}")
            if out.dtype != x.dtype:
                out = out.astype(x.dtype)
            return out if out.flags.c_contiguous else np.ascontiguousarray(out)
        return call

    import torch

    one = {int(t): torch.full((1,), int(t), dtype=torch.int64) for t in timesteps}

    def call(x, t):
        xt = torch.from_numpy(x)
        t1 = one.get(t)
        if t1 is None:
            t1 = one[t] = torch.full((1,), t, dtype=torch.int64)
        out = model(xt, t1.expand(x.shape[0]))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a torch tensor, got {type(out).__name__}")
        if out.dtype != xt.dtype:
            out = out.to(xt.dtype)
        return out.contiguous().numpy()
    return call
