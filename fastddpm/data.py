"""Toy and small real datasets, returned normalised with their normalisation recorded.

``load_dataset(name, n, seed=…, noise=…)`` gives a :class:`Dataset` whose ``x`` is float32
[n, …] in model space; ``dataset.normalization.denormalize(samples)`` maps model samples back
to data space. Normalisation rules (stored in every checkpoint):

- vector data [n, D] (constant, gaussian, the 2-D toys, user [n, D] files): per feature,
  mean and standard deviation of the loaded data (float64), so model space has mean 0, std 1.
  A feature with std < 1e-8·max(1, |mean|) (``constant``: every value 5.0) keeps scale 1 and
  is only shifted: the model learns the point 0 and ``denormalize`` puts it back at 5.0.
- digits: the fixed affine map of pixel values [0, 16] onto [−1, 1] (mean 8, std 8).
- user arrays with more than two dimensions ([n, C, H, W], …): one scalar mean and std over
  all elements (same zero-std rule).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

DATASETS = ("constant", "gaussian", "butterfly", "moons", "swissroll", "checkerboard", "8gaussians", "digits")
# Datasets whose generator knows a class per point (conditional training, fastddpm.training): the
# number of classes and what a label means. The others (constant, gaussian, butterfly, swissroll)
# have no labels; a user's .npy takes a labels .npy beside it.
LABELLED = {
    "digits": (10, "the digit 0-9 (scikit-learn's target)"),
    "8gaussians": (8, "the mode: label k is the Gaussian at angle k·45°"),
    "moons": (2, "the half circle: 0 upper, 1 lower"),
    "checkerboard": (8, "the filled square: 2·column + k, column 0-3 from the left, k 0/1 its lower/upper square"),
}
# Datasets with a generator: training draws fresh points of these every iteration (:func:`draw`).
ANALYTIC = ("constant", "gaussian", "butterfly", "moons", "swissroll", "checkerboard", "8gaussians")

# Default additive noise (data units) when ``noise=None``; None: the dataset takes no noise.
DEFAULT_NOISE = {
    "constant": None, "gaussian": None, "digits": None,
    "butterfly": 0.0, "moons": 0.05, "swissroll": 0.25, "checkerboard": 0.0, "8gaussians": 0.1,
}
_ZERO_STD = 1e-8


@dataclasses.dataclass(frozen=True)
class Normalization:
    """x_model = (x_data − mean) / std, with ``mean``/``std`` float64 arrays broadcastable to one sample."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        mean = np.array(self.mean, dtype=np.float64)
        std = np.array(self.std, dtype=np.float64)
        if mean.shape != std.shape:
            raise ValueError(f"normalization mean {mean.shape} and std {std.shape} must have the same shape")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std <= 0).any():
            raise ValueError("normalization mean must be finite and std finite and > 0")
        mean.flags.writeable = False
        std.flags.writeable = False
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def identity(cls, ndim: int = 1) -> "Normalization":
        return cls(np.zeros((1,) * ndim), np.ones((1,) * ndim))

    @classmethod
    def fit(cls, x: np.ndarray, *, per_feature: bool | None = None) -> "Normalization":
        """Mean/std of ``x`` [n, …]: per feature for [n, D], one scalar otherwise (see module doc)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"data must have shape [n, ...] with n >= 1, got {x.shape}")
        per_feature = x.ndim == 2 if per_feature is None else per_feature
        if per_feature:
            mean, std = x.mean(axis=0), x.std(axis=0)
        else:
            mean = np.full((1,) * (x.ndim - 1), x.mean())
            std = np.full((1,) * (x.ndim - 1), x.std())
        std = np.where(std < _ZERO_STD * np.maximum(1.0, np.abs(mean)), 1.0, std)
        return cls(mean, std)

    def normalize(self, x):
        """Data space → model space; NumPy in gives float32 NumPy, torch in gives torch of its dtype."""
        return self._apply(x, lambda v, m, s: (v - m) / s)

    def denormalize(self, x):
        """Model space → data space (same types as :meth:`normalize`)."""
        return self._apply(x, lambda v, m, s: v * s + m)

    def _apply(self, x, fn):
        if type(x).__module__.startswith("torch"):
            import torch

            m = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
            s = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)
            return fn(x, m, s)
        x = np.asarray(x)
        return fn(x.astype(np.float64), self.mean, self.std).astype(x.dtype if x.dtype.kind == "f" else np.float32)

    def to_config(self) -> dict[str, Any]:
        return {"shape": list(self.mean.shape), "mean": self.mean.reshape(-1).tolist(),
                "std": self.std.reshape(-1).tolist()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Normalization":
        try:
            shape = tuple(int(s) for s in config["shape"])
            return cls(np.asarray(config["mean"], dtype=np.float64).reshape(shape),
                       np.asarray(config["std"], dtype=np.float64).reshape(shape))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid normalization config {config!r}: {exc}") from exc

    def __eq__(self, other):
        if not isinstance(other, Normalization):
            return NotImplemented
        return np.array_equal(self.mean, other.mean) and np.array_equal(self.std, other.std)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """``x``: float32 [n, …] in model space; ``raw()`` gives it back in data space.

    ``labels``: int64 [n] class labels in [0, num_classes) aligned with the rows (None: the data set
    has none; :data:`LABELLED`, or a user's labels file)."""

    name: str
    x: np.ndarray
    normalization: Normalization
    params: dict = dataclasses.field(default_factory=dict)
    labels: np.ndarray | None = None
    num_classes: int = 0

    def label_counts(self) -> list[int]:
        """How often each label occurs in the data [num_classes] (the training frequencies)."""
        if self.labels is None:
            raise ValueError(f"dataset {self.name!r} has no labels")
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def raw(self) -> np.ndarray:
        return self.normalization.denormalize(self.x)

    def to_config(self) -> dict[str, Any]:
        """How to rebuild it (name, n, parameters) and its normalisation; JSON-able."""
        return {"name": self.name, "n": len(self), "sample_shape": list(self.sample_shape),
                **self.params, "normalization": self.normalization.to_config()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Dataset":
        """Regenerate the dataset described by :meth:`to_config` (same data, same normalisation)."""
        config = dict(config)
        config.pop("sample_shape", None)
        norm = Normalization.from_config(config.pop("normalization"))
        data = load_dataset(config.pop("name"), config.pop("n"), **config)
        if data.normalization != norm:
            return Dataset(data.name, norm.normalize(data.raw()), norm, data.params, data.labels, data.num_classes)
        return data


# -- generators (raw data space, float64) --------------------------------------------------


def butterfly_curve(theta):
    """(x, y) of the butterfly curve r = e^{cos θ} − 2 cos 4θ + sin⁵(θ/12), x = r sin θ, y = r cos θ."""
    theta = np.asarray(theta, dtype=np.float64)
    r = np.exp(np.cos(theta)) - 2.0 * np.cos(4.0 * theta) + np.sin(theta / 12.0) ** 5
    return np.stack([r * np.sin(theta), r * np.cos(theta)], axis=-1)


# Each generator returns (points, labels or None) from the same draws as before labels existed, so
# the points of a seed are unchanged.


def _butterfly(n, rng, noise):
    return butterfly_curve(rng.uniform(0.0, 2.0 * np.pi, n)) + noise * rng.standard_normal((n, 2)), None


def _moons(n, rng, noise):
    # Two interleaved half circles (scikit-learn's make_moons geometry), random positions.
    upper = rng.random(n) < 0.5
    angle = rng.uniform(0.0, np.pi, n)
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    return np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2)), (~upper).astype(np.int64)


