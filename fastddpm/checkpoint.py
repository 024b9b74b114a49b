"""Checkpoints: a directory with ``config.json`` and safetensors weights, written atomically.

Layout::

    config.json            format, fastddpm version, model class + kwargs, schedule, data
                           normalisation, prediction type, sample shape, training settings,
                           and the SHA-256 and size of every other file
    model.safetensors      the trained weights
    ema.safetensors        the EMA weights (optional)
    optimizer.safetensors  Adam state tensors (optional, for resume)
    train_state.json       step, losses, optimizer hyper-parameters (optional, for resume)

Loading never unpickles: weights come from safetensors, everything else from JSON. A file that
is missing, truncated, corrupt or changed after writing (checksum), or a config that names an
unknown model class, raises :class:`CheckpointError`. Before any weight is allocated the model is
built on torch's ``meta`` device to count its parameters: a config asking for more than
MAX_MODEL_BYTES, or for more than the weights file holds, is refused naming the kwargs.

Saving is atomic at every instant (tests/test_faults.py kills the process at each step): the new
checkpoint is written and fsynced in a temporary sibling ``.NAME.tmp-*`` and then swapped with
the old one in one ``renameat2(RENAME_EXCHANGE)`` call on Linux, so ``path`` always holds either
the old or the new checkpoint. Where the exchange is unavailable, the old directory is renamed to
``.NAME.old-*`` and the new one into place; a kill between those two renames leaves ``path``
missing for an instant, and :func:`load` (and the next :func:`save`) then finds the complete
``.NAME.old-*``. A save holds an exclusive lock ``NAME.lock`` beside the directory, so two
processes never save to one path at once; the one that comes second refuses, naming the first.
The unit that is replaced atomically is the directory, so its files are written plainly inside
the private temp directory and fsynced (``fastddpm._io.fsync_file``) before the swap; single
files elsewhere go through ``fastddpm._io.atomic_open``.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from . import __version__
from ._io import OutputLock, crash_point, fsync_dir, fsync_file, sha256_file
from .data import Normalization
from .kernels.coefficients import PREDICTIONS
from .schedule import SAMPLING_KEYS, Schedule, check_sampling  # noqa: F401 (SAMPLING_KEYS: re-exported)

FORMAT = "fastddpm-checkpoint"
FORMAT_VERSION = 1
CONFIG = "config.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAIN_STATE = "train_state.json"
# Refuse a config whose model would need more than this many bytes of parameters and buffers
# (the largest built-in configuration in docs is ~0.1 GB; 2**34 bytes = 16 GiB).
MAX_MODEL_BYTES = 1 << 34
# config.json is a few kB (a custom schedule of 4000 betas is ~80 kB); refuse to parse more.
MAX_CONFIG_BYTES = 1 << 24


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or loaded; the message says which file and why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory or one of its files does not exist."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint; ``model`` is in eval mode on the requested device."""

    model: torch.nn.Module
    schedule: Schedule
    normalization: Normalization
    prediction: str
    sample_shape: tuple[int, ...]
    config: dict[str, Any]
    path: Path
    weights: str  # "ema" or "model": which weights ``model`` holds
    labels: Any = None  # fastddpm.labels.LabelSet of a conditional model (config.json "labels"), else None

    @property
    def sampling(self) -> dict | None:
        """The sampling defaults the checkpoint records (a distilled student's sampler, steps and
        timesteps; a learned-variance model's variance), or None: ``config["sampling"]``."""
        value = self.config.get("sampling") if isinstance(self.config, dict) else None
        return dict(value) if isinstance(value, dict) else None


# -- writing ---------------------------------------------------------------------------------


def _model_config(model, model_config) -> dict[str, Any]:
    from .nets import MODEL_CLASSES

    if model_config is None:
        name = type(model).__name__
        if MODEL_CLASSES.get(name) is not type(model) or not isinstance(getattr(model, "config", None), dict):
            raise CheckpointError(
                f"cannot describe a {name} model: pass model_config={{'class': NAME, 'kwargs': {{...}}}} "
                "with NAME registered in fastddpm.nets.MODEL_CLASSES")
        model_config = {"class": name, "kwargs": model.config}
    if not isinstance(model_config, dict) or set(model_config) != {"class", "kwargs"}:
        raise CheckpointError(f"model_config must be {{'class': NAME, 'kwargs': {{...}}}}, got {model_config!r}")
    if model_config["class"] not in MODEL_CLASSES:
        raise CheckpointError(f"model class {model_config['class']!r} is not in fastddpm.nets.MODEL_CLASSES "
                              f"({', '.join(sorted(MODEL_CLASSES))}); register it first")
    return {"class": model_config["class"], "kwargs": _jsonable(model_config["kwargs"], "model_config kwargs")}


