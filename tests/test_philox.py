"""Counter-based noise: Philox4x32-10 known answers, Triton's convention, statistics, and the
Numba generator against the reference."""
import os
import pathlib
import subprocess
import sys
import importlib.util

import numpy as np
import pytest
from numba import njit
from scipy import stats

import fastddpm
from fastddpm.kernels import reference as R
from fastddpm.kernels.numba import philox as NP

# Random123 known-answer vectors for Philox4x32-10: (counter, key) → output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@njit
def _numba_philox(c, k):
    return NP.philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1])


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_reference_philox_known_answers(counter, key, expected):
    out = R.philox4x32(*counter, *key)
    assert tuple(int(v) for v in out) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_numba_philox_known_answers(counter, key, expected):
    out = _numba_philox(np.array(counter, dtype=np.uint64), np.array(key, dtype=np.uint64))
    assert tuple(int(v) for v in out) == expected


def test_randint4x_counter_layout():
    """Block b → counter (lo32(b), hi32(b), 0, 0), key (seed, stream)."""
    blocks = np.array([0, 1, 2**32 - 1, 2**32, 2**32 + 5, 2**62 + 12345], dtype=np.int64)
    got = np.stack(R.randint4x(11, 2**32 - 3, blocks))
    lo, hi = blocks & 0xFFFFFFFF, blocks >> 32
    want = np.stack([np.array([int(v) for v in R.philox4x32(lo[i], hi[i], 0, 0, 11, 2**32 - 3)])
                     for i in range(len(blocks))], axis=1)
    np.testing.assert_array_equal(got, want)


def _probe_blocks():
    rng = np.random.default_rng(1)
    special = [0, 1, 2, 3, 2**32 - 1, 2**32, 2**32 + 1, 2**33 + 7, 2**40 + 3, 2**61 - 1]
    return np.concatenate([special, rng.integers(0, 2**61, 256 - len(special))]).astype(np.int64)


