"""A sample is a pure function of (seed, stream, global index): batch split, thread count and
backend do not change it."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastddpm
from fastddpm import Schedule

SCHED = Schedule.cosine(1000)
D = 3 * 17 * 5  # elements per sample


def _batch(b, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, 3, 17, 5)).astype(dtype), rng.standard_normal((b, 3, 17, 5)).astype(dtype)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("split", [1, 3, 7])
def test_batch_split_with_offset(backend, split):
    x, m = _batch(8)
    t = np.arange(8) * 120 + 3
    whole_step = fastddpm.ddpm_step(SCHED, x, m, t, seed=5, stream=2, backend=backend)
    whole_q, whole_eps = fastddpm.q_sample(SCHED, x, t, seed=5, backend=backend)
    parts = [(0, split), (split, 8)]
    step = np.concatenate([fastddpm.ddpm_step(SCHED, x[a:b], m[a:b], t[a:b], seed=5, stream=2, offset=a * D,
                                              backend=backend) for a, b in parts])
    q = [fastddpm.q_sample(SCHED, x[a:b], t[a:b], seed=5, offset=a * D, backend=backend) for a, b in parts]
    np.testing.assert_array_equal(step, whole_step)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in q]), whole_q)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in q]), whole_eps)
    np.testing.assert_array_equal(fastddpm.randn(x.shape, seed=5, backend=backend).reshape(-1)[split * D:],
                                  fastddpm.randn((8 - split) * D, seed=5, offset=split * D, backend=backend))


_PROBE = """
import hashlib, numpy as np, numba, fastddpm
s = fastddpm.Schedule.linear(1000)
rng = np.random.default_rng(0)
x = rng.standard_normal((33, 4099)).astype(np.float32)
m = rng.standard_normal((33, 4099)).astype(np.float32)
t = rng.integers(0, 1000, 33)
h = hashlib.sha256()
h.update(fastddpm.randn(x.shape, seed=1, offset=7).tobytes())
h.update(fastddpm.q_sample(s, x, t, seed=2)[0].tobytes())
h.update(fastddpm.ddpm_step(s, x, m, t, seed=3, prediction="v_prediction", clip=1.0).tobytes())
h.update(fastddpm.ddim_step(s, x, m, t, seed=4, eta=0.5).tobytes())
print(numba.get_num_threads(), h.hexdigest())
"""


def test_same_numbers_with_1_and_2_threads():
    """Separate processes (NUMBA_NUM_THREADS is read at import), sharing the kernel cache."""
    digests = {}
    for threads in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True, capture_output=True,
                             text=True, timeout=600).stdout.split()
        assert out[0] == threads
        digests[threads] = out[1]
    assert digests["1"] == digests["2"]
    # and the same as in this process
    ns = {}
    exec(_PROBE.replace("print(", "result = ("), ns)
    assert ns["result"][1] == digests["1"]


def test_sampling_loop_same_on_numpy_and_numba():
    """Ten ancestral steps with per-step streams. The Numba normals are within the design's 2e-6 (docs/core.md) of
    the reference's; given those same normals, the NumPy loop reproduces the Numba loop exactly
    (the update arithmetic is the same; the x̂0 of t = 999 amplifies any noise difference ~150×,
    so the two backends' own draws are compared as noise, not through the chain)."""
    x = {b: fastddpm.randn((4, 30), seed=11, stream=0, backend="numba") for b in ("numpy", "numba")}
    np.testing.assert_allclose(x["numba"], fastddpm.randn((4, 30), seed=11, stream=0, backend="numpy"),
                               rtol=0, atol=2e-6)
    ts = np.linspace(999, 0, 10).astype(int)
    for k, t in enumerate(ts):
        prev = ts[k + 1] if k + 1 < len(ts) else -1
        z = fastddpm.randn((4, 30), seed=11, stream=k + 1, backend="numba")
        np.testing.assert_allclose(z, fastddpm.randn((4, 30), seed=11, stream=k + 1, backend="numpy"),
                                   rtol=0, atol=2e-6)
        for b in x:
            eps = np.tanh(x[b])  # a stand-in network, the same function on both
            x[b] = fastddpm.ddpm_step(SCHED, x[b], eps, int(t), prev_t=int(prev), seed=11, stream=k + 1,
                                      noise=z if b == "numpy" else None, backend=b)
    np.testing.assert_array_equal(x["numba"], x["numpy"])


def test_serial_and_parallel_kernels_agree():
    """Calls below PARALLEL_MIN_ELEMENTS run the serial copy of each kernel: same numbers."""
    from fastddpm.kernels.numba.common import PARALLEL_MIN_ELEMENTS

    half = PARALLEL_MIN_ELEMENTS // 2 + 3  # two samples → parallel; one sample → serial
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, half)).astype(np.float32)
    m = rng.standard_normal((2, half)).astype(np.float32)
    t = np.array([700, 20])
    kw = dict(seed=8, stream=4)
    whole = [fastddpm.randn(x.shape, seed=8, stream=4), fastddpm.q_sample(SCHED, x, t, **kw)[0],
             fastddpm.ddpm_step(SCHED, x, m, t, **kw), fastddpm.ddim_step(SCHED, x, m, t, eta=0.3, **kw)]
    for s in range(2):
        one = dict(offset=s * half, **kw)
        xs, ms, ts = x[s:s + 1], m[s:s + 1], t[s:s + 1]
        parts = [fastddpm.randn(xs.shape, **one), fastddpm.q_sample(SCHED, xs, ts, **one)[0],
                 fastddpm.ddpm_step(SCHED, xs, ms, ts, **one), fastddpm.ddim_step(SCHED, xs, ms, ts, eta=0.3, **one)]
        for w, p in zip(whole, parts):
            np.testing.assert_array_equal(w[s:s + 1], p)
