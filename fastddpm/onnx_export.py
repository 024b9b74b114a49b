"""Export an ε-network to ONNX with everything needed to sample from the file alone.

The graph has inputs ``x`` float32 [B, *sample_shape] and ``t`` int64 [B] (a conditional network
also ``labels`` int64 [B], its label set in the metadata) and one output ``prediction`` of x's shape; the schedule, prediction type, data normalisation, sample shape and
fastddpm version go into ``metadata_props`` (see :mod:`fastddpm.runtime.metadata`).

Shared t: a net with ``accepts_shared_t = True`` (the built-in ones; see
:mod:`fastddpm.nets.embedding`) is exported with t on its own dynamic axis ``t_rows``, so the
graph takes t of shape [1] (time path once, broadcast over the batch) as well as [B]; the file
then says ``fastddpm.shared_t = "1"`` and the ONNX Runtime engine passes [1] per step. Any
other module keeps t tied to the batch axis (t [B]), as a user's graph may need.

Exporter: torch 2.9+ defaults to the torch.export-based ("dynamo") exporter, which needs the
``onnxscript`` package. fastddpm uses the TorchScript exporter (``dynamo=False``) unless asked
otherwise: it needs nothing beyond torch and onnx, and handles the nets here (MLP, UNet) with a
dynamic batch axis. Pass ``dynamo=True`` (with onnxscript installed) to use the new one.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np

from . import __version__
from ._io import write_bytes
from .runtime.metadata import check_prediction, check_sample_shape, encode
from .schedule import Schedule

INPUT_NAMES = ("x", "t")
LABEL_INPUT = "labels"  # a conditional network's third input: int64 [B] class labels (its "no label" included)
OUTPUT_NAME = "prediction"
DEFAULT_OPSET = 17  # supported by onnxruntime >= 1.14 and both torch exporters


def _require_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package ({exc}); pip install 'fastddpm[onnx]'") from exc
    return onnx


def _unpack(model_or_checkpoint):
    """(module, defaults) from a torch module or a loaded Checkpoint (duck-typed)."""
    import torch

    obj = model_or_checkpoint
    if isinstance(obj, (str, os.PathLike)):
        # the one loader (a checkpoint or a diffusers DDPMPipeline.save_pretrained directory); this module
        # sits on the pipeline floor with it, and imports it here because that floor imports this module
        from .pipelines import loader

        if loader.kind(obj) == "onnx":
            raise ValueError(f"{os.fspath(obj)!r} is already an ONNX file; export_onnx takes a torch module, a "
                             "fastddpm checkpoint directory or a local diffusers pipeline directory")
        obj = loader.load(obj)
    if isinstance(obj, torch.nn.Module):
        from .labels import model_labels

        return obj, {"sample_shape": getattr(obj, "sample_shape", None), "model": _model_info(obj),
                     "labels": model_labels(obj)}
    model = getattr(obj, "model", None)
    if isinstance(model, torch.nn.Module):
        config = getattr(obj, "config", None) or {}
        defaults = {
            "schedule": getattr(obj, "schedule", None),
            "prediction": getattr(obj, "prediction", None),
            "normalization": getattr(obj, "normalization", None),
            "sample_shape": getattr(obj, "sample_shape", None),
            "model": (config.get("model") if isinstance(config, dict) else None) or _model_info(model),
            # a distilled student's sampler / a learned-variance model's variance (config["sampling"])
            "sampling": getattr(obj, "sampling", None),
            "labels": getattr(obj, "labels", None),
        }
        if defaults["labels"] is None:
            from .labels import model_labels

            defaults["labels"] = model_labels(model)
        if defaults["sample_shape"] is None:
            defaults["sample_shape"] = getattr(model, "sample_shape", None)
        return model, defaults
    raise TypeError("model_or_checkpoint must be a torch.nn.Module, a fastddpm Checkpoint or a checkpoint "
                    f"directory path, got {type(model_or_checkpoint).__name__}")


def _model_info(module) -> dict:
    """Class name and constructor arguments of a fastddpm net (``module.config``), for the record."""
    info = {"class": type(module).__name__}
    if isinstance(getattr(module, "config", None), dict):
        info["config"] = module.config
    return info


def _jsonable(value):
    """Normalisation etc. as JSON types (objects with to_config, arrays and NumPy scalars converted)."""
    if hasattr(value, "to_config"):
        return _jsonable(value.to_config())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().tolist()
    return value


def export_onnx(model_or_checkpoint, path, *, opset: int | None = None, dynamic_batch: bool = True,
                sample_shape=None, schedule: Schedule | None = None, prediction: str | None = None,
                normalization=None, dynamo: bool = False, check: bool = True) -> str:
    """Write the ε-network to ``path`` as ONNX and return the path.

    model_or_checkpoint: a torch module called as ``model(x [B, ...], t [B] int64)``, a
    Checkpoint from :func:`fastddpm.load`, a checkpoint directory, or a local diffusers
    ``DDPMPipeline.save_pretrained`` directory (its UNet2DModel, schedule and [-1, 1]
    normalisation; needs ``fastddpm[diffusers]``; the scheduler's variance, clip and spacing are
    recorded as the file's ``sample`` defaults, so ``fastddpm sample FILE`` samples as
    ``fastddpm sample DIR``). A checkpoint's own sampling record (a distilled student's sampler,
    steps and timesteps; ``config["sampling"]``) goes into the file the same way. Keyword arguments
    override what the checkpoint says; for a bare module ``sample_shape`` is required, and
    without ``schedule`` the file cannot sample on its own (the runtime then asks for one).
    ``dynamic_batch=False`` fixes B = 1 in the graph (the runtime then runs in chunks).
    The file is checked with ``onnx.checker`` and written atomically (temp file + rename).
    """
    import torch

    onnx = _require_onnx()
    module, defaults = _unpack(model_or_checkpoint)
    sample_shape = sample_shape if sample_shape is not None else defaults.get("sample_shape")
    if sample_shape is None:
        raise ValueError("sample_shape is required when exporting a bare module (the shape of one sample, "
                         "e.g. (2,) or (1, 8, 8)); a Checkpoint carries it")
    sample_shape = check_sample_shape(sample_shape)
    schedule = schedule if schedule is not None else defaults.get("schedule")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a fastddpm.Schedule, got {type(schedule).__name__}")
    prediction = check_prediction(prediction or defaults.get("prediction") or "epsilon")
    if normalization is None:
        normalization = defaults.get("normalization")
    if opset is None:
        opset = DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be an integer in [9, {onnx.defs.onnx_opset_version()}], got {opset!r}")
    # Shared t needs t on its own axis; the torch.export exporter would specialise the broadcast
    # [B, W] + [R, W] to R == B, so it keeps t [B].
    shared_t = bool(getattr(module, "accepts_shared_t", False)) and not dynamo
    labels = defaults.get("labels")
    props = encode(schedule=schedule, prediction=prediction, normalization=_jsonable(normalization),
                   sample_shape=sample_shape, version=__version__, model=_jsonable(defaults.get("model")),
                   shared_t=shared_t, sampling=_sampling(defaults.get("sampling"), schedule), labels=labels)
    proto = _trace(module, sample_shape, opset, dynamic_batch, dynamo, shared_t, conditional=labels is not None)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "fastddpm epsilon-network; sample with fastddpm.OnnxSampler or `fastddpm sample FILE`"
    if check:
        onnx.checker.check_model(proto, full_check=True)
    return _write(proto.SerializeToString(), os.fspath(path))


def _sampling(recorded, schedule):
    """The ``sample`` defaults the file records: the checkpoint's own (a distilled student's sampler,
    a learned-variance model's variance) over a diffusers scheduler's settings; None when neither."""
    merged = dict(schedule.sampler_defaults() or {}) if schedule is not None else {}
    merged.update(recorded or {})
    return merged or None


def _trace(module, sample_shape, opset: int, dynamic_batch: bool, dynamo: bool, shared_t: bool = False,
           conditional: bool = False):
    """The exported graph as an onnx ModelProto (no metadata yet); ``shared_t``: t gets its own
    dynamic axis ``t_rows`` (R = 1 or B) instead of the batch axis; ``conditional``: a third input
    ``labels`` int64 [B] (traced with a label of every row: the embedding lookup is a Gather)."""
    import onnx
    import torch

    try:
        param = next(module.parameters())
        device = param.device
    except StopIteration:
        device = torch.device("cpu")
    batch = 2 if dynamic_batch else 1  # 2, not 1: a traced size-1 axis can be specialised away
    x = torch.randn((batch, *sample_shape), device=device)
    t = torch.zeros(batch, dtype=torch.int64, device=device)
    inputs, names = (x, t), list(INPUT_NAMES)
    if conditional:
        inputs, names = (x, t, torch.zeros(batch, dtype=torch.int64, device=device)), names + [LABEL_INPUT]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated upstream but is the one that needs no onnxscript.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            # GroupNorm's batch-size sanity check is traced as a constant; harmless for export.
            warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python boolean",
                                    module=r"torch\.nn\.functional")
            if dynamo:
                batch_dim = torch.export.Dim("batch")
                program = torch.onnx.export(
                    module, inputs, None, dynamo=True, opset_version=opset, input_names=names,
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=tuple({0: batch_dim} for _ in inputs) if dynamic_batch else None,
                )
                return program.model_proto
            buffer = io.BytesIO()
            axes = {name: {0: "batch"} for name in (*names, OUTPUT_NAME)} if dynamic_batch else None
            if shared_t:
                # Traced with a per-sample t [2] (the per-row graph), which broadcasts for R = 1.
                axes = dict(axes or {}, t={0: "t_rows"})
            torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=opset,
                              input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, do_constant_folding=True)
    finally:
        module.train(was_training)
    t_axis = "t_rows" if shared_t else ("batch" if dynamic_batch else batch)
    return _keep_inputs(onnx.load_from_string(buffer.getvalue()), t_axis)  # labels are always used: never pruned


def _keep_inputs(proto, batch):
    """Re-add an input the TorchScript exporter pruned because the net ignores it (a t-free net
    still takes ``t``, so every fastddpm file has the same signature)."""
    import onnx

    present = {i.name for i in proto.graph.input}
    if "t" not in present:
        proto.graph.input.append(onnx.helper.make_tensor_value_info("t", onnx.TensorProto.INT64, [batch]))
    return proto


def _write(data: bytes, path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    write_bytes(path, data, crash="onnx")
    return path
