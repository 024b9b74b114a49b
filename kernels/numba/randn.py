"""randn: counter-based normals, element k ← global index offset + k."""
import numba
import numpy as np

from .common import CHUNK, kernel, num_chunks, philox_key
from .philox import chunk_normals


@kernel
def _randn_kernel(out, key0, key1, offset, n_chunks):
    n = out.shape[0]
    for c in numba.prange(n_chunks):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        buf, shift = chunk_normals(key0, key1, offset + lo, hi - lo)
        for k in range(lo, hi):
            out[k] = buf[k - lo + shift]


def randn(out: np.ndarray, seed: int, stream: int, offset: int) -> None:
    """Fill the contiguous 1-D array ``out`` (float32 or float64). Bytes per element: 4 written."""
    k0, k1 = philox_key(seed, stream)
    _randn_kernel(out.shape[0], out, k0, k1, np.int64(offset), num_chunks(out.shape[0]))