def _swissroll(n, rng, noise):
    # scikit-learn's make_swiss_roll, keeping the (x, z) plane: t ∈ 1.5π·[1, 3].
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    return np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + noise * rng.standard_normal((n, 2)), None


def _checkerboard(n, rng, noise):
    # FFJORD's checkerboard: 8 filled squares of a 4×4 board on [−4, 4]².
    x1 = rng.random(n) * 4.0 - 2.0
    r = rng.random(n)
    k = rng.integers(0, 2, n)
    x2 = r - k * 2.0 + np.floor(x1) % 2
    column = np.floor(x1).astype(np.int64) + 2
    return np.stack([x1, x2], axis=1) * 2.0 + noise * rng.standard_normal((n, 2)), 2 * column + (1 - k)


def _eight_gaussians(n, rng, noise):
    angles = np.arange(8) * (np.pi / 4.0)
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    mode = rng.integers(0, 8, n)
    return centers[mode] + noise * rng.standard_normal((n, 2)), mode.astype(np.int64)


_TOYS = {"butterfly": _butterfly, "moons": _moons, "swissroll": _swissroll,
         "checkerboard": _checkerboard, "8gaussians": _eight_gaussians}


def draw(name: str, n: int, rng: np.random.Generator, noise: float | None = None, *, labels: bool = False):
    """``n`` fresh points of analytic dataset ``name`` in data space, float64 [n, D], from ``rng``.

    ``noise``: the additive noise of the 2-D toys (``None``: :data:`DEFAULT_NOISE`). The one
    generator behind :func:`load_dataset` and the fresh batches of training. ``labels=True``
    returns (points, labels int64 [n] or None): the class of each point where the generator knows
    one (:data:`LABELLED`), from the same draws (the points do not change).
    """
    if name not in ANALYTIC:
        raise ValueError(f"draw needs an analytic dataset, one of {', '.join(ANALYTIC)}; got {name!r}")
    if name == "constant":
        x, y = np.full((n, 1), 5.0), None
    elif name == "gaussian":
        x, y = 3.0 + rng.standard_normal((n, 1)), None
    else:
        x, y = _TOYS[name](n, rng, DEFAULT_NOISE[name] if noise is None else float(noise))
    return (x, y) if labels else x


