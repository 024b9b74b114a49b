"""Model adapters: what the loop calls to get the network output for one batch at one step.

Two kinds of model are accepted:
- a torch ``nn.Module`` called as ``model(x, t)`` with x float [B, …] and t int64 [B];
- any object with ``array_api == "numpy"`` called as ``model(x: np.ndarray, t: np.ndarray[int64])
  -> np.ndarray`` (the ONNX Runtime sampler is one; no torch needed).

``host_model`` gives a function on NumPy arrays for the CPU loop (torch modules get
``torch.from_numpy`` views both ways, no copies); the torch loop calls modules directly.
"""
from __future__ import annotations

import hashlib
import json
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


def check_output(out, x, k: int, t: int, num_steps: int, expected=None):
    """The model output must have the ``expected`` shape: x's, or with the channel axis doubled for a
    sampler that reads a variance channel (learned / learned_range)."""
    expected = tuple(x.shape) if expected is None else tuple(expected)
    if tuple(out.shape) == expected:
        return
    if expected != tuple(x.shape):
        raise ValueError(f"the model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)} at call "
                         f"{k + 1}/{num_steps} (t={t}); variance='learned'/'learned_range' needs a network whose "
                         f"output carries a variance channel, shape {expected} (twice the channels); use a fixed "
                         "variance (fixed_small, fixed_large) for this network")
    raise ValueError(f"the model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)} "
                     f"at call {k + 1}/{num_steps} (t={t}); it must return one value per input element")


def declares_variance(model) -> bool:
    """Whether the network outputs a variance channel besides its prediction ([B, 2C, …] =
    prediction | v): a built-in net made with ``learn_sigma`` (fastddpm.nets), or an ONNX file
    exported from one (:attr:`fastddpm.runtime.OnnxModel.learn_sigma`)."""
    return bool(getattr(model, "learn_sigma", False))


def host_model(model, kind: str, dtype, timesteps=()):
    """The network of a host run: ``bind(x, labels=None)`` once per batch → ``net(k)``, the output at
    t = ``timesteps[k]`` for the current contents of the batch buffer x [B, …] (a conditional
    model is called ``model(x, t, labels)`` with the int64 [B] ``labels`` given at binding).

    ``net(k)`` returns a C-contiguous np.ndarray of x's dtype (the loop checks its shape). x
    is the loop's persistent buffer, updated in place between steps, so everything that does
    not change between steps is resolved in ``bind``, once per batch:
    - torch modules: a ``torch.from_numpy`` view of x (no per-step conversion) and t as a
      stride-0 view ``t1.expand(B)`` per step (one int64 each; built once per batch size), so a
      net may compute its time path once (fastddpm.nets.embedding, "shared t");
    - objects with ``array_api == "numpy"`` that define ``bind_batch(x, timesteps)`` (the ONNX
      Runtime model: IO binding on x, t of shape [1], a reused output buffer) do their own;
    - other NumPy models are called ``model(x, t int64 [B])`` with a fresh t per step.
    """
    timesteps = [int(t) for t in timesteps]
    if kind == "numpy":
        return _NumpyNet(model, timesteps)
    return _TorchNet(model, timesteps)


def _as_numpy_output(out, dtype):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"a model with array_api == 'numpy' must return a NumPy array, got {type(out).__name__}")
    if out.dtype != dtype:
        out = out.astype(dtype)
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)


class _NumpyNet:
    def __init__(self, model, timesteps):
        self.model, self.timesteps = model, timesteps

    def bind(self, x: np.ndarray, labels=None):
        model, ts, dtype = self.model, self.timesteps, x.dtype
        bind_batch = getattr(model, "bind_batch", None)
        if bind_batch is not None:
            net = bind_batch(x, ts) if labels is None else bind_batch(x, ts, labels=labels)
            if net is not None:
                return net
        B = x.shape[0]
        if labels is not None:
            def net(k):
                return _as_numpy_output(model(x, np.full(B, ts[k], dtype=np.int64), labels), dtype)
            return net

        def net(k):
            return _as_numpy_output(model(x, np.full(B, ts[k], dtype=np.int64)), dtype)
        return net


class _TorchNet:
    def __init__(self, model, timesteps):
        import torch

        self.torch, self.model, self.timesteps = torch, model, timesteps
        self._t = torch.tensor(timesteps, dtype=torch.int64)
        self._views = {}  # batch size → [K] stride-0 t views (a run has at most two sizes)

    def bind(self, x: np.ndarray, labels=None):
        torch, model = self.torch, self.model
        B = x.shape[0]
        tv = self._views.get(B)
        if tv is None:
            # Row k of a [K, B] stride-(1, 0) view of the K timesteps is t_k as a stride-0 [B]:
            # K views in one call (a torch.full + expand per step cost ~12 µs per step of a
            # 1000-step run at n = 1 in set-up alone; 2-core EPYC).
            tv = self._views[B] = self._t.as_strided((len(self.timesteps), B), (1, 0)).unbind(0)
        xt = torch.from_numpy(x)  # shares x's memory: the loop's in-place updates show through
        dt, Tensor = xt.dtype, torch.Tensor
        if labels is not None:  # a conditional model: model(x, t, labels) with labels int64 [rows of x]
            yt = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
            plain = model
            model = lambda x_, t_: plain(x_, t_, yt)  # noqa: E731

        def net(k):
            out = model(xt, tv[k])
            if not isinstance(out, Tensor):
                raise TypeError(f"the model must return a torch tensor, got {type(out).__name__}")
            if out.dtype != dt:
                out = out.to(dt)
            return out.contiguous().numpy()
        return net


def model_identity(obj) -> str:
    """What identifies the weights a run samples from: 16 hex digits (``onnx:`` + 16 for a file).

    The one definition behind every "same weights?" question: the resume record of a bulk
    write (a resume with other weights is refused), the cross-rank check of distributed
    sampling and the ONNX export cache. ``obj``:

    - a checkpoint (``fastddpm.load``, ``Pipeline.from_diffusers``'s): the SHA-256s of its files
      as its config.json records them, and which weights (EMA or raw) it holds — nothing is
      re-hashed at load;
    - a torch module: SHA-256 over its state (names, dtypes, shapes and bytes);
    - an ONNX model (an object with ``array_api == "numpy"`` and a ``path``): SHA-256 of the file;
    - any other NumPy-API model: its type name (its weights are not visible).
    """
    config = getattr(obj, "config", None)
    files = config.get("files") if isinstance(config, dict) else None
    if files is not None and hasattr(obj, "model"):
        ident = {"files": files, "weights": getattr(obj, "weights", None)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if hasattr(obj, "model") and not callable(obj):  # a checkpoint-like record without file digests
        obj = obj.model
    h = hashlib.sha256()
    if getattr(obj, "array_api", None) == "numpy":
        path = getattr(obj, "path", None)
        if path is None:
            return hashlib.sha256(type(obj).__qualname__.encode()).hexdigest()[:16]
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "onnx:" + h.hexdigest()[:16]
    if model_kind(obj) == "torch":
        for name, tensor in obj.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(dtype=sys.modules["torch"].uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
