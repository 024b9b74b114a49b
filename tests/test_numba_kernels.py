"""Every Numba kernel against the NumPy reference (kernels/reference.py) through the public ops.

With the noise given, the Numba update does the same float operations in the same order as the
reference, so the results are compared for equality. With the noise drawn in-kernel, the Numba
normals (float32 Box–Muller) may differ from the reference by the design's 2e-6 absolute (docs/core.md)
(tests/test_philox.py), so those comparisons allow 2e-6·σ; the in-kernel noise is also checked bit for bit against
``fastddpm.randn`` from the same backend.
"""
import numpy as np
import pytest

import fastddpm
from fastddpm import Schedule
from fastddpm.kernels import reference as R

SHAPES = [(1,), (7, 3), (5, 1, 8, 8), (1000, 2)]
DTYPES = [np.float32, np.float64]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
SCHED = {"linear": Schedule.linear(1000), "cosine": Schedule.cosine(1000)}
NOISE_ATOL = 2e-6  # docs/core.md: Numba normals within 2e-6 of the reference


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    m = rng.standard_normal(shape).astype(dtype)
    return x, m


def _timesteps(batch, T, seed=0):
    """Per-sample t that include 0 and T−1."""
    rng = np.random.default_rng(seed + 100)
    t = rng.integers(0, T, size=batch)
    t[0] = T - 1
    if batch > 1:
        t[-1] = 0
    return t


