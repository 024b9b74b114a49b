"""The one loader of what a Pipeline samples from: a fastddpm checkpoint directory, an ONNX file,
or a local diffusers ``DDPMPipeline.save_pretrained`` directory.

``fastddpm sample`` / ``fastddpm export`` (the CLI), :func:`fastddpm.export_onnx` given a path, and
:meth:`fastddpm.Pipeline.load` all go through :func:`load`, so the three kinds are told apart in
one place and a path that is none of them gets one error that lists what is accepted.

fastddpm.checkpoint (and so torch) is imported only for a path that is not an ONNX file, so that
``fastddpm sample model.onnx`` works where torch is not installed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..runtime import OnnxModel
from ..schedule import DIFFUSERS_SCHEDULERS

KINDS = ("checkpoint", "onnx", "diffusers")


def kind(path) -> str:
    """'onnx' (a file ending in .onnx), 'diffusers' (a directory with model_index.json) or
    'checkpoint' (anything else: :func:`fastddpm.load` then says what is wrong with it)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if os.fspath(path).lower().endswith(".onnx"):
        return "onnx"
    from ..checkpoint import is_diffusers_dir

    if is_diffusers_dir(path):
        return "diffusers"
    return "checkpoint"


def load(path, *, device="cpu", ema: bool = True, providers=None, session_options=None, as_kind: str | None = None):
    """What ``path`` holds, loaded: a :class:`fastddpm.checkpoint.Checkpoint` (a fastddpm checkpoint
    or a diffusers directory, on ``device``; ``ema`` picks the EMA weights of a fastddpm checkpoint)
    or a :class:`fastddpm.runtime.OnnxModel` (``providers``/``session_options`` for onnxruntime).

    as_kind: one of :data:`KINDS` to load ``path`` as that kind whatever its name (``Pipeline.from_onnx``
    on a file not ending in .onnx); None tells the kind by :func:`kind`.
    """
    if as_kind is not None and as_kind not in KINDS:
        raise ValueError(f"as_kind must be None or one of {', '.join(KINDS)}; got {as_kind!r}")
    what = as_kind or kind(path)
    if what == "onnx":  # OnnxModel names a missing or unloadable file and how to write one
        return OnnxModel(path, providers, session_options=session_options)
    from ..checkpoint import is_diffusers_dir, load as load_checkpoint

    if what == "diffusers":
        if is_diffusers_dir(path):  # else load_pipeline_dir says what a diffusers directory needs
            check_diffusers_scheduler(path)
        from ..diffusers import load_pipeline_dir  # needs the diffusers package (fastddpm[diffusers])

        return load_pipeline_dir(path, device=device)
    return load_checkpoint(path, device=device, ema=ema)


def check_diffusers_scheduler(path) -> str:
    """The scheduler class of a diffusers directory, refused when fastddpm does not reproduce its math.

    fastddpm samples a diffusers directory with its own variance-preserving DDPM/DDIM/DPM-Solver++
    math on the directory's betas; a scheduler of another family — a variance-exploding one such as
    ``KarrasVeScheduler`` or ``ScoreSdeVeScheduler``, or one fastddpm does not know — would be
    sampled silently wrong, so it is an error naming the class and the supported ones
    (:data:`fastddpm.schedule.DIFFUSERS_SCHEDULERS`; docs/diffusers.md).
    """
    from ..checkpoint import DIFFUSERS_INDEX

    root = Path(path)
    index_path = root / DIFFUSERS_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{index_path}: not a readable diffusers model_index.json ({exc})") from exc
    entry = index.get("scheduler") if isinstance(index, dict) else None
    names = []
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]:
        names.append((str(entry[1]), index_path))
    config_path = root / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        config = None  # load_pipeline_dir reports a missing or broken scheduler config
    if isinstance(config, dict) and config.get("_class_name"):
        names.append((str(config["_class_name"]), config_path))
    if not names:
        raise ValueError(f"{index_path}: names no scheduler class (its 'scheduler' entry is {entry!r}); fastddpm "
                         f"samples directories whose scheduler is one of {', '.join(DIFFUSERS_SCHEDULERS)}")
    for name, where in names:
        if name not in DIFFUSERS_SCHEDULERS:
            raise ValueError(
                f"{where}: scheduler class {name} is not supported — fastddpm reproduces only the "
                f"variance-preserving DDPM schedulers {', '.join(DIFFUSERS_SCHEDULERS)}, and would sample a "
                f"{name} with the wrong math; save the pipeline with one of those (e.g. "
                "pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config) for a VP model) or sample it "
                "with diffusers")
    return names[0][0]
