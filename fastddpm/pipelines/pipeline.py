"""Pipeline: sampling from a saved checkpoint or an ONNX file, in data space (diffusers-like entry point)."""
from __future__ import annotations

import copy
from typing import Any, Iterator, NamedTuple

from ..data import Normalization
from ..runtime import OnnxModel
from ..runtime.metadata import check_prediction, check_sample_shape
from ..schedule import Schedule
from . import engines, loader
from ..sampling.loop import SamplingRun, execute
from ..sampling.models import model_identity
from ..sampling.bulk import check_output_space
from ..sampling.options import SamplingOptions, check_int


class SampleBatch(NamedTuple):
    """One batch of :meth:`Pipeline.stream`: ``start`` is the global index of its first sample, ``x``
    the samples start … start + len(x) − 1 (NumPy on the host, a torch tensor on the GPU)."""

    start: int
    x: Any


class LabelledBatch(NamedTuple):
    """A batch of a stream that was given labels (issue 25): :class:`SampleBatch`'s ``start`` and ``x``,
    and ``labels`` int64 [len(x)] (NumPy), aligned with the rows."""

    start: int
    x: Any
    labels: Any


class Pipeline:
    """A loaded network ready to sample: ``Pipeline.load(path).sample(n, ...)`` (a checkpoint, an ONNX
    file or a diffusers directory), ``.stream(n, batch_size=...)`` for a batch at a time,
    ``.dataset(n, ...)`` for torch's DataLoader.

    ``Pipeline(checkpoint)`` takes a :class:`fastddpm.checkpoint.Checkpoint`;
    ``Pipeline(OnnxModel(path))`` (or :meth:`from_onnx`, :class:`OnnxSampler`) an ONNX file
    exported by fastddpm, sampled without torch. ``sample`` takes the keywords of
    :func:`fastddpm.sample` (sampler, steps, spacing, eta, seed, batch_size, backend, out,
    resume, …); the prediction type and sample shape come from the checkpoint or file, and
    results are de-normalised with its normalisation (pass ``denormalize=False`` for model space).
    """

    def __init__(self, checkpoint, *, schedule: Schedule | None = None, prediction: str | None = None,
                 sample_shape=None):
        if isinstance(checkpoint, OnnxModel):
            self._from_onnx_model(checkpoint, schedule, prediction, sample_shape)
            return
        for attr in ("model", "schedule", "normalization", "prediction", "sample_shape"):
            if not hasattr(checkpoint, attr):
                raise TypeError(f"Pipeline needs a fastddpm.checkpoint.Checkpoint (missing {attr!r}) or a "
                                "fastddpm.runtime.OnnxModel; use Pipeline.from_checkpoint(path) or "
                                "Pipeline.from_onnx(path)")
        if (schedule, prediction, sample_shape) != (None, None, None):
            raise TypeError("schedule, prediction and sample_shape come from the checkpoint; they are options "
                            "of an ONNX model only")
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.schedule = checkpoint.schedule
        self.normalization = checkpoint.normalization
        self.prediction = checkpoint.prediction
        self.sample_shape = tuple(checkpoint.sample_shape)
        self.model_id = model_identity(checkpoint)
        config = getattr(checkpoint, "config", None)
        if isinstance(config, dict) and "diffusers" in config:  # a diffusers directory: its scheduler's settings
            self.sampling_defaults = self.schedule.sampler_defaults()
        recorded = getattr(checkpoint, "sampling", None)
        if recorded:  # a distilled student's sampler and timesteps, a learned-variance model's variance
            self.sampling_defaults = {**(getattr(self, "sampling_defaults", None) or {}), **recorded}

    def _from_onnx_model(self, model: OnnxModel, schedule, prediction, sample_shape) -> None:
        """The parts from the file's fastddpm metadata; the arguments override them."""
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
        self.checkpoint = None
        self.model = model
        self.schedule = schedule
        self.normalization = _normalization(meta.normalization, sample_shape)
        self.prediction = check_prediction(prediction or meta.prediction or "epsilon")
        self.sample_shape = tuple(sample_shape)
        self.model_id = model_identity(model)  # resume records name the exact file
        if meta.sampling is not None:  # exported from a diffusers directory: its scheduler's settings
            self.sampling_defaults = meta.sampling

    @classmethod
    def from_onnx(cls, path, providers=None, schedule: Schedule | None = None, *, prediction: str | None = None,
                  sample_shape=None, session_options=None) -> "Pipeline":
        """An ONNX ε-network exported by fastddpm, run in onnxruntime (no torch needed).

        providers: onnxruntime execution providers (default: CUDA when this onnxruntime has it,
        else CPU); schedule: required when the file has no fastddpm metadata (a foreign export),
        otherwise it overrides the stored one. ``prediction`` and ``sample_shape`` likewise
        default to the stored values (prediction "epsilon" when absent); the stored
        normalisation (none: identity) maps samples back to data space. On onnxruntime's CUDA
        provider with torch and Triton importable, x_t stays on the GPU (IO binding, Triton
        update; see :mod:`fastddpm.runtime.cuda`); otherwise the network runs in the session and
        the update in the Numba kernels on the host.
        """
        return cls(loader.load(path, providers=providers, session_options=session_options, as_kind="onnx"),
                   schedule=schedule, prediction=prediction, sample_shape=sample_shape)

    @property
    def providers(self) -> list[str]:
        """onnxruntime's execution providers (a Pipeline on an ONNX file)."""
        if not isinstance(self.model, OnnxModel):
            raise AttributeError("providers: this Pipeline runs a torch network (engine='auto' on the CPU "
                                 "exports it to onnxruntime's CPU provider)")
        return self.model.providers

    @classmethod
    def load(cls, path, *, device="cpu", ema: bool = True, providers=None, session_options=None) -> "Pipeline":
        """Whatever ``path`` holds, the way ``fastddpm sample PATH`` reads it: a checkpoint directory
        (:meth:`from_checkpoint`), an ONNX file (:meth:`from_onnx`; ``providers``, ``session_options``)
        or a local diffusers pipeline directory (:meth:`from_diffusers`). One loader
        (:func:`fastddpm.pipelines.loader.load`) tells them apart for the CLI, the exporter and here."""
        return cls(loader.load(path, device=device, ema=ema, providers=providers, session_options=session_options))

    @classmethod
    def from_checkpoint(cls, path, *, device="cpu", ema: bool = True) -> "Pipeline":
        """Load the checkpoint directory ``path`` (EMA weights by default) onto ``device``."""
        return cls(loader.load(path, device=device, ema=ema, as_kind="checkpoint"))

    @classmethod
    def from_diffusers(cls, path, *, device="cpu") -> "Pipeline":
        """Load a local ``DDPMPipeline.save_pretrained`` directory (needs ``fastddpm[diffusers]``).

        The scheduler's variance type, clipping and timestep spacing become this pipeline's
        ``sample`` defaults (``pipeline.sampling_defaults``); the prediction type is fixed. A
        scheduler class whose math fastddpm does not reproduce (a variance-exploding one, e.g.
        ``KarrasVeScheduler``) is refused, naming it (docs/diffusers.md).
        """
        return cls(loader.load(path, device=device, as_kind="diffusers"))

    def __repr__(self) -> str:
        if isinstance(self.model, OnnxModel):
            return (f"{type(self).__name__}({self.model.path!r}, providers={self.providers}, {self.schedule!r}, "
                    f"prediction={self.prediction!r}, sample_shape={self.sample_shape})")
        return (f"{type(self).__name__}({type(self.model).__name__}, {self.schedule!r}, "
                f"prediction={self.prediction!r}, sample_shape={self.sample_shape})")

    def sample(self, n: int, *, denormalize: bool = True, engine: str = "auto", **kwargs):
        """``n`` samples [n, *sample_shape] in data space (a NumPy array; a path with ``out``).

        Keywords: those of :func:`fastddpm.sample` (:class:`~fastddpm.sampling.options.SamplingOptions`)
        but prediction and sample_shape, which come from the checkpoint.
        engine: "auto" (on the CPU, run a torch network through a cached ONNX export in
        onnxruntime when onnx and onnxruntime are installed — faster than torch eager, see
        docs/onnx.md), "torch" or "onnx" (see :mod:`fastddpm.pipelines.engines`). The samples
        agree to float32 rounding of the network either way.

        With ``return_trajectory`` also a :class:`~fastddpm.sampling.Trajectory` (de-normalised too).
        """
        return self.run(n, self.options(kwargs), engine=engine, denormalize=denormalize)

    def run(self, n: int, options: SamplingOptions, *, engine: str = "auto", denormalize: bool = True):
        """:meth:`sample` with its keywords already in a SamplingOptions (see :meth:`options`)."""
        if options.out is not None:  # before the engine choice may export anything
            check_output_space(options.out, check_int(n, "n"), self.sample_shape, options.dtype)
        model, model_id, options = engines.choose(self, engine, options, n=n)  # issue 26: n sets the calibrated batch
        options = options.replace(prediction=self.prediction, sample_shape=self.sample_shape)
        post = self._to_data if denormalize else None
        result = execute(model, self.schedule, n, options, model_id=model_id, postprocess=post)
        if options.out is not None:
            return result
        if options.return_trajectory:
            *head, traj = result  # (x, traj), or (x, labels, traj) for a labelled request
            x = self._host(head[0])
            traj.x = self._host(traj.x)
            if post is not None:
                x, traj.x = post(x), post(traj.x)
            return (x, traj) if len(head) == 1 else (x, head[1], traj)
        if isinstance(result, tuple):  # (x, labels): a labelled request
            x = self._host(result[0])
            return (post(x) if post is not None else x), result[1]
        x = self._host(result)
        return post(x) if post is not None else x

    # -- streaming ------------------------------------------------------------------------------

    def stream(self, n: int, *, batch_size: int | None = None, start: int = 0, denormalize: bool = True,
               engine: str = "auto", **kwargs) -> Iterator[SampleBatch]:
        """Samples ``start`` … ``start + n − 1`` as :class:`SampleBatch` ``(start, x)`` in order, one
        batch of ``batch_size`` samples at a time (the last one shorter), computed when asked for.

        Concatenated, the batches are ``sample(n, batch_size=batch_size, start=start, **kwargs)``
        byte for byte (the samples are a pure function of (seed, sample index); the same batch size
        also keeps a network's float results identical — a UNet's can change in the last bit with
        the batch shape); with ``labels=`` given the items are :class:`LabelledBatch`
        ``(start, x, labels)``. ``x`` is in data space (``denormalize=False``: model space): a NumPy array
        on the host, a torch tensor on the GPU (CUDA sampling: no host copy; hand it to other
        frameworks with DLPack, e.g. ``cupy.from_dlpack(x)``, ``jax.dlpack.from_dlpack(x)``).

        Everything that can be checked is checked here, before the first batch (keywords, the
        engine choice and its ONNX export); a batch is computed only when the iterator is advanced,
        so nothing is computed ahead of the consumer. ``progress`` defaults to False. Keywords:
        :meth:`sample`'s, but the file ones (out, resume, overwrite) and trajectories.
        :meth:`dataset` wraps this for torch's DataLoader (workers and ranks).
        """
        return self._stream(n, self.stream_options(kwargs, batch_size, start), engine=engine,
                            denormalize=denormalize)

    def dataset(self, n: int, *, batch_size: int | None = None, start: int = 0, **kwargs):
        """A ``torch.utils.data.IterableDataset`` over :meth:`stream` that shards its batches across
        DataLoader workers and torch.distributed ranks (:class:`fastddpm.pipelines.SampleDataset`)."""
        from .dataset import SampleDataset

        return SampleDataset(self, n, batch_size=batch_size, start=start, **kwargs)

    def stream_options(self, kwargs: dict, batch_size=None, start: int = 0) -> SamplingOptions:
        """:meth:`stream`'s keywords as SamplingOptions (the file and trajectory ones refused)."""
        for key in ("out", "resume", "overwrite", "return_trajectory", "trajectory_steps"):
            if key in kwargs:
                raise TypeError(f"{key}: Pipeline.stream yields batches in memory; write a file with "
                                "Pipeline.sample(n, out=...) and trajectories with sample(return_trajectory=True)")
        return self.options({"progress": False, **kwargs, "batch_size": batch_size, "start": start})

    def _stream(self, n: int, options: SamplingOptions, *, engine: str = "auto", denormalize: bool = True,
                batches=None) -> Iterator[SampleBatch]:
        """The generator behind :meth:`stream`; ``batches(count)`` picks which batch indices to run
        (all, in order, by default: a DataLoader worker or rank takes its share)."""
        n = check_int(n, "n")
        model, model_id, options = engines.choose(self, engine, options)
        options = options.replace(prediction=self.prediction, sample_shape=self.sample_shape)
        run = SamplingRun(model, self.schedule, n, options)
        run.model_id = model_id
        on_gpu = run.on_torch and run.device.type != "cpu"
        post = self._to_data if denormalize else None
        count = -(-n // run.batch_size)
        chosen = range(count) if batches is None else batches(count)

        def generate():
            pbar = run.progress_bar(n)
            try:
                for j in chosen:
                    s0 = j * run.batch_size
                    s1 = min(n, s0 + run.batch_size)
                    x = run.run_batch(s0, s1, pbar=pbar)
                    if not on_gpu:
                        x = self._host(x)
                    x = post(x) if post is not None else x
                    if run.labelled:  # labels given: each batch carries its own
                        yield LabelledBatch(run.start + s0, x, run.batch_labels(s0, s1))
                    else:
                        yield SampleBatch(run.start + s0, x)
            finally:
                if pbar is not None:
                    pbar.close()

        return generate()

    def fresh(self) -> "Pipeline":
        """A shallow copy without this process's onnxruntime sessions and CUDA bindings (re-made on
        first use): what a DataLoader worker or a forked process samples with."""
        other = copy.copy(self)
        for attr in ("_onnx_engine", "_cuda"):
            other.__dict__.pop(attr, None)
        if isinstance(self.model, OnnxModel):
            other.model = OnnxModel(self.model.path, self.model.providers)
        return other

    def __getstate__(self):
        state = dict(self.__dict__)
        for attr in ("_onnx_engine", "_cuda"):  # sessions do not pickle; they are re-made on first use
            state.pop(attr, None)
        if isinstance(self.model, OnnxModel):
            state["model"] = ("onnx", self.model.path, self.model.providers)
        return state

    def __setstate__(self, state):
        model = state.get("model")
        if isinstance(model, tuple) and len(model) == 3 and model[0] == "onnx":
            state["model"] = OnnxModel(model[1], model[2])
        self.__dict__.update(state)

    def options(self, kwargs: dict) -> SamplingOptions:
        """``Pipeline.sample``'s keywords as SamplingOptions: prediction and sample_shape are the
        checkpoint's; the defaults are what the model records (``sampling_defaults``): a diffusers
        pipeline's scheduler settings, a distilled student's sampler, steps and timesteps
        (fastddpm.distill), a learned-variance model's variance."""
        return SamplingOptions.from_kwargs(
            kwargs, where="Pipeline.sample", defaults=getattr(self, "sampling_defaults", None),
            fixed={"prediction": "comes from the checkpoint", "sample_shape": "comes from the checkpoint"})

    def _to_data(self, x):
        return self.normalization.denormalize(x)

    @staticmethod
    def _host(x):
        if not hasattr(x, "detach"):
            return x
        x = x.detach()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).cpu().numpy()  # NumPy has no bfloat16


class OnnxSampler(Pipeline):
    """``Pipeline.from_onnx`` under its own name: ``OnnxSampler(path).sample(n, seed=0)``.

    The arguments are :meth:`Pipeline.from_onnx`'s; ``sample`` is :meth:`Pipeline.sample`.
    """

    def __init__(self, path, providers=None, schedule: Schedule | None = None, *, prediction: str | None = None,
                 sample_shape=None, session_options=None):
        super().__init__(loader.load(path, providers=providers, session_options=session_options, as_kind="onnx"),
                         schedule=schedule,
                         prediction=prediction, sample_shape=sample_shape)


def _normalization(config, sample_shape):
    """The stored normalisation as a fastddpm.data.Normalization (identity when none is stored)."""
    if config is None:
        return Normalization.identity(len(sample_shape))
    if isinstance(config, dict):
        return Normalization.from_config(config)
    raise ValueError(f"unsupported normalization metadata {config!r}; expected "
                     "{'shape': [...], 'mean': [...], 'std': [...]}")
