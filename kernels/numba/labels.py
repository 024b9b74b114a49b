"""Class labels drawn as a pure function of (seed, sample index): Philox words of their own stream.

Word i of (seed, stream) is lane ``i & 3`` of Philox4x32-10 with key (seed mod 2³², stream mod 2³²)
and counter (lo32(i ≫ 2), hi32(i ≫ 2), 0, 0) — the integers behind the noise (docs/core.md), on
:data:`LABEL_STREAM`, which no noise uses (x_T is stream 0, call k draws stream k + 1, training
2³⁰ + it). Two ways to draw the label of global sample index s (docs/sampling.md, "Labels"):

- :func:`categorical`: independent draws with probabilities given as 32-bit thresholds (training
  frequencies, or uniform): label(s) = #{k : T_k ≤ word(s)}, T_k = ⌊2³²·(w_0 + … + w_k)/Σw⌋.
- :func:`balanced`: every block of K consecutive indices [bK, bK + K) holds each label exactly
  once, in the order of a Fisher–Yates permutation of block b drawn from words bK + 1 … bK + K − 1
  (for j = K−1 … 1 swap entries j and ⌊word(bK + j)·(j + 1)/2³²⌋).

Either is invariant to batch size, threads, backend, processes and resume (a sample's label
depends only on its global index). kernels/reference.py restates both independently.
"""
import numpy as np
from numba import njit

from .philox import philox4x32_10

# The labels' Philox stream: 2³² − 1, far from the sampling streams (0 … calls) and training's (2³⁰ + it).
LABEL_STREAM = 0xFFFFFFFF
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


@njit(cache=True, error_model="numpy")
def _word(k0, k1, i):
    block = np.uint64(i) >> np.uint64(2)
    r = philox4x32_10(np.uint32(block & _MASK32), np.uint32(block >> _SHIFT32), np.uint32(0), np.uint32(0), k0, k1)
    lane = i & 3
    if lane == 0:
        return np.uint64(r[0])
    if lane == 1:
        return np.uint64(r[1])
    if lane == 2:
        return np.uint64(r[2])
    return np.uint64(r[3])


@njit(cache=True, error_model="numpy")
def _categorical(k0, k1, first, n, thresholds, out):
    for s in range(n):
        u = _word(k0, k1, first + s)
        lab = 0
        for t in thresholds:  # K − 1 thresholds, ascending: a handful of compares per label
            if u >= t:
                lab += 1
        out[s] = lab


@njit(cache=True, error_model="numpy")
def _permutation(k0, k1, block, k, perm):
    for j in range(k):
        perm[j] = j
    for j in range(k - 1, 0, -1):
        u = _word(k0, k1, block * k + j)
        r = np.int64((u * np.uint64(j + 1)) >> _SHIFT32)
        perm[j], perm[r] = perm[r], perm[j]


@njit(cache=True, error_model="numpy")
def _balanced(k0, k1, first, n, k, out):
    perm = np.empty(k, dtype=np.int64)
    current = -1
    for s in range(n):
        g = first + s
        block = g // k
        if block != current:
            _permutation(k0, k1, block, k, perm)
            current = block
        out[s] = perm[g - block * k]


def _key(seed: int):
    return np.uint32(int(seed) % 2**32), np.uint32(LABEL_STREAM)


def categorical(seed: int, first: int, n: int, thresholds) -> np.ndarray:
    """int64 [n]: labels of global sample indices first … first+n−1, drawn with 32-bit ``thresholds``
    (uint64 [K − 1], ascending, see :func:`thresholds`)."""
    out = np.empty(int(n), dtype=np.int64)
    k0, k1 = _key(seed)
    _categorical(k0, k1, np.int64(first), np.int64(n), np.ascontiguousarray(thresholds, dtype=np.uint64), out)
    return out


def balanced(seed: int, first: int, n: int, num_classes: int) -> np.ndarray:
    """int64 [n]: labels of global sample indices first … first+n−1, each block of ``num_classes``
    consecutive indices a permutation of 0 … num_classes − 1."""
    out = np.empty(int(n), dtype=np.int64)
    k0, k1 = _key(seed)
    _balanced(k0, k1, np.int64(first), np.int64(n), np.int64(num_classes), out)
    return out


def thresholds(weights) -> np.ndarray:
    """uint64 [K − 1]: T_k = ⌊2³²·(w_0 + … + w_k)/Σw⌋ for k < K − 1 (float64 sums: the same on every
    IEEE machine). Weights are ≥ 0 with a positive sum; a zero weight is a label never drawn."""
    w = np.asarray(weights, dtype=np.float64)
    cum = np.cumsum(w)
    return np.floor(cum[:-1] / cum[-1] * 2.0**32).astype(np.uint64)