def _jsonable(obj, what: str):
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what} must be JSON-serialisable: {exc}") from exc


def _state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _optimizer_split(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict → (tensors for safetensors, the JSON-able rest)."""
    tensors, scalars = {}, {}
    for idx, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"state.{idx}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(rest["scalars"].items()):
        _, idx, key = flat.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _is_checkpoint_dir(path: Path) -> bool:
    try:
        with open(path / CONFIG) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def save(path, model: torch.nn.Module, schedule: Schedule, *, ema_model: torch.nn.Module | None = None,
         normalization: Normalization, prediction: str = "epsilon", model_config: dict | None = None,
         train_config: dict | None = None, train_state: dict | None = None,
         sample_shape=None, sampling: dict | None = None, extra_weights: dict | None = None,
         labels=None) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return its path.

    The files go to a temporary sibling directory first, which then takes ``path``'s name by
    rename; an existing checkpoint at ``path`` is replaced only after the new one is complete.
    ``model_config`` = ``{"class": NAME, "kwargs": {...}}`` (default: from a built-in net's
    ``config``); ``train_state`` = ``{"step": int, "optimizer": optimizer.state_dict(),
    "losses": [float, ...], ...}`` for resume; ``sample_shape`` defaults to the model's
    ``sample_shape`` attribute and must be given for nets without one (e.g. UNet).
    ``sampling``: how the model samples by default — a distilled student's sampler, steps and
    timesteps (``{"sampler": "ddim", "steps": 4, "spacing": [999, 749, 499, 249], ...}``, keywords of
    ``fastddpm.sample``; :data:`SAMPLING_KEYS`), or a learned-variance model's ``variance``; Pipeline,
    ``fastddpm sample`` and the ONNX export take them as their defaults. ``extra_weights``:
    ``{NAME: module}`` written as ``NAME.safetensors`` beside the model (a distillation's teacher,
    for resuming mid-round). ``labels``: the :class:`fastddpm.labels.LabelSet` of a conditional
    model (its classes, "no label" class, training label counts and dropout), written as config.json
    ``labels``.
    """
    from .nets import build  # noqa: F401  (fail early if the nets cannot be imported)

    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a fastddpm.Schedule, got {type(schedule).__name__}")
    if not isinstance(normalization, Normalization):
        raise TypeError(f"normalization must be a fastddpm.data.Normalization, got {type(normalization).__name__}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}; got {prediction!r}")
    if sample_shape is None:
        sample_shape = getattr(model, "sample_shape", None)
    if sample_shape is None:
        raise ValueError("sample_shape must be given (the shape of one sample, e.g. (1, 8, 8))")
    sample_shape = [int(s) for s in sample_shape]
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or _is_checkpoint_dir(path))):
        raise FileExistsError(f"{path} exists and is not a fastddpm checkpoint; choose another path or remove it")
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastddpm_version": __version__,
        "model": _model_config(model, model_config),
        "schedule": schedule.to_config(),
        "normalization": normalization.to_config(),
        "prediction": prediction,
        "sample_shape": sample_shape,
        "train": _jsonable(train_config, "train_config") if train_config is not None else None,
    }
    if sampling is not None:
        config["sampling"] = check_sampling(sampling, "sampling")
    extra = {}
    for name, module in (extra_weights or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or f"{name}.safetensors" in (MODEL, EMA, OPTIMIZER):
            raise ValueError(f"extra_weights names must be identifiers other than model, ema and optimizer; got {name!r}")
        extra[f"{name}.safetensors"] = module
    if labels is not None:
        if getattr(model, "num_classes", None) != labels.num_classes:
            raise CheckpointError(f"labels.num_classes = {labels.num_classes} but the model has num_classes = "
                                  f"{getattr(model, 'num_classes', None)!r}")
        config["labels"] = labels.to_config()
    path.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(path, "saving"):
        _recover(path)
        _remove_leftovers(path)
        _write_and_switch(path, config, model, ema_model, train_state, extra)
    return path


def _write_and_switch(path: Path, config: dict, model, ema_model, train_state, extra=None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        from safetensors.torch import save_file

        crash_point("checkpoint.tmp_made")
        files = {MODEL: _state_tensors(model)}
        if ema_model is not None:
            files[EMA] = _state_tensors(ema_model)
        for name, module in (extra or {}).items():
            files[name] = _state_tensors(module)
        json_files = {}
        if train_state is not None:
            state = dict(train_state)
            optimizer = state.pop("optimizer", None)
            if optimizer is not None:
                tensors, rest = _optimizer_split(optimizer)
                files[OPTIMIZER] = tensors
                state["optimizer"] = rest
            json_files[TRAIN_STATE] = _jsonable(state, "train_state")
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            crash_point("checkpoint.file_written")
        for name, obj in json_files.items():
            (tmp / name).write_text(json.dumps(obj))
            crash_point("checkpoint.file_written")
        config["files"] = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                           for name in [*files, *json_files]}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        crash_point("checkpoint.config_written")
        for name in [*files, *json_files, CONFIG]:
            fsync_file(tmp / name)
        fsync_dir(tmp)
        crash_point("checkpoint.synced")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux" or os.environ.get("FASTDDPM_NO_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - glibc < 2.28 or musl
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):  # kernel/filesystem lacks it
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished ``tmp`` at ``path``; at every instant ``path`` (or, in the fallback, an
    ``.old-*`` sibling that load finds) holds a complete checkpoint."""
    if not path.exists():
        os.rename(tmp, path)
        crash_point("checkpoint.switched")
    elif _exchange(tmp, path):
        crash_point("checkpoint.switched")
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old checkpoint
    else:
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
        crash_point("checkpoint.old_moved")
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        crash_point("checkpoint.switched")
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)
    crash_point("checkpoint.cleaned")


def _old_copies(path: Path) -> list[Path]:
    """Complete ``.NAME.old-*`` checkpoints left by a save killed mid-switch, newest first."""
    found = [p for p in path.parent.glob(f".{path.name}.old-*") if p.is_dir() and _is_checkpoint_dir(p)]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def _recover(path: Path) -> None:
    """(Under the save lock.) Put back the checkpoint a save killed between its renames left aside."""
    if not path.exists():
        old = _old_copies(path)
        if old:
            os.rename(old[0], path)
            fsync_dir(path.parent)


def _remove_leftovers(path: Path) -> None:
    """(Under the save lock, after _recover.) Temp and old directories of killed saves."""
    for p in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _resolve(path) -> Path:
    """``path``, or the complete ``.NAME.old-*`` that a save killed between its renames left."""
    path = Path(path)
    if not path.exists():
        old = _old_copies(path)
        if old:
            warnings.warn(f"checkpoint {path} is missing but a complete copy {old[0].name} is beside it (a save "
                          "was interrupted); loading that one. The next save to this path restores it.",
                          RuntimeWarning, stacklevel=3)
            return old[0]
    return path


# -- reading ---------------------------------------------------------------------------------


def read_config(path) -> dict[str, Any]:
    """The checked ``config.json`` of the checkpoint at ``path``."""
    path = _resolve(path)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist (expected a directory with {CONFIG})")
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} has no {CONFIG}; it is not a fastddpm checkpoint "
                                      "or was not written completely")
    size = cfg_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{cfg_path} has {size:,} bytes; a fastddpm config is a few kB "
                              f"(limit {MAX_CONFIG_BYTES:,}): it is not a checkpoint config")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON (corrupt or truncated): {exc}") from exc
    except RecursionError:
        raise CheckpointError(f"{cfg_path} is nested too deeply to be a fastddpm checkpoint config "
                              "(corrupt or not ours)") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a fastddpm checkpoint config (format {FORMAT!r} missing)")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path} has format_version {config.get('format_version')!r}; "
                              f"this fastddpm reads version {FORMAT_VERSION}")
    for key in ("model", "schedule", "normalization", "prediction", "sample_shape", "files"):
        if key not in config:
            raise CheckpointError(f"{cfg_path} lacks the {key!r} entry")
    if config["prediction"] not in PREDICTIONS:
        raise CheckpointError(f"{cfg_path}: prediction {config['prediction']!r} is not one of {PREDICTIONS}")
    if not isinstance(config["files"], dict) or MODEL not in config["files"]:
        raise CheckpointError(f"{cfg_path} lists no {MODEL}")
    if config.get("sampling") is not None:
        try:
            check_sampling(config["sampling"], "sampling")
        except ValueError as exc:
            raise CheckpointError(f"{cfg_path}: {exc}") from None
    shape = config["sample_shape"]
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise CheckpointError(f"{cfg_path}: sample_shape must be a non-empty list of positive integers, "
                              f"got {shape!r}")
    return config


def _verified(path: Path, config: dict, name: str) -> Path:
    """``path/name`` after checking that it exists with the recorded size and SHA-256."""
    entry = config["files"].get(name)
    if entry is None:
        raise CheckpointError(f"{path / CONFIG} does not list {name}")
    file = path / name
    if not file.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} is missing {name}")
    size = file.stat().st_size
    if size != entry.get("bytes"):
        raise CheckpointError(f"{file} has {size} bytes but {entry.get('bytes')} were written "
                              "(truncated or replaced); re-train or restore the file")
    if sha256_file(file) != entry.get("sha256"):
        raise CheckpointError(f"{file} does not match the SHA-256 recorded in {CONFIG} "
                              "(corrupt or modified after saving)")
    return file


def _read_tensors(path: Path, config: dict, name: str, device="cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = _verified(path, config, name)
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc


def _build_model(config: dict, path: Path) -> torch.nn.Module:
    from .nets import MODEL_CLASSES, build

    spec = config["model"]
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise CheckpointError(f"{path / CONFIG}: 'model' must be {{'class': NAME, 'kwargs': {{...}}}}")
    name = spec.get("class")
    if name not in MODEL_CLASSES:
        raise CheckpointError(f"{path / CONFIG} asks for model class {name!r}, which is not one of "
                              f"{', '.join(sorted(MODEL_CLASSES))}; register it in fastddpm.nets.MODEL_CLASSES "
                              "before loading")
    _check_model_size(config, path, name, spec["kwargs"])
    try:
        return build(name, **spec["kwargs"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG}: cannot build {name} from its kwargs: {exc}") from exc


def _size_fields(kwargs: dict) -> str:
    """The integer kwargs, largest first: the fields a too-large model comes from."""
    ints = sorted(((k, v) for k, v in kwargs.items() if isinstance(v, int) and not isinstance(v, bool)),
                  key=lambda kv: -kv[1])
    return ", ".join(f"model.kwargs.{k} = {v}" for k, v in ints[:4]) or "model.kwargs"


def _check_model_size(config: dict, path: Path, name: str, kwargs: dict) -> None:
    """Build the model on the meta device (no memory) and refuse sizes the config cannot mean.

    Also checks the config's sample_shape against the model: a net's ``sample_shape``
    attribute (MLP: (dim,)) or its ``in_channels`` (UNet: [C, H, W]).
    """
    from .nets import build

    try:
        with torch.device("meta"):
            meta = build(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG}: cannot build {name} from its kwargs: {exc}") from exc
    except Exception:  # a custom class that cannot be built on meta: checked when built for real
        return
    need = sum(t.numel() * t.element_size() for t in meta.state_dict().values())
    if need > MAX_MODEL_BYTES:
        raise CheckpointError(f"{path / CONFIG}: {name} with {_size_fields(kwargs)} would need {need:,} bytes of "
                              f"weights, over the limit of {MAX_MODEL_BYTES:,} (fastddpm.checkpoint.MAX_MODEL_BYTES); "
                              "the config is corrupt or edited")
    for weights in (path / MODEL, path / EMA):
        try:
            have = weights.stat().st_size
        except OSError:
            continue  # EMA is optional; a missing model.safetensors is reported when it is read
        if have < need:
            raise CheckpointError(f"{path / CONFIG}: {name} with {_size_fields(kwargs)} needs {need:,} bytes of "
                                  f"weights but {weights.name} holds {have:,}; the config does not belong to these "
                                  "weights")
    shape = tuple(config["sample_shape"])
    own = getattr(meta, "sample_shape", None)
    cfg = getattr(meta, "config", None) or {}
    if own is not None and tuple(own) != shape:
        raise CheckpointError(f"{path / CONFIG}: sample_shape {list(shape)} contradicts the model ({name} "
                              f"samples have shape {list(own)}, from its kwargs); fix sample_shape or the kwargs")
    if own is None and isinstance(cfg.get("in_channels"), int) and (len(shape) != 3 or shape[0] != cfg["in_channels"]):
        raise CheckpointError(f"{path / CONFIG}: sample_shape {list(shape)} contradicts the model ({name} has "
                              f"in_channels = {cfg['in_channels']}, so samples are [{cfg['in_channels']}, H, W])")


def load_weights(module: torch.nn.Module, path, name: str = MODEL, *, config: dict | None = None) -> None:
    """Load ``path/name`` (checked) into ``module`` strictly (same keys, shapes and dtypes)."""
    path = _resolve(path)
    config = read_config(path) if config is None else config
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    tensors = _read_tensors(path, config, name, device)
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path / name} does not fit {type(module).__name__}: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    for key, value in tensors.items():
        if value.shape != own[key].shape or value.dtype != own[key].dtype:
            raise CheckpointError(f"{path / name}: {key} has {tuple(value.shape)} {value.dtype}, the model "
                                  f"expects {tuple(own[key].shape)} {own[key].dtype}")
    module.load_state_dict(tensors, strict=True)


DIFFUSERS_INDEX = "model_index.json"


def is_diffusers_dir(path) -> bool:
    """True for a local diffusers pipeline directory (``save_pretrained`` writes model_index.json):
    ``fastddpm sample`` / ``export`` then load it with ``fastddpm.diffusers.load_pipeline_dir``."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(os.fspath(path), DIFFUSERS_INDEX))


