"""Sample-quality metrics: sliced Wasserstein distance, moments, k-NN precision/recall.

All functions take samples in data space (``Normalization.denormalize`` of model samples),
as NumPy arrays [n, …] (flattened to [n, D]). ``sliced_wasserstein`` uses POT
(``pip install 'fastddpm[metrics]'``); precision/recall use scipy's k-d tree.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _as_2d(x, name: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must be an array [n, ...] with n >= 1, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def sliced_wasserstein(a, b, n_projections: int = 500, seed: int = 0, p: int = 2) -> float:
    """Monte-Carlo sliced p-Wasserstein distance between sample sets a [n, …] and b [m, …].

    The mean over ``n_projections`` random directions (fixed by ``seed``) of the 1-D
    p-Wasserstein distance of the projections, to the power 1/p (POT's
    ``ot.sliced_wasserstein_distance``). For 1-D data every direction is ±1, so this is the
    exact W_p.
    """
    try:
        import ot
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("sliced_wasserstein needs POT: pip install 'fastddpm[metrics]'") from exc
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same sample size, got {a.shape[1]} and {b.shape[1]} elements")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections!r}")
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, p=p, seed=seed))


def precision_recall(samples, reference, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls.

    precision: the fraction of samples inside some reference point's k-NN ball (fidelity);
    recall: the fraction of reference points inside some sample's k-NN ball (coverage).
    """
    from scipy.spatial import cKDTree

    samples, reference = _as_2d(samples, "samples"), _as_2d(reference, "reference")

    def covered(points, support):
        tree = cKDTree(support)
        radii = tree.query(support, k=k + 1)[0][:, -1]  # k-th neighbour other than itself
        dist, idx = tree.query(points, k=min(len(support), 32))
        dist, idx = np.atleast_2d(dist), np.atleast_2d(idx)
        inside = (dist <= radii[np.minimum(idx, len(support) - 1)]).any(axis=1)
        return float(inside.mean())

    return covered(samples, reference), covered(reference, samples)


def summary(x) -> dict[str, Any]:
    """Mean and standard deviation per element, plus the range."""
    x = _as_2d(x, "x")
    return {"n": int(x.shape[0]), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "min": x.min(0).tolist(), "max": x.max(0).tolist()}


def evaluate(samples, dataset, n_ref: int | None = None, seed: int = 0, n_projections: int = 500) -> dict[str, Any]:
    """Compare ``samples`` (data space) with fresh data of ``dataset``.

    dataset: a dataset name (two fresh sets of ``n_ref`` points, default ``len(samples)``,
    are drawn with seeds 10⁶ + seed and 2·10⁶ + seed, far from the usual training seeds), or a
    :class:`fastddpm.data.Dataset` / array of held-out data (split in two halves; digits and
    .npy sets, which cannot be redrawn, use this too).

    Returns mean/std of samples and reference, ``sliced_wasserstein`` (samples vs the first
    reference set), ``sw_baseline`` (the first vs the second reference set: what a perfect
    model scores at this size), ``sw_ratio`` = sliced_wasserstein / sw_baseline, and k-NN
    ``precision``/``recall`` against the first reference set.
    """
    from .data import DATASETS, Dataset, load_dataset

    samples = _as_2d(samples, "samples")
    n = samples.shape[0]
    n_ref = n if n_ref is None else int(n_ref)
    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", "array")
    if isinstance(dataset, str) and dataset in DATASETS and dataset != "digits":
        ref_a = load_dataset(dataset, n_ref, seed=10**6 + seed).raw()
        ref_b = load_dataset(dataset, n_ref, seed=2 * 10**6 + seed).raw()
    else:
        if isinstance(dataset, str):
            dataset = load_dataset(dataset)
        full = dataset.raw() if isinstance(dataset, Dataset) else np.asarray(dataset)
        full = _as_2d(full, "dataset")
        perm = np.random.default_rng(seed).permutation(full.shape[0])
        half = full.shape[0] // 2
        ref_a, ref_b = full[perm[:half]], full[perm[half:2 * half]]
    ref_a, ref_b = _as_2d(ref_a, "reference"), _as_2d(ref_b, "reference")
    if ref_a.shape[1] != samples.shape[1]:
        raise ValueError(f"samples have {samples.shape[1]} elements each but {name!r} has {ref_a.shape[1]}")
    sw = sliced_wasserstein(samples, ref_a, n_projections, seed)
    base = sliced_wasserstein(ref_b, ref_a, n_projections, seed)
    precision, recall = precision_recall(samples, ref_a)
    s, r = summary(samples), summary(ref_a)
    return {
        "dataset": name, "n": n, "n_ref": int(ref_a.shape[0]),
        "mean": s["mean"], "std": s["std"], "ref_mean": r["mean"], "ref_std": r["std"],
        "sliced_wasserstein": sw, "sw_baseline": base, "sw_ratio": sw / base if base > 0 else float("inf"),
        "precision": precision, "recall": recall,
    }


__all__ = ["evaluate", "precision_recall", "sliced_wasserstein", "summary"]
