"""Class labels of a conditional model: its label set, and the labels of a sampling request.

A conditional model (a built-in net built with ``num_classes`` = K > 0, a diffusers UNet2DModel
with ``num_class_embeds``, an ONNX file exported from either, or any module with the attributes
below) is called ``model(x, t, labels)`` with labels int64 [B]:

- ``num_classes``: K, the real classes are 0 … K − 1;
- ``null_label``: the "no label" class (K for the built-in nets, trained by label dropout), or
  None when the model has none (then it cannot be sampled unconditionally nor guided).

A sampling request gives its labels (``labels=`` of :class:`fastddpm.sampling.SamplingOptions`)
as one of (:func:`resolve`):

- an int: every sample gets that label;
- an integer array [n]: one label per row of the request (sample start + i gets labels[i]);
- ``"balanced"``: drawn so that every block of K consecutive sample indices holds each label once;
- ``"frequencies"``: drawn independently with the training frequencies (the checkpoint's label
  counts), or ``("weights", [w_0, …])`` for any others;
- None: no label (the model's "no label" class).

Drawn labels are a pure function of (seed, global sample index) (fastddpm.kernels.numba.labels:
Philox words of their own stream), so they do not depend on the batch size, threads, backend,
processes or resume — as the noise does not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import numbers

import numpy as np

LABEL_MODES = ("balanced", "frequencies")


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """What a checkpoint records about its labels (config.json ``labels``).

    ``counts``: how often each label occurs in the training data (the "frequencies" draw), or
    None; ``label_dropout``: the share of training labels replaced by "no label"; ``meaning``: what
    a label stands for (e.g. "the digit 0-9")."""

    num_classes: int
    null_label: int | None
    counts: tuple | None = None
    label_dropout: float | None = None
    meaning: str | None = None

    def to_config(self) -> dict:
        return {"num_classes": self.num_classes, "null_label": self.null_label,
                "counts": None if self.counts is None else list(self.counts),
                "label_dropout": self.label_dropout, "meaning": self.meaning}

    @classmethod
    def from_config(cls, config, where: str = "config.json") -> "LabelSet":
        """Checked: one error naming ``where`` and the field."""
        if not isinstance(config, dict):
            raise ValueError(f"{where}: labels must be an object, got {type(config).__name__}")
        k = config.get("num_classes")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{where}: labels.num_classes must be an integer >= 1, got {k!r}")
        null = config.get("null_label")
        if null is not None and (isinstance(null, bool) or not isinstance(null, int) or null < 0):
            raise ValueError(f"{where}: labels.null_label must be null or an integer >= 0, got {null!r}")
        counts = config.get("counts")
        if counts is not None:
            if (not isinstance(counts, list) or len(counts) != k
                    or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
                    or sum(counts) == 0):
                raise ValueError(f"{where}: labels.counts must be {k} integers >= 0 with a positive sum, got {counts!r}")
            counts = tuple(counts)
        dropout = config.get("label_dropout")
        if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"{where}: labels.label_dropout must be null or in [0, 1), got {dropout!r}")
        meaning = config.get("meaning")
        return cls(k, null, counts, None if dropout is None else float(dropout),
                   None if meaning is None else str(meaning))


def model_labels(model) -> LabelSet | None:
    """The model's label set from its attributes (None: an unconditional model)."""
    k = getattr(model, "num_classes", 0) or 0
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise TypeError(f"the model's num_classes must be an integer >= 0, got {k!r}")
    if k == 0:
        return None
    null = getattr(model, "null_label", None)
    counts = getattr(model, "label_counts", None)
    return LabelSet(int(k), None if null is None else int(null), None if counts is None else tuple(counts))