def _digits(n):
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install 'fastddpm[digits]'") from exc
    bunch = load_digits()
    images = bunch.images  # [1797, 8, 8], integer values 0..16, bundled (no download)
    if n is None:
        n = images.shape[0]
    if n > images.shape[0]:
        raise ValueError(f"n must be <= {images.shape[0]} for 'digits' (the bundled set), got {n}")
    return images[:n, None, :, :].astype(np.float64), bunch.target[:n].astype(np.int64)


def _check_n(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1 for dataset {name!r}, got {n!r}")
    return int(n)


def _load_npy(path: str, n):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path!r} does not exist (expected a .npy array [n, ...])")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path!r} is not a readable .npy array without pickles: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim < 2 or arr.shape[0] < 1:
        raise ValueError(f"{path!r} must hold a numeric array of shape [n, ...] with n >= 1 "
                         f"(1-D data: shape [n, 1]); got dtype {arr.dtype}, shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path!r} contains NaN or inf")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        # The network, its training batches and the samples are float32: a float64 value beyond
        # float32's range (|x| > 3.4e38) becomes inf there and fails late (a NaN loss, a checkpoint
        # whose statistics cannot be written), so refuse it here, naming the file and the count.
        with np.errstate(over="ignore"):
            lost = int(np.count_nonzero(~np.isfinite(arr.astype(np.float32))))
        if lost:
            raise ValueError(f"{path!r}: {lost:,} of {arr.size:,} values are not finite after conversion to "
                             f"float32 (|x| > {float(np.finfo(np.float32).max):.4g}; fastddpm trains and samples "
                             "in float32); rescale the data (e.g. divide by a power of ten) and save it again")
    if n is not None:
        n = _check_n(n, path)
        if n > arr.shape[0]:
            raise ValueError(f"n = {n} but {path!r} holds only {arr.shape[0]} samples")
        arr = arr[:n]
    return arr.astype(np.float64)