TRITON_CONFIGS = [(123456789, 7, "tensor"), (2**32 - 1, 2**32 - 1, "tensor"), (0, 2**31, "tensor"),
                  (2**31 - 1, 0, "int"), (5, 0, "int")]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_reference_matches_triton_randint4x_randn4x(tmp_path):
    """Triton's own randint4x/randn4x (interpreter, separate process) on int64 offsets > 2³²,
    seed64 = stream·2³² + seed as a tensor and a small seed as a Python int."""
    blocks = _probe_blocks()
    np.save(tmp_path / "blocks.npy", blocks)
    probe = pathlib.Path(__file__).with_name("_triton_philox_probe.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    specs = [f"{seed},{stream},{mode}" for seed, stream, mode in TRITON_CONFIGS]
    subprocess.run([sys.executable, str(probe), str(tmp_path / "blocks.npy"), str(tmp_path / "out.npz"), *specs],
                   check=True, env=env, timeout=600)
    tri = np.load(tmp_path / "out.npz")
    for k, (seed, stream, _) in enumerate(TRITON_CONFIGS):
        np.testing.assert_array_equal(np.stack(R.randint4x(seed, stream, blocks)), tri[f"ints_{k}"])
        # Triton's float32 log/cos/sin against the correctly rounded reference: a few ulps.
        np.testing.assert_allclose(np.stack(R.randn4x(seed, stream, blocks)), tri[f"norms_{k}"], rtol=0, atol=1e-6)


def test_uniform_mapping_matches_triton_formula():
    x = np.array([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 12345678], dtype=np.uint32)
    as_int = x.view(np.int32).astype(np.int64)
    folded = np.where(as_int < 0, -as_int - 1, as_int)
    np.testing.assert_array_equal(R.uint_to_uniform_float(x), folded.astype(np.float32) * np.float32(4.6566127342e-10))
    u = R.uint_to_uniform_float(np.arange(0, 2**32, 2**16 + 1, dtype=np.uint64).astype(np.uint32))
    assert u.min() >= 0 and u.max() < 1


def test_uniforms_pass_ks():
    ints = np.concatenate(R.randint4x(2024, 3, np.arange(250_000)))
    u = R.uint_to_uniform_float(ints).astype(np.float64)
    assert stats.kstest(u, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_normals_pass_ks(backend):
    z = fastddpm.randn(10**6, seed=77, stream=5, offset=2**35, backend=backend)
    assert stats.kstest(z.astype(np.float64), "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 5e-3


# The design's contract (docs/core.md, "Reproducibility promise") for the float32 uniform→normal mapping of the Numba (and Triton) kernels.
NORMAL_ATOL = 2e-6


def test_numba_normals_within_2e6_of_reference_on_1e7_draws():
    n, piece, offset = 10**7 + 3, 2**18, 2**33 - 10**6 + 1
    got = fastddpm.randn(n, seed=99, stream=12, offset=offset, backend="numba")
    worst = 0.0
    for lo in range(0, n, piece):  # the reference in cache-sized pieces (3× faster than at once)
        ref = R.randn(min(piece, n - lo), 99, 12, offset=offset + lo)
        err = np.abs(got[lo:lo + piece].astype(np.float64) - ref)
        worst = max(worst, float(err.max()))
    assert worst <= NORMAL_ATOL


@njit(cache=True)
def _numba_mapping(u1, u2, z1, z2):
    """The kernels' Box–Muller on given uniforms (clamp and θ = 2π·u₂ as in fill_normals)."""
    for i in range(u1.shape[0]):
        z1[i], z2[i] = NP.box_muller(max(NP._U1_MIN, u1[i]), NP._TWO_PI * u2[i])


def _uniform_grid(centre, half_width):
    """Every uniform the uint→float mapping can produce within centre ± half_width·2⁻³¹."""
    k = np.arange(max(0, int(centre * 2**31) - half_width), min(2**31, int(centre * 2**31) + half_width),
                  dtype=np.int64)
    return np.unique(k.astype(np.float32) * np.float32(4.6566127342e-10))


def test_numba_mapping_clamp_and_angle_extremes():
    """The float32 log/sincos where they are hardest: u₁ at and next to the 1e-7 clamp (|z| = 5.68),
    u₁ next to 1 (log → 0), θ next to 0, π/2, π, 3π/2 and 2π (quadrant switches), all pairs."""
    u1 = np.concatenate([_uniform_grid(0.0, 400), _uniform_grid(1e-7, 300), _uniform_grid(1e-3, 50),
                         _uniform_grid(0.5, 50), _uniform_grid(1.0, 400)])
    u2 = np.concatenate([_uniform_grid(c, 200) for c in (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)])
    assert u1.min() < 1e-7 and u1.max() > 0.9999999 and u2.max() > 0.9999999  # the largest uniform
    u1, u2 = (a.reshape(-1) for a in np.meshgrid(u1, u2))
    z1, z2 = np.empty_like(u1), np.empty_like(u1)
    _numba_mapping(u1, u2, z1, z2)
    r1, r2 = R.pair_uniform_to_normal(u1, u2)
    assert np.abs(r1).max() > 5.6  # the clamp was hit
    for got, ref in ((z1, r1), (z2, r2)):
        assert np.abs(got.astype(np.float64) - ref).max() <= NORMAL_ATOL


def test_numba_normals_tail_and_clamp():
    """Blocks whose first uniform is 0 hit the u₁ ≥ 1e-7 clamp (|z| ≈ 5.68)."""
    # Find lanes with the smallest u₁ among many blocks and compare those exactly.
    blocks = np.arange(2**20, dtype=np.int64)
    i0, i1, i2, i3 = R.randint4x(0, 0, blocks)
    u = R.uint_to_uniform_float(i0)
    worst = blocks[np.argsort(u)[:16]]
    for b in worst:
        ref = R.randn(4, 0, 0, offset=int(b) * 4)
        got = fastddpm.randn(4, seed=0, stream=0, offset=int(b) * 4, backend="numba")
        np.testing.assert_allclose(got, ref, rtol=0, atol=NORMAL_ATOL)
    z = R.randn(4, 0, 0, offset=int(worst[0]) * 4)
    assert np.hypot(z[0], z[1]) > 4.5  # the Box–Muller radius of the smallest u₁


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_randn_offset_and_dtype(dtype):
    full = fastddpm.randn((3, 5), seed=1, stream=2, offset=2**32 - 7, dtype=dtype)
    assert full.dtype == dtype and full.shape == (3, 5)
    tail = fastddpm.randn(6, seed=1, stream=2, offset=2**32 - 7 + 9, dtype=dtype)
    np.testing.assert_array_equal(full.reshape(-1)[9:], tail)

def test_streams_and_seeds_differ():
    a = fastddpm.randn(1000, seed=1, stream=0)
    assert not np.array_equal(a, fastddpm.randn(1000, seed=1, stream=1))
    assert not np.array_equal(a, fastddpm.randn(1000, seed=2, stream=0))
    assert np.corrcoef(a, fastddpm.randn(1000, seed=1, stream=1))[0, 1] < 0.15


def test_randn_like_torch():
    torch = pytest.importorskip("torch")
    like = torch.zeros(2)
    z = fastddpm.randn((4, 3), seed=3, like=like, dtype=torch.float64)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float64 and z.shape == (4, 3)
    np.testing.assert_array_equal(z.numpy(), fastddpm.randn((4, 3), seed=3, dtype=np.float64))
