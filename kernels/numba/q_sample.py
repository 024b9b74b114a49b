"""q_sample: x_t = √ᾱ[t_b]·x0 + √(1−ᾱ[t_b])·ε in one pass, ε given or drawn in-kernel."""
import numba
import numpy as np
from numba import njit

from .common import CHUNK, kernel, num_chunks, philox_key
from .philox import chunk_normals


@njit(inline="always", cache=True, error_model="numpy")
def _q_span(x0, noise, noise_given, buf, base, tb, sqrt_ab, sqrt_1mab, x_t, noise_out, start, stop):
    """Elements start … stop−1 at one t; buf[k − base] is noise k when drawn in-kernel."""
    dt = x0.dtype.type
    a = dt(sqrt_ab[tb])
    s = dt(sqrt_1mab[tb])
    if noise_given:  # two loops, not a per-element branch: both vectorise
        for k in range(start, stop):
            x_t[k] = a * x0[k] + s * noise[k]
    else:
        for k in range(start, stop):
            eps = dt(buf[k - base])
            noise_out[k] = eps
            x_t[k] = a * x0[k] + s * eps


@kernel
def _q_sample_kernel(x0, noise, noise_given, t, sqrt_ab, sqrt_1mab, x_t, noise_out, per_sample,
                     key0, key1, offset, n_chunks):
    n = x0.shape[0]
    dt = x0.dtype.type
    for c in numba.prange(n_chunks):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        if noise_given:
            buf, shift = np.empty(0, dtype=np.float32), np.int64(0)
        else:
            buf, shift = chunk_normals(key0, key1, offset + lo, hi - lo)
        base = lo - shift
        b = lo // per_sample
        b_last = (hi - 1) // per_sample
        j = b + 1
        while j <= b_last and t[j] == t[b]:  # stops at the first differing t (per-sample cost ≈ 0)
            j += 1
        if j > b_last:  # one vectorised loop over the chunk whatever D is
            _q_span(x0, noise, noise_given, buf, base, t[b], sqrt_ab, sqrt_1mab, x_t, noise_out, lo, hi)
            continue
        start = lo
        while start < hi:
            stop = min(hi, (b + 1) * per_sample)
            _q_span(x0, noise, noise_given, buf, base, t[b], sqrt_ab, sqrt_1mab, x_t, noise_out, start, stop)
            start = stop
            b += 1


def q_sample(x0, t, sqrt_ab, sqrt_1mab, noise, x_t, noise_out, seed, stream, offset, per_sample):
    """All arrays flat and contiguous; t [B] int64; tables float64 [T]; per_sample = D.

    Bytes per element: 12 (read x0 and ε, write x_t; or read x0, write x_t and ε).
    """
    k0, k1 = philox_key(seed, stream)
    given = noise is not None
    if given:
        noise_out = noise
    else:
        noise = noise_out
    _q_sample_kernel(x0.shape[0],
                     x0, noise, given, t, sqrt_ab, sqrt_1mab, x_t, noise_out, per_sample,
                     k0, k1, np.int64(offset), num_chunks(x0.shape[0]))
