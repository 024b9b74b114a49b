"""Launch helpers shared by the Numba kernels."""
import numpy as np

# Elements per parallel work item: large enough to amortise the per-chunk set-up and the
# thread hand-off, small enough (16 KiB of float32 noise) that the noise buffer stays in L1.
CHUNK = 4096


def num_chunks(n: int) -> int:
    return (n + CHUNK - 1) // CHUNK


def philox_key(seed: int, stream: int):
    """(k0, k1) = (seed mod 2³², stream mod 2³²) as uint64 scalars."""
    return np.uint64(seed % 2**32), np.uint64(stream % 2**32)
