"""The fastddpm entries of an ONNX file's ``metadata_props``: everything needed to sample.

Both sides use this module: :mod:`fastddpm.onnx_export` writes the entries, the torch-free
runtime reads them back. Every value is a string (ONNX metadata is string → string); the
structured ones are JSON.

======================  ===============================================================
key                     value
======================  ===============================================================
fastddpm.format         "1" (bumped when the layout below changes incompatibly)
fastddpm.version        fastddpm version that wrote the file
fastddpm.schedule       JSON of :meth:`Schedule.to_config`
fastddpm.prediction     "epsilon" | "sample" | "v_prediction"
fastddpm.normalization  JSON of the data normalisation (``null`` when the data were not scaled)
fastddpm.sample_shape   JSON list: the shape of one sample, without the batch axis
fastddpm.model          JSON of the model class and arguments (informational)
fastddpm.shared_t       "1": the graph takes t of shape [1] for a batch that shares t (its
                        time path runs once and broadcasts); "0" or absent: t must be [B]
fastddpm.sampling       JSON: ``sample`` defaults of the network (keys among
                        fastddpm.schedule.SAMPLING_KEYS) — a diffusers directory's
                        scheduler settings {"variance", "clip", "spacing"}, a distilled
                        student's {"sampler", "steps", "spacing", ...}, a learned-variance
                        model's {"variance"}; absent when the checkpoint records none
                        (added in format 1: older readers ignore it, and it is optional)
fastddpm.labels         JSON of a conditional network's label set (fastddpm.labels.LabelSet:
                        num_classes, null_label, training counts, label dropout, meaning);
                        its graph then has a third input ``labels`` int64 [B]; absent for an
                        unconditional network (optional, so format 1 still)
======================  ===============================================================
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..kernels.coefficients import PREDICTIONS
from ..schedule import Schedule, check_sampling

PREFIX = "fastddpm."
FORMAT = "1"
KEYS = ("format", "version", "schedule", "prediction", "normalization", "sample_shape", "model", "shared_t",
        "sampling", "labels")


@dataclass(frozen=True)
class OnnxMetadata:
    """What fastddpm stores next to the network; ``None`` fields were not recorded."""

    schedule: Schedule | None = None
    prediction: str | None = None
    normalization: Any = None
    sample_shape: tuple[int, ...] | None = None
    version: str | None = None
    model: dict | None = None
    shared_t: bool = False
    sampling: dict | None = None
    labels: Any = None  # fastddpm.labels.LabelSet of a conditional network
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def present(self) -> bool:
        """True when the file carries fastddpm metadata (the exporter always writes the version)."""
        return self.version is not None


def check_sample_shape(sample_shape, name: str = "sample_shape") -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in sample_shape)
    except TypeError as exc:
        raise TypeError(f"{name} must be a sequence of positive integers, got {sample_shape!r}") from exc
    if not shape or any(s < 1 for s in shape) or any(isinstance(s, bool) for s in sample_shape):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {sample_shape!r}")
    return shape


def check_prediction(prediction) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}; got {prediction!r}")
    return prediction


def encode(*, schedule: Schedule | None, prediction: str, normalization: Any,
           sample_shape, version: str, model: dict | None = None, shared_t: bool = False,
           sampling: dict | None = None, labels=None) -> dict[str, str]:
    """The metadata entries as a ``{key: str}`` dict ready for ``metadata_props``."""
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a fastddpm.Schedule or None, got {type(schedule).__name__}")
    props = {
        "format": FORMAT,
        "version": str(version),
        "prediction": check_prediction(prediction),
        "sample_shape": json.dumps(list(check_sample_shape(sample_shape))),
        "shared_t": "1" if shared_t else "0",
    }
    if schedule is not None:
        props["schedule"] = json.dumps(schedule.to_config())
    try:
        props["normalization"] = json.dumps(normalization)
        if model is not None:
            props["model"] = json.dumps(model)
        if sampling is not None:
            props["sampling"] = json.dumps(_check_sampling(sampling, "sampling"))
        if labels is not None:
            props["labels"] = json.dumps(labels.to_config())
    except TypeError as exc:
        raise TypeError(f"normalization and model config must be JSON-serialisable: {exc}") from exc
    return {PREFIX + k: v for k, v in props.items()}


def decode(props: dict[str, str], *, source: str = "the ONNX file") -> OnnxMetadata:
    """Parse ``metadata_props`` (a plain dict); entries of other tools are kept in ``extra``."""
    ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    extra = {k: v for k, v in props.items() if not k.startswith(PREFIX)}
    if not ours:
        return OnnxMetadata(extra=extra)
    fmt = ours.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{source} has fastddpm metadata format {fmt!r}; this fastddpm reads format "
                         f"{FORMAT!r} (re-export it with this version: fastddpm export CKPT --out FILE)")

    def load(key):
        if key not in ours:
            return None
        try:
            return json.loads(ours[key])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: metadata entry {PREFIX}{key} is not valid JSON ({exc})") from exc

    schedule = load("schedule")
    sample_shape = load("sample_shape")
    sampling = load("sampling")
    if sampling is not None:
        sampling = _check_sampling(sampling, f"{source}: metadata entry {PREFIX}sampling")
    prediction = ours.get("prediction")
    labels = load("labels")
    if labels is not None:
        from ..labels import LabelSet

        labels = LabelSet.from_config(labels, where=f"{source}: metadata entry {PREFIX}labels")
    try:
        schedule = None if schedule is None else Schedule.from_config(schedule)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{source}: metadata entry {PREFIX}schedule is not a valid schedule "
                         f"({type(exc).__name__}: {exc}); re-export it with fastddpm export CKPT --out FILE") from exc
    return OnnxMetadata(
        schedule=schedule,
        prediction=None if prediction is None else check_prediction(prediction),
        normalization=load("normalization"),
        sample_shape=None if sample_shape is None else check_sample_shape(sample_shape, f"{PREFIX}sample_shape"),
        version=ours.get("version"),
        model=load("model"),
        shared_t=ours.get("shared_t") == "1",
        sampling=sampling,
        labels=labels,
        extra=extra,
    )


def _check_sampling(sampling, name: str) -> dict:
    return check_sampling(sampling, name)