def check_spec(labels):
    """The model-free check of a ``labels`` option: None, an int >= 0, "balanced", "frequencies",
    ("weights", [w…]), or an integer array [n] (kept as an int64 array)."""
    if labels is None or isinstance(labels, str) and labels in LABEL_MODES:
        return labels
    if isinstance(labels, str):
        raise ValueError(f"labels must be an int, an integer array [n], None or one of "
                         f"{', '.join(map(repr, LABEL_MODES))}; got {labels!r} (a labels file: load it with np.load, "
                         "or pass --labels FILE to fastddpm sample)")
    if isinstance(labels, tuple) and len(labels) == 2 and labels[0] == "weights":
        w = np.asarray(labels[1], dtype=np.float64)
        if w.ndim != 1 or w.size < 1 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"labels=('weights', w): w must be a 1-D list of numbers >= 0 with a positive sum, "
                             f"got {labels[1]!r}")
        return ("weights", tuple(float(v) for v in w))
    if isinstance(labels, bool):
        raise TypeError("labels must be an int, an integer array [n], None, 'balanced' or 'frequencies'; got a bool")
    if isinstance(labels, numbers.Integral):
        if labels < 0:
            raise ValueError(f"labels (one label for every sample) must be >= 0, got {labels}")
        return int(labels)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels as an array must hold integers (class labels), got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"labels as an array must be 1-D [n] (one label per sample), got shape {list(arr.shape)}")
    arr = arr.astype(np.int64)
    arr.flags.writeable = False
    return arr


def describe(labels) -> object:
    """What identifies a labels option in a resume record or a cross-rank check (JSON-able)."""
    if isinstance(labels, np.ndarray):
        return {"array": hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16],
                "n": int(labels.shape[0])}
    if isinstance(labels, tuple):
        return [labels[0], list(labels[1])]
    return labels


class Labels:
    """The labels of one request (samples start … start + n − 1 of a request with ``seed``): checked
    once against the model's label set, then ``batch(s0, s1)`` gives those of its samples s0 … s1−1
    (int64, computed per batch: a bulk run never holds n labels it was not given)."""

    def __init__(self, spec, n: int, start: int, seed: int, label_set: LabelSet | None, *,
                 what: str = "labels (--label / --labels)"):
        self.spec, self.n, self.start, self.seed, self.what = spec, int(n), int(start), int(seed), what
        self.label_set = label_set
        if label_set is None:
            raise ValueError(f"{what} was given but the model is unconditional (it has no num_classes); "
                             "sample it without labels, or train a conditional model (fastddpm train --conditional)")
        k = label_set.num_classes
        self.num_classes = k
        self.thresholds = None
        if isinstance(spec, np.ndarray):
            if spec.shape[0] != self.n:
                raise ValueError(f"{what} has {spec.shape[0]} entries but the request has n = {self.n} samples; give "
                                 "one label per sample")
            self._check_range(spec)
        elif isinstance(spec, int):
            self._check_range(np.array([spec]))
        elif spec == "frequencies":
            if label_set.counts is None:
                raise ValueError(f"{what}='frequencies' needs the training label counts, which this model does not "
                                 "record; use 'balanced', or labels=('weights', [w0, w1, …])")
            self._weights(label_set.counts)
        elif isinstance(spec, tuple):
            if len(spec[1]) != k:
                raise ValueError(f"{what}=('weights', w) needs {k} weights (one per class), got {len(spec[1])}")
            self._weights(spec[1])

    def _weights(self, weights) -> None:
        from .kernels.numba.labels import thresholds

        self.thresholds = thresholds(weights)

    def _check_range(self, arr) -> None:
        k = self.num_classes
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            bad = int(arr[(arr < 0) | (arr >= k)][0])
            raise ValueError(f"{self.what} holds {bad}, outside the model's classes 0 … {k - 1} ({k} classes)")

    def batch(self, s0: int, s1: int) -> np.ndarray:
        """int64 [s1 − s0]: the labels of samples s0 … s1 − 1 of this request."""
        spec = self.spec
        if isinstance(spec, np.ndarray):
            return spec[s0:s1].copy()  # writable (torch.from_numpy warns on a read-only view)
        if isinstance(spec, int):
            return np.full(s1 - s0, spec, dtype=np.int64)
        from .kernels.numba import labels as kl

        first = self.start + s0
        if spec == "balanced":
            return kl.balanced(self.seed, first, s1 - s0, self.num_classes)
        return kl.categorical(self.seed, first, s1 - s0, self.thresholds)


def resolve(spec, n: int, start: int, seed: int, label_set: LabelSet | None, *,
            what: str = "labels (--label / --labels)") -> Labels | None:
    """:class:`Labels` of a request, or None (no labels given: the model's "no label" class)."""
    spec = check_spec(spec)
    if spec is None:
        return None
    return Labels(spec, n, start, seed, label_set, what=what)
