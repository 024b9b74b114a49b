"""OnnxSampler: the whole sampling loop from an ONNX file, without torch.

The network runs in onnxruntime; the loop, timesteps, noise, fused update, bulk writing and
de-normalisation are :class:`fastddpm.Pipeline`'s (Numba kernels on the host), so the same seed
gives the same samples as the torch path up to the float32 rounding of the network.
"""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

from ..sampling.pipeline import Pipeline
from ..schedule import Schedule
from .metadata import check_prediction, check_sample_shape
from .model import OnnxModel


class OnnxSampler(Pipeline):
    """Sample from an ONNX ε-network exported by fastddpm: ``OnnxSampler(path).sample(n, seed=0)``.

    path: the ONNX file; providers: onnxruntime execution providers (default: CUDA when this
    onnxruntime has it, else CPU); schedule: required when the file has no fastddpm metadata
    (a foreign export), otherwise it overrides the stored one. ``prediction`` and
    ``sample_shape`` likewise default to the stored values (prediction "epsilon" when absent);
    the stored normalisation (none: identity) maps samples back to data space.

    ``sample(n, **kwargs)`` is :meth:`Pipeline.sample`: keywords of :func:`fastddpm.sample`
    (seed, sampler, steps, spacing, eta, batch_size, out, resume, …) and ``denormalize``.
    On onnxruntime's CUDA provider with torch and Triton importable, x_t stays on the GPU (IO
    binding, Triton update; see :mod:`fastddpm.runtime.cuda`); otherwise the network runs in
    the session and the update in the Numba kernels on the host.
    """

    def __init__(self, path, providers=None, schedule: Schedule | None = None, *, prediction: str | None = None,
                 sample_shape=None, session_options=None):
        model = OnnxModel(path, providers, session_options=session_options)
        meta = model.metadata
        if schedule is None:
            schedule = meta.schedule
            if schedule is None:
                raise ValueError(
                    f"{model.path!r} has no fastddpm schedule metadata ("
                    + ("a file not exported by fastddpm" if not meta.present else "exported without a schedule")
                    + "); pass schedule=fastddpm.Schedule.linear(1000) (or the one the network was trained "
                    "with), or export it with fastddpm export CKPT --out FILE")
        elif not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastddpm.Schedule, got {type(schedule).__name__}")
        if sample_shape is not None:
            sample_shape = check_sample_shape(sample_shape)
            if model.sample_shape is not None and sample_shape != model.sample_shape:
                raise ValueError(f"sample_shape {sample_shape} does not match the model's input 'x' "
                                 f"[B, {', '.join(map(str, model.sample_shape))}]")
        else:
            sample_shape = model.sample_shape
            if sample_shape is None:
                raise ValueError(f"{model.path!r} has symbolic sample axes and no fastddpm metadata; "
                                 "pass sample_shape=(…) (the shape of one sample)")
        super().__init__(SimpleNamespace(
            model=model, schedule=schedule, normalization=_normalization(meta.normalization, sample_shape),
            prediction=check_prediction(prediction or meta.prediction or "epsilon"), sample_shape=sample_shape,
            config={}, weights=None))
        self.onnx_model = model
        self.model_id = _file_digest(model.path)  # resume records name the exact file

    @property
    def providers(self) -> list[str]:
        return self.onnx_model.providers

    def __repr__(self) -> str:
        return (f"OnnxSampler({self.onnx_model.path!r}, providers={self.providers}, {self.schedule!r}, "
                f"prediction={self.prediction!r}, sample_shape={self.sample_shape})")

    def sample(self, n: int, **kwargs):
        cuda = None
        if kwargs.get("backend", "auto") in ("auto", "triton") and _wants_cuda(kwargs.get("device")):
            cuda = self._cuda_model()
        if cuda is None:
            return super().sample(n, **kwargs)
        kwargs["device"] = str(next(iter(cuda.buffers())).device)
        kwargs["cuda_graph"] = False  # an onnxruntime run cannot be captured in a torch CUDA graph
        self.model = cuda
        try:
            return super().sample(n, **kwargs)
        finally:
            self.model = self.onnx_model

    def _cuda_model(self):
        """The IO-binding torch module when the CUDA path can run here, else None (cached)."""
        if not hasattr(self, "_cuda"):
            from .cuda import cuda_iobinding_available, torch_module

            self._cuda = torch_module(self.onnx_model) if cuda_iobinding_available(self.onnx_model) else None
        return self._cuda


def _normalization(config, sample_shape):
    """The stored normalisation as a fastddpm.data.Normalization (identity when none is stored)."""
    from ..data import Normalization  # NumPy only

    if config is None:
        return Normalization.identity(len(sample_shape))
    if isinstance(config, dict):
        return Normalization.from_config(config)
    raise ValueError(f"unsupported normalization metadata {config!r}; expected "
                     "{'shape': [...], 'mean': [...], 'std': [...]}")


def _file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "onnx:" + h.hexdigest()[:16]


def _wants_cuda(device) -> bool:
    """device=None (use CUDA when it can run), "cuda", "cuda:i" or a torch.device of type cuda."""
    if device is None:
        return True
    kind = getattr(device, "type", None)
    return (kind if kind is not None else str(device).split(":", 1)[0]) == "cuda"