def load_labels(path, rows: int, *, what: str = "labels") -> np.ndarray:
    """A labels file: an integer .npy [rows] of class labels >= 0 aligned with a data file of ``rows``
    rows (int64 back). Every problem is one line naming ``what`` (the argument) and the fix."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist (expected an integer .npy [n] of class labels)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{what} file {path!r} is not a readable .npy array without pickles: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        raise TypeError(f"{what} file {path!r} must hold integers (class labels 0, 1, …), got dtype "
                        f"{getattr(arr, 'dtype', type(arr).__name__)}; save it with .astype(np.int64)")
    if arr.ndim != 1 or arr.shape[0] != rows:
        raise ValueError(f"{what} file {path!r} has shape {list(arr.shape)}, expected [{rows}]: one label per row "
                         "(per sample)")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} file {path!r} holds negative labels (min {int(arr.min())}); labels are 0, 1, …, K−1")
    return arr.astype(np.int64)


def load_dataset(name: str, n: int | None = None, *, seed: int = 0, noise: float | None = None,
                 labels=None) -> Dataset:
    """``n`` samples of dataset ``name`` (one of :data:`DATASETS` or a path to a ``.npy`` file).

    Shapes: constant, gaussian [n, 1]; 2-D toys [n, 2]; digits [n, 1, 8, 8] (n ≤ 1797, the
    first n; ``None``: all); ``.npy`` [n, …] (the first n rows; ``None``: all). ``seed`` fixes
    the random draws; ``noise`` is the standard deviation of Gaussian noise added to the 2-D
    toys in data units (``None``: :data:`DEFAULT_NOISE`). ``labels``: a labels .npy for a
    ``.npy`` data file (one integer per row of the file, :func:`load_labels`); the data sets of
    :data:`LABELLED` carry their own labels.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    name = os.fspath(name)
    if labels is not None and not name.endswith(".npy"):
        raise ValueError(f"labels (a labels file) applies to a .npy data file; dataset {name!r} "
                         + ("carries its own labels" if name in LABELLED else "has none"))
    if name.endswith(".npy"):
        if noise is not None:
            raise ValueError("noise is not supported for .npy datasets")
        raw = _load_npy(name, n)
        norm = Normalization.fit(raw)
        if labels is None:
            return Dataset(name, norm.normalize(raw).astype(np.float32), norm)
        rows = np.load(name, mmap_mode="r").shape[0]
        y = load_labels(labels, rows)[:raw.shape[0]]
        return Dataset(name, norm.normalize(raw).astype(np.float32), norm, {"labels": os.fspath(labels)}, y,
                       int(y.max()) + 1 if y.size else 0)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, or a path to a .npy file")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if DEFAULT_NOISE[name] is None:
        if noise not in (None, 0, 0.0):
            raise ValueError(f"noise is not supported for dataset {name!r} (only for {', '.join(_TOYS)})")
        noise = None
    else:
        noise = DEFAULT_NOISE[name] if noise is None else float(noise)
        if not (np.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    params: dict[str, Any] = {"seed": int(seed)}
    if noise is not None:
        params["noise"] = noise
    if name == "digits":
        if n is not None:
            n = _check_n(n, name)
        raw, y = _digits(n)
        norm = Normalization(np.full((1, 1, 1), 8.0), np.full((1, 1, 1), 8.0))
        return Dataset(name, norm.normalize(raw).astype(np.float32), norm, params, y, LABELLED[name][0])
    n = _check_n(n, name)
    raw, y = draw(name, n, np.random.default_rng(seed), noise, labels=True)
    norm = Normalization.fit(raw)
    return Dataset(name, norm.normalize(raw).astype(np.float32), norm, params, y,
                   LABELLED[name][0] if y is not None else 0)