def _prev(t, kind):
    if kind == "t-1":
        return None
    if kind == "respaced":  # jumps of 1 … 37, reaching −1 for the small t
        return np.maximum(t - 1 - (np.arange(len(t)) * 7) % 37, -1)
    if kind == "final":
        return -1
    raise AssertionError(kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,offset", [(1, 0), (3, 1), (4095, 5), (20000, 2**32 - 1234), (9, 2**62)])
def test_randn_matches_reference(n, offset, dtype):
    got = fastddpm.randn(n, seed=2**32 - 1, stream=3, offset=offset, dtype=dtype, backend="numba")
    ref = R.randn(n, 2**32 - 1, 3, offset, dtype=dtype)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=0, atol=NOISE_ATOL)
    np.testing.assert_array_equal(got, fastddpm.randn(n, seed=2**32 - 1, stream=3, offset=offset, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noise_given", [False, True])
def test_q_sample(shape, dtype, noise_given):
    sched = SCHED["cosine"]
    x0, _ = _inputs(shape, dtype)
    t = _timesteps(shape[0], sched.num_steps)
    noise = fastddpm.randn(shape, seed=4, dtype=dtype) * 0.5 if noise_given else None
    kw = dict(seed=9, stream=2, offset=17)
    x_t, eps = fastddpm.q_sample(sched, x0, t, noise, backend="numba", **kw)
    ref_xt, ref_eps = fastddpm.q_sample(sched, x0, t, noise, backend="numpy", **kw)
    assert x_t.dtype == eps.dtype == dtype and x_t.shape == eps.shape == shape
    if noise_given:
        assert eps is noise
        np.testing.assert_array_equal(x_t, ref_xt)
    else:
        np.testing.assert_array_equal(eps, fastddpm.randn(shape, seed=9, stream=2, offset=17, dtype=dtype))
        np.testing.assert_allclose(eps, ref_eps, rtol=0, atol=NOISE_ATOL)
        np.testing.assert_allclose(x_t, ref_xt, rtol=0, atol=NOISE_ATOL)
        # and the oracle itself: x_t = √ᾱ x0 + √(1−ᾱ) ε with the kernel's own ε
        np.testing.assert_array_equal(x_t, fastddpm.q_sample(sched, x0, t, eps, backend="numpy")[0])


def _assert_same_step(got, ref, x, m, dtype):
    """The kernel against the oracle with the same noise: to a few ulps of the step's magnitude.

    The fused rows fold DDIM's ε̂ = (x − √ᾱ·x̂0)/√(1−ᾱ) (v and sample prediction) into the
    coefficients of x and m — one float sequence, the oracle's another — so they agree to float32
    rounding, not bitwise (measured over this file's DDIM cases: at most 1.6 ulps of
    max(|x|, |m|, |ref|)); ddpm's rows keep the oracle's order and agree bitwise. 4 ulps bound both.
    """
    scale = max(1.0, float(np.max(np.abs(np.concatenate([x.reshape(-1), m.reshape(-1), ref.reshape(-1)])),
                                  initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=4 * np.finfo(dtype).eps * scale)


def _check_step(op, sched, x, m, t, dtype, noise_given, **kw):
    common = dict(seed=5, stream=3, offset=11, **kw)
    noise = fastddpm.randn(x.shape, seed=8, dtype=dtype) if noise_given else None
    got = op(sched, x, m, t, noise=noise, backend="numba", **common)
    ref = op(sched, x, m, t, noise=noise, backend="numpy", **common)
    assert got.dtype == dtype and got.shape == x.shape
    if noise_given:
        _assert_same_step(got, ref, x, m, dtype)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=NOISE_ATOL)
        drawn = fastddpm.randn(x.shape, seed=5, stream=3, offset=11, dtype=dtype)
        np.testing.assert_array_equal(got, op(sched, x, m, t, noise=drawn, backend="numba", **common))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_step(shape, dtype, prediction, variance, clip):
    sched = SCHED["linear"]
    x, m = _inputs(shape, dtype)
    t = _timesteps(shape[0], sched.num_steps)
    _check_step(fastddpm.ddpm_step, sched, x, m, t, dtype, noise_given=False,
                prediction=prediction, variance=variance, clip=clip)
    _check_step(fastddpm.ddpm_step, sched, x, m, t, dtype, noise_given=True,
                prediction=prediction, variance=variance, clip=clip)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddim_step(shape, dtype, prediction, eta, clip):
    sched = SCHED["cosine"]
    x, m = _inputs(shape, dtype, seed=1)
    t = _timesteps(shape[0], sched.num_steps, seed=1)
    for noise_given in (False, True):
        _check_step(fastddpm.ddim_step, sched, x, m, t, dtype, noise_given=noise_given,
                    prediction=prediction, eta=eta, clip=clip)


@pytest.mark.parametrize("op,extra", [(fastddpm.ddpm_step, {"variance": "fixed_large"}),
                                      (fastddpm.ddim_step, {"eta": 0.7})])
@pytest.mark.parametrize("prev_kind", ["t-1", "respaced", "final"])
@pytest.mark.parametrize("scalar_t", [False, True])
def test_step_prev_t(op, extra, prev_kind, scalar_t):
    sched = SCHED["cosine"]
    x, m = _inputs((40, 5), np.float32, seed=2)
    t = _timesteps(40, sched.num_steps, seed=2)
    if scalar_t:
        t = 600
    prev = _prev(np.broadcast_to(np.asarray(t), (40,)).copy(), prev_kind)
    if scalar_t and prev is not None and not np.isscalar(prev):
        prev = int(prev[3])  # one respaced jump for the whole batch
    for noise_given in (False, True):
        _check_step(op, sched, x, m, t, np.float32, noise_given, prev_t=prev, prediction="v_prediction", **extra)


def test_final_step_adds_no_noise():
    sched = SCHED["linear"]
    x, m = _inputs((6, 4), np.float32)
    a = fastddpm.ddpm_step(sched, x, m, 0, seed=1)
    b = fastddpm.ddpm_step(sched, x, m, 0, seed=2)
    c = fastddpm.ddpm_step(sched, x, m, 5, prev_t=-1, seed=3)
    d = fastddpm.ddpm_step(sched, x, m, 5, prev_t=-1, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)
    # and with noise it does depend on the seed
    assert not np.array_equal(fastddpm.ddpm_step(sched, x, m, 5, seed=1), fastddpm.ddpm_step(sched, x, m, 5, seed=2))


@pytest.mark.parametrize("op", [fastddpm.ddpm_step, fastddpm.ddim_step])
def test_torch_cpu_inputs_zero_copy(op):
    torch = pytest.importorskip("torch")
    sched = SCHED["linear"]
    x, m = _inputs((5, 1, 8, 8), np.float32)
    tx, tm = torch.from_numpy(x.copy()), torch.from_numpy(m)
    t = torch.tensor(_timesteps(5, 1000))
    got = op(sched, tx, tm, t, seed=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), op(sched, x, m, t.numpy(), seed=3))
    out = op(sched, tx, tm, t, seed=3, out=tx)  # in place on the tensor's memory
    assert out is tx
    np.testing.assert_array_equal(tx.numpy(), got.numpy())


def test_q_sample_torch_cpu():
    torch = pytest.importorskip("torch")
    sched = SCHED["cosine"]
    x0, _ = _inputs((7, 3), np.float64)
    x_t, eps = fastddpm.q_sample(sched, torch.from_numpy(x0), torch.tensor(_timesteps(7, 1000)), seed=1)
    assert isinstance(x_t, torch.Tensor) and isinstance(eps, torch.Tensor) and x_t.dtype == torch.float64
    ref_xt, ref_eps = fastddpm.q_sample(sched, x0, _timesteps(7, 1000), seed=1)
    np.testing.assert_array_equal(x_t.numpy(), ref_xt)
    np.testing.assert_array_equal(eps.numpy(), ref_eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", [fastddpm.ddpm_step, fastddpm.ddim_step])
def test_out_in_place(op, dtype):
    sched = SCHED["linear"]
    x, m = _inputs((1000, 2), dtype)
    t = _timesteps(1000, 1000)
    kw = dict(seed=1, eta=1.0) if op is fastddpm.ddim_step else dict(seed=1)
    want = op(sched, x, m, t, **kw)
    y = x.copy()
    assert op(sched, y, m, t, out=y, **kw) is y
    np.testing.assert_array_equal(y, want)
    buf = np.full_like(x, np.nan)
    assert op(sched, x, m, t, out=buf, **kw) is buf
    np.testing.assert_array_equal(buf, want)


def test_q_sample_out():
    sched = SCHED["linear"]
    x0, _ = _inputs((7, 3), np.float32)
    buf = np.empty_like(x0)
    x_t, _ = fastddpm.q_sample(sched, x0, 3, out=buf)
    assert x_t is buf
    np.testing.assert_array_equal(buf, fastddpm.q_sample(sched, x0, 3)[0])


def test_more_than_2_pow_24_elements():
    """Index arithmetic past 2²⁴ (float32-exact integers) and across sample boundaries: the full
    Numba call, compared with the reference on windows (the reference on 2²⁴ elements is slow)."""
    sched = SCHED["linear"]
    D = 2**23 + 3
    x = np.zeros((2, D), dtype=np.float32)
    x[:, -8:] = 1.0
    m = np.ones_like(x)
    t = np.array([10, 999])
    seed, stream, offset = 3, 4, 2**31 + 1
    y = fastddpm.ddpm_step(sched, x, m, t, seed=seed, stream=stream, offset=offset)
    z = fastddpm.randn(x.shape, seed=seed, stream=stream, offset=offset)
    for s in range(2):
        for j0 in (0, D - 4099):
            j1 = j0 + 4099
            noise = R.randn(j1 - j0, seed, stream, offset + s * D + j0).reshape(1, -1)
            np.testing.assert_allclose(z[s, j0:j1], noise[0], rtol=0, atol=NOISE_ATOL)
            ref = R.ddpm_step(sched.alphas_cumprod, x[s:s + 1, j0:j1], m[s:s + 1, j0:j1], t[s:s + 1],
                              noise=noise)
            np.testing.assert_allclose(y[s:s + 1, j0:j1], ref, rtol=0, atol=NOISE_ATOL)


# Uniform (t, t′): the sampling loop's case, where a chunk is one vectorised loop whatever D is.
# (D, B): D = 1, 2, 3, 7, 4096; n = B·D below and above PARALLEL_MIN_ELEMENTS (2¹⁶); for D = 3
# and 7 the 4096-element chunk boundaries fall inside samples.
UNIFORM_SHAPES = [(1, 5001), (2, 37), (2, 33000), (3, 22000), (7, 9363), (4096, 3), (4096, 17)]
UNIFORM_T, UNIFORM_OTHER_T = 517, 80


def _uniform_cases(op, sched, config, prev_kind, dtype=np.float32):
    """For each shape: the scalar-t result, the reference's, and the per-sample walk's on a batch
    whose odd samples have another (t, t′) (the even samples must equal the scalar-t result)."""
    prev = {"respaced": UNIFORM_T - 37, "final": -1}[prev_kind]
    common = dict(seed=6, stream=4, offset=2**32 - 5, **config)
    for D, B in UNIFORM_SHAPES:
        x, m = _inputs((B, D), dtype, seed=D)
        got = op(sched, x, m, UNIFORM_T, prev_t=prev, backend="numba", **common)
        ref = op(sched, x, m, UNIFORM_T, prev_t=prev, backend="numpy", **common)
        noise = fastddpm.randn(x.shape, seed=6, stream=4, offset=2**32 - 5, dtype=dtype)
        t_mix = np.where(np.arange(B) % 2 == 0, UNIFORM_T, UNIFORM_OTHER_T)
        prev_mix = np.where(np.arange(B) % 2 == 0, prev, UNIFORM_OTHER_T - 1)
        walk = op(sched, x, m, t_mix, prev_t=prev_mix, backend="numba", **common)
        yield (D, B), x, m, prev, got, ref, noise, walk


def _check_uniform(op, sched, config, prev_kind):
    """Drawn noise within NOISE_ATOL of the reference; with that noise given, numba equals itself
    bit for bit (in-kernel noise = randn's) and the numpy reference to float32 rounding
    (_assert_same_step); the per-sample walk equals the uniform path on the samples they share."""
    for shape, x, m, prev, got, ref, noise, walk in _uniform_cases(op, sched, config, prev_kind):
        np.testing.assert_allclose(got, ref, rtol=0, atol=NOISE_ATOL, err_msg=str(shape))
        given = op(sched, x, m, UNIFORM_T, prev_t=prev, noise=noise, backend="numba", **config)
        np.testing.assert_array_equal(got, given, err_msg=str(shape))
        _assert_same_step(given, op(sched, x, m, UNIFORM_T, prev_t=prev, noise=noise, backend="numpy", **config), x,
                          m, x.dtype)
        np.testing.assert_array_equal(walk[::2], got[::2], err_msg=str(shape))


@pytest.mark.parametrize("prev_kind", ["respaced", "final"])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm_step_uniform_t(prediction, variance, clip, prev_kind):
    _check_uniform(fastddpm.ddpm_step, SCHED["linear"], dict(prediction=prediction, variance=variance, clip=clip),
                   prev_kind)


@pytest.mark.parametrize("prev_kind", ["respaced", "final"])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_step_uniform_t(prediction, eta, clip, prev_kind):
    _check_uniform(fastddpm.ddim_step, SCHED["cosine"], dict(prediction=prediction, eta=eta, clip=clip), prev_kind)


@pytest.mark.parametrize("noise_given", [False, True])
def test_q_sample_uniform_t(noise_given):
    sched = SCHED["cosine"]
    for D, B in UNIFORM_SHAPES:
        x0, _ = _inputs((B, D), np.float32, seed=D)
        noise = fastddpm.randn(x0.shape, seed=4, stream=1) if noise_given else None
        kw = dict(seed=9, stream=2, offset=2**32 - 3)
        x_t, eps = fastddpm.q_sample(sched, x0, UNIFORM_T, noise, backend="numba", **kw)
        ref_xt, ref_eps = fastddpm.q_sample(sched, x0, UNIFORM_T, noise, backend="numpy", **kw)
        np.testing.assert_allclose(eps, ref_eps, rtol=0, atol=NOISE_ATOL)
        np.testing.assert_allclose(x_t, ref_xt, rtol=0, atol=NOISE_ATOL)
        np.testing.assert_array_equal(x_t, fastddpm.q_sample(sched, x0, UNIFORM_T, eps, backend="numpy")[0])
        t_mix = np.where(np.arange(B) % 2 == 0, UNIFORM_T, UNIFORM_OTHER_T)
        walk_xt, walk_eps = fastddpm.q_sample(sched, x0, t_mix, noise, backend="numba", **kw)
        np.testing.assert_array_equal(walk_eps, eps)
        np.testing.assert_array_equal(walk_xt[::2], x_t[::2])
