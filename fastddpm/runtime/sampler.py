"""OnnxSampler: the whole sampling loop from an ONNX file, without torch.

The network runs in onnxruntime; the loop, timesteps, noise and fused update are
:func:`fastddpm.sample`'s (Numba kernels on the host), so the same seed gives the same samples
as the torch path up to the float32 rounding of the network.
"""
from __future__ import annotations

import numpy as np

from ..schedule import Schedule
from .metadata import check_prediction, check_sample_shape
from .model import OnnxModel


class OnnxSampler:
    """Sample from an ONNX ε-network exported by fastddpm.

    path: the ONNX file; providers: onnxruntime execution providers (default: CUDA when this
    onnxruntime has it, else CPU); schedule: required when the file has no fastddpm metadata
    (a foreign export), otherwise it overrides the stored one. ``prediction`` and
    ``sample_shape`` likewise default to the stored values (prediction "epsilon" when absent).
    """

    def __init__(self, path, providers=None, schedule: Schedule | None = None, *, prediction: str | None = None,
                 sample_shape=None, session_options=None):
        self.model = OnnxModel(path, providers, session_options=session_options)
        meta = self.model.metadata
        if schedule is None:
            schedule = meta.schedule
            if schedule is None:
                raise ValueError(
                    f"{path!r} has no fastddpm schedule metadata ("
                    + ("a file not exported by fastddpm" if not meta.present else "exported without a schedule")
                    + "); pass schedule=fastddpm.Schedule.linear(1000) (or the one the network was trained "
                    "with), or export it with fastddpm export CKPT --out FILE")
        elif not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastddpm.Schedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.prediction = check_prediction(prediction or meta.prediction or "epsilon")
        if sample_shape is not None:
            sample_shape = check_sample_shape(sample_shape)
            if self.model.sample_shape is not None and sample_shape != self.model.sample_shape:
                raise ValueError(f"sample_shape {sample_shape} does not match the model's input 'x' "
                                 f"[B, {', '.join(map(str, self.model.sample_shape))}]")
        else:
            sample_shape = self.model.sample_shape
            if sample_shape is None:
                raise ValueError(f"{path!r} has symbolic sample axes and no fastddpm metadata; "
                                 "pass sample_shape=(…) (the shape of one sample)")
        self.sample_shape = sample_shape
        self.normalization = _normalization(meta.normalization)

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    def __repr__(self) -> str:
        return f"OnnxSampler({self.model.path!r}, providers={self.providers}, schedule={self.schedule!r})"

    def sample(self, n: int, *, denormalize: bool = True, **kwargs):
        """``n`` samples [n, *sample_shape] as a float32 NumPy array in data space.

        Keyword arguments are :func:`fastddpm.sample`'s (seed, sampler, steps, spacing, eta,
        batch_size, backend, out, resume, progress, …); prediction and sample_shape default to
        the file's. ``denormalize=False`` returns model space. With ``out=`` (a .npy path) the
        samples are written in model space and the path is returned; de-normalise them with
        ``sampler.normalization.denormalize``.

        On onnxruntime's CUDA provider with torch and Triton importable, x_t stays on the GPU
        (IO binding, Triton update; see fastddpm.runtime.cuda); otherwise the network runs in
        the session and the update in the Numba kernels on the host.
        """
        from ..sampling import sample

        kwargs.setdefault("prediction", self.prediction)
        kwargs.setdefault("sample_shape", self.sample_shape)
        model = self.model
        if kwargs.get("backend", "auto") in ("auto", "triton") and kwargs.get("device") in (None, "cuda"):
            cuda_model = self._cuda_model()
            if cuda_model is not None:
                model = cuda_model
                kwargs["device"] = str(next(iter(cuda_model.buffers())).device)
                kwargs["cuda_graph"] = False  # an onnxruntime run cannot be captured in a torch CUDA graph
        x = sample(model, self.schedule, n, **kwargs)
        if kwargs.get("out") is not None:
            return x
        if isinstance(x, tuple):  # return_trajectory=True
            x, trajectory = x
            return self._finish(x, denormalize), trajectory
        return self._finish(x, denormalize)

    def _finish(self, x, denormalize: bool):
        if not isinstance(x, np.ndarray):  # a CUDA tensor from the IO-binding path
            x = x.cpu().numpy()
        if denormalize and self.normalization is not None:
            x = self.normalization.denormalize(x)
        return x

    def _cuda_model(self):
        """The IO-binding torch module when the CUDA path can run here, else None (cached)."""
        if not hasattr(self, "_cuda"):
            from .cuda import cuda_iobinding_available, torch_module

            self._cuda = torch_module(self.model) if cuda_iobinding_available(self.model) else None
        return self._cuda


def _normalization(config):
    """The stored normalisation as a fastddpm.data.Normalization (None: data were not scaled)."""
    if config is None:
        return None
    from ..data import Normalization  # NumPy only

    if isinstance(config, dict):
        return Normalization.from_config(config)
    raise ValueError(f"unsupported normalization metadata {config!r}; expected "
                     "{'shape': [...], 'mean': [...], 'std': [...]}")
