"""The core pieces the drop-in schedulers' options rest on (issue 23, part 6):

- the generic Numba update's per-sample dynamic thresholding (``threshold=``) against the array
  statement of the row (kernels.coefficients.apply_row) and the plain formula;
- kernels.coefficients.rescale_row (a row for a state stored as x/α, the Euler family's X);
- zero-terminal-SNR schedules (Schedule(zero_terminal_snr=True), rescale_zero_terminal_snr).
"""
import numpy as np
import pytest

from fastddpm import Schedule
from fastddpm.kernels import coefficients as KC
from fastddpm.kernels.numba.common import CHUNK
from fastddpm.kernels.numba.update import update
from fastddpm.schedule import rescale_zero_terminal_snr


def _row(rng, cols):
    row = np.zeros(KC.NUM_COLUMNS)
    for c in cols:
        row[KC.COL[c]] = rng.uniform(-1.5, 1.5)
    return row


@pytest.mark.parametrize("D", [1, 3, 7, CHUNK + 5])  # CHUNK + 5: a sample that spans two chunks
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_threshold_equals_apply_row_and_the_formula(D, dtype):
    rng = np.random.default_rng(D)
    B = 3
    x = rng.standard_normal((B, D)).astype(dtype)
    m = (3 * rng.standard_normal((B, D))).astype(dtype)
    s, h1 = rng.standard_normal((B, D)).astype(dtype), rng.standard_normal((B, D)).astype(dtype)
    z = rng.standard_normal((B, D)).astype(dtype)
    row = _row(rng, ("cx", "cm", "yx", "y0", "ym", "ys", "y1", "yz", "sx", "s0", "ss", "q0", "qx"))
    thr = np.array([1.0, 1.7, 2.5], dtype=dtype)
    r = row.astype(dtype)
    y = np.empty_like(x)
    s_k, q_k = s.copy(), np.zeros_like(x)
    update(x.reshape(-1), m.reshape(-1), r.reshape(1, -1), np.zeros(1, np.int64), out=y.reshape(-1),
           s=s_k.reshape(-1), h=(h1.reshape(-1),), q=q_k.reshape(-1), noise=z.reshape(-1), per_sample=D,
           threshold=thr, clip=0.5)  # the threshold replaces the clip
    want, s_want, q_want = KC.apply_row(r, x, m, s=s, h=(h1,), z=z, threshold=thr[:, None])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, want, **tol)
    np.testing.assert_allclose(s_k, s_want, **tol)
    np.testing.assert_allclose(q_k, q_want, **tol)
    # the plain formula: x̂0c = clip(x̂0, −s_b, s_b)/s_b
    x0 = r[KC.COL["cx"]] * x + r[KC.COL["cm"]] * m
    x0c = np.clip(x0, -thr[:, None], thr[:, None]) / thr[:, None]
    np.testing.assert_allclose(q_k, r[KC.COL["qx"]] * x + r[KC.COL["q0"]] * x0c, **tol)
    assert np.abs(x0).max() > thr.max()  # the bound is active somewhere


def test_numba_threshold_off_is_the_plain_kernel():
    """Without ``threshold`` the call is the one of the sampling loop (clip as before)."""
    rng = np.random.default_rng(1)
    x, m = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    row = _row(rng, ("cx", "cm", "yx", "y0")).astype(np.float32)
    a, b = x.copy(), x.copy()
    update(a, m, row[None], np.zeros(1, np.int64), clip=0.7, per_sample=10)
    update(b, m, row[None], np.zeros(1, np.int64), clip=0.7, per_sample=10, threshold=None)
    assert np.array_equal(a, b)
    want, _, _ = KC.apply_row(row, x, m, clip=np.float32(0.7))
    np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-6)


def test_rescale_row_is_the_row_on_the_scaled_state():
    """rescale_row(row, a, b) on X gives x′/b for x = a·X (noise, state and push unchanged in meaning)."""
    rng = np.random.default_rng(2)
    row = _row(rng, ("cx", "cm", "yx", "y0", "ym", "ys", "y1", "yz", "sx", "s0", "qx", "q0"))
    X, m, s, h1, z = (rng.standard_normal(20) for _ in range(5))
    a, b = 0.37, 0.81
    got, s1, q1 = KC.apply_row(KC.rescale_row(row, a, b), X, m, s=s, h=(h1,), z=z, clip=0.9)
    want, s2, q2 = KC.apply_row(row, a * X, m, s=s, h=(h1,), z=z, clip=0.9)
    np.testing.assert_allclose(got, want / b, rtol=1e-12)
    np.testing.assert_allclose(s1, s2, rtol=1e-12)
    np.testing.assert_allclose(q1, q2, rtol=1e-12)


def test_zero_terminal_snr_schedule():
    base = Schedule.linear(1000)
    betas = rescale_zero_terminal_snr(base.betas)
    assert betas[-1] == 1.0 and np.all((betas[:-1] > 0) & (betas[:-1] < 1))
    # Lin et al.: √ᾱ shifted to end at 0 and scaled to keep its first value
    sqrt_ab = np.sqrt(np.cumprod(1 - base.betas))
    want = (sqrt_ab - sqrt_ab[-1]) * sqrt_ab[0] / (sqrt_ab[0] - sqrt_ab[-1])
    s = Schedule.from_betas(betas, zero_terminal_snr=True)
    np.testing.assert_allclose(np.sqrt(s.alphas_cumprod), want, rtol=1e-12, atol=1e-15)
    assert s.alphas_cumprod[-1] == 0.0 and np.isinf(s.sqrt_recip_alphas_cumprod[-1])
    assert np.all(np.isfinite(s.sqrt_recip_alphas_cumprod[:-1]))
    assert Schedule.from_config(s.to_config()) == s and Schedule.from_config(s.to_config()).zero_terminal_snr
    with pytest.raises(ValueError, match="betas must lie in"):
        Schedule.from_betas(betas)  # without the flag a beta of 1 is refused, as before
    with pytest.raises(ValueError, match="last beta exactly 1"):
        Schedule.from_betas(base.betas, zero_terminal_snr=True)


def test_from_diffusers_zero_snr_only_without_sampling_settings():
    torch = pytest.importorskip("torch")
    sched = pytest.importorskip("diffusers").DDPMScheduler(rescale_betas_zero_snr=True, beta_schedule="scaled_linear",
                                                           beta_start=0.00085, beta_end=0.012)
    s = Schedule.from_diffusers(sched, sampling=False)
    # diffusers rescales in float32, and its β = 1 − ᾱ_t/ᾱ_{t−1} (≈ 1e-3) loses ~3 digits to the
    # cancellation (2e-4 relative observed), so compare what sampling reads, ᾱ: a float32 cumprod
    # of 1000 factors carries ≲ 1000 ulps (6e-5 relative) — atol 1e-5 on values in [0, 1]
    np.testing.assert_allclose(s.alphas_cumprod, sched.alphas_cumprod.to(torch.float64).numpy(), rtol=0, atol=1e-5)
    assert float(sched.alphas_cumprod[-1]) == s.alphas_cumprod[-1] == 0.0
    assert s.zero_terminal_snr and not hasattr(s, "sampling_defaults")
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        Schedule.from_diffusers(sched)  # fastddpm.sample's path still refuses it, naming the setting