def load(path, *, device="cpu", ema: bool = True) -> Checkpoint:
    """Load the checkpoint at ``path``: the model (EMA weights when ``ema`` and present) in eval mode."""
    path = _resolve(path)
    config = read_config(path)
    try:
        schedule = Schedule.from_config(config["schedule"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG}: invalid schedule {config['schedule']!r}: {exc}") from exc
    try:
        normalization = Normalization.from_config(config["normalization"])
    except ValueError as exc:
        raise CheckpointError(f"{path / CONFIG}: {exc}") from exc
    labels = None
    if config.get("labels") is not None:
        from .labels import LabelSet

        try:
            labels = LabelSet.from_config(config["labels"], where=str(path / CONFIG))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    model = _build_model(config, path).to(device)
    if labels is not None:
        if getattr(model, "num_classes", None) != labels.num_classes:
            raise CheckpointError(f"{path / CONFIG}: labels.num_classes = {labels.num_classes} but its model has "
                                  f"num_classes = {getattr(model, 'num_classes', None)!r}")
        # the sampler reads the training frequencies ("frequencies" labels) from the model
        model.label_counts = labels.counts
    weights = "ema" if ema and EMA in config["files"] else "model"
    load_weights(model, path, EMA if weights == "ema" else MODEL, config=config)
    model.eval()
    return Checkpoint(model=model, schedule=schedule, normalization=normalization,
                      prediction=config["prediction"], sample_shape=tuple(config["sample_shape"]),
                      config=config, path=path, weights=weights, labels=labels)


def load_train_state(path, *, device="cpu") -> dict[str, Any]:
    """The saved training state of a checkpoint (``step``, ``optimizer`` state_dict, ``losses``, …)."""
    path = _resolve(path)
    config = read_config(path)
    if TRAIN_STATE not in config["files"]:
        raise CheckpointError(f"checkpoint {path} holds no training state (saved without train_state); "
                              "it can be sampled from but not resumed")
    file = _verified(path, config, TRAIN_STATE)
    try:
        state = json.loads(file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc
    if "optimizer" in state:
        tensors = _read_tensors(path, config, OPTIMIZER, device)
        state["optimizer"] = _optimizer_join(tensors, state["optimizer"])
    return state


__all__ = ["Checkpoint", "CheckpointError", "CheckpointNotFoundError", "load", "load_train_state",
           "load_weights", "read_config", "save"]
