"""Launch helpers shared by the Numba kernels."""
import types

import numpy as np
from numba import njit

# Elements per parallel work item: large enough to amortise the per-chunk set-up and the
# thread hand-off, small enough (16 KiB of float32 noise) that the noise buffer stays in L1.
# 1024, 4096 and 16384 measured the same within noise (randn 2²²: 16–17 ms CPU, 1 thread,
# 2-core EPYC under load); 4096 keeps ≥ 1000 chunks for load balance at 2²² elements.
CHUNK = 4096

# Caching (cache=True on every kernel) — decision: safe, and kept.
# - First call without a cache: 12–18 s per kernel (randn, q_sample, ddpm_step, ddim_step;
#   ~60 s for the four, 2 busy cores); with the cache: 0.06–0.5 s each.
# - The cached code of the parallel kernels does not depend on the thread count: a cache
#   written by a NUMBA_NUM_THREADS=2 process, loaded by 1- and 2-thread processes, gave the
#   same SHA-256 of randn/q_sample/ddpm_step/ddim_step outputs (tests/test_reproducibility.py
#   checks 1 vs 2 threads on the shared cache in every run). Numba keys the cache on the CPU
#   model and features, so a cache copied to another machine is recompiled, not misused.
# - Caveat: Numba invalidates a kernel's cache only when the kernel's own file changes. The
#   inlined helpers live in philox.py; after editing only philox.py, delete
#   kernels/numba/__pycache__/*.nb[ic] (an installed package is unaffected: an upgrade rewrites
#   every file).


# Below this many elements a call runs on the calling thread. Waking the OpenMP pool costs
# little on an idle machine, but on the shared 2-core test machine every parallel launch waited
# 20–28 ms for the other worker to get a core (randn of 10 elements: 20 ms with 2 threads,
# 0.1 ms serial); 2¹⁶ elements take ≈ 0.3 ms on one core, so little is lost below it.
PARALLEL_MIN_ELEMENTS = 1 << 16


def kernel(fn):
    """Compile one kernel body twice: parallel (prange over chunks) and serial.

    Returns ``launch(n, *args)`` that runs the serial version below PARALLEL_MIN_ELEMENTS. The
    serial copy gets its own qualified name so the two do not share a cache index.
    """
    flags = dict(cache=True, error_model="numpy")
    parallel = njit(parallel=True, **flags)(fn)
    serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                                   fn.__closure__)
    serial_fn.__qualname__ = fn.__qualname__ + "_serial"
    serial = njit(**flags)(serial_fn)

    def pick(n):
        """The compiled function ``launch(n, …)`` would call: bound once by a caller that makes
        many calls of one size (the sampling loop, per batch)."""
        return parallel if n >= PARALLEL_MIN_ELEMENTS else serial

    def launch(n, *args):
        return pick(n)(*args)

    launch.pick = pick
    return launch


def num_chunks(n: int) -> int:
    return (n + CHUNK - 1) // CHUNK


def philox_key(seed: int, stream: int):
    """(k0, k1) = (seed mod 2³², stream mod 2³²) as uint64 scalars."""
    return np.uint64(seed % 2**32), np.uint64(stream % 2**32)
