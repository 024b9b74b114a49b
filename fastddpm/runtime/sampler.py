"""OnnxSampler: the whole sampling loop from an ONNX file, without torch.

The network runs in onnxruntime; the loop, timesteps, noise and fused update are
:func:`fastddpm.sample`'s (Numba kernels on the host), so the same seed gives the same samples
as the torch path up to the float32 rounding of the network.
"""
from __future__ import annotations

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
        """``n`` samples [n, *sample_shape] as a float32 NumPy array.

        Keyword arguments are :func:`fastddpm.sample`'s (seed, sampler, steps, batch_size, …);
        ``denormalize=False`` returns model space instead of data space.
        """
        from ..sampling import sample

        kwargs.setdefault("prediction", self.prediction)
        kwargs.setdefault("sample_shape", self.sample_shape)
        x = sample(self.model, self.schedule, n, **kwargs)
        if denormalize and self.normalization is not None:
            x = self.normalization.denormalize(x)
        return x


def _normalization(config):
    """The stored normalisation as a fastddpm.data.Normalization (None: data were not scaled)."""
    if config is None:
        return None
    from ..data import Normalization  # NumPy only

    if isinstance(config, dict):
        return Normalization.from_config(config)
    raise ValueError(f"unsupported normalization metadata {config!r}; expected "
                     "{'shape': [...], 'mean': [...], 'std': [...]}")
