"""Schedule tables against closed forms written out here with Python floats and math.*."""
import json
import math

import numpy as np
import pytest

from fastddpm import Schedule
from fastddpm.schedule import TABLE_NAMES

TOL = 1e-12


def _grid(T):
    return [i / (T - 1) if T > 1 else 0.0 for i in range(T)]


def closed_form_betas(name, T, **p):
    if name == "linear":
        bs, be = p.get("beta_start", 1e-4), p.get("beta_end", 0.02)
        return [bs + (be - bs) * u for u in _grid(T)]
    if name == "quadratic":
        bs, be = p.get("beta_start", 1e-4), p.get("beta_end", 0.02)
        return [(math.sqrt(bs) + (math.sqrt(be) - math.sqrt(bs)) * u) ** 2 for u in _grid(T)]
    if name == "sigmoid":
        bs, be = p.get("beta_start", 1e-4), p.get("beta_end", 0.02)
        return [1.0 / (1.0 + math.exp(-(-6.0 + 12.0 * u))) * (be - bs) + bs for u in _grid(T)]
    if name == "cosine":
        s, lo, hi = p.get("s", 0.008), p.get("min_beta", 0.0), p.get("max_beta", 0.999)
        f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        return [min(max(1 - f(t + 1) / f(t), lo), hi) for t in range(T)]
    raise AssertionError(name)


def closed_form_tables(betas):
    """Every table from the design's formulas, one Python float at a time."""
    T = len(betas)
    ab, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        ab.append(prod)
    abp = [1.0] + ab[:-1]
    pv = [betas[i] * (1 - abp[i]) / (1 - ab[i]) for i in range(T)]
    return {
        "betas": betas,
        "alphas": [1 - b for b in betas],
        "alphas_cumprod": ab,
        "alphas_cumprod_prev": abp,
        "sqrt_alphas_cumprod": [math.sqrt(a) for a in ab],
        "sqrt_one_minus_alphas_cumprod": [math.sqrt(1 - a) for a in ab],
        "sqrt_recip_alphas_cumprod": [1 / math.sqrt(a) for a in ab],
        "sqrt_recipm1_alphas_cumprod": [math.sqrt(1 / a - 1) for a in ab],
        "posterior_variance": pv,
        "posterior_log_variance_clipped": [math.log(pv[1] if i == 0 else pv[i]) for i in range(T)],
        "posterior_mean_coef1": [betas[i] * math.sqrt(abp[i]) / (1 - ab[i]) for i in range(T)],
        "posterior_mean_coef2": [(1 - abp[i]) * math.sqrt(1 - betas[i]) / (1 - ab[i]) for i in range(T)],
        "snr": [a / (1 - a) for a in ab],
    }


def assert_tables(sched, betas):
    expected = closed_form_tables(betas)
    assert set(expected) == set(TABLE_NAMES)
    for key in TABLE_NAMES:
        got = getattr(sched, key)
        assert got.dtype == np.float64 and got.shape == (len(betas),), key
        np.testing.assert_allclose(got, expected[key], rtol=TOL, atol=0, err_msg=key)


NAMED = [
    ("linear", {}), ("linear", {"beta_start": 1e-3, "beta_end": 0.05}),
    ("cosine", {}), ("cosine", {"s": 0.02, "max_beta": 0.5}),
    ("quadratic", {}), ("quadratic", {"beta_start": 8.5e-4, "beta_end": 0.012}),
    ("sigmoid", {}), ("sigmoid", {"beta_start": 1e-3, "beta_end": 0.03}),
]


@pytest.mark.parametrize("T", [2, 10, 1000])
@pytest.mark.parametrize("name,params", NAMED)
def test_named_schedules_match_closed_forms(name, params, T):
    sched = Schedule.create(name, T, **params)
    assert sched.num_steps == len(sched) == T
    assert_tables(sched, closed_form_betas(name, T, **params))
    # the named constructor gives the same schedule
    assert getattr(Schedule, name)(T, **params) == sched


def test_from_betas_matches_closed_form():
    rng = np.random.default_rng(0)
    betas = np.sort(rng.uniform(1e-5, 0.3, size=257))
    assert_tables(Schedule.from_betas(betas), [float(b) for b in betas])


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "sigmoid"])
def test_alphas_cumprod_decreasing_in_unit_interval(name):
    ab = Schedule.create(name, 1000).alphas_cumprod
    assert np.all(np.diff(ab) < 0)
    assert 0 < ab[-1] and ab[0] < 1


def test_single_step_schedule():
    sched = Schedule.linear(1)
    assert sched.num_steps == 1
    assert sched.betas[0] == 1e-4
    assert sched.alphas_cumprod_prev[0] == 1.0


def test_tables_are_read_only():
    sched = Schedule.cosine(50)
    for key in TABLE_NAMES:
        with pytest.raises(ValueError, match="read-only"):
            getattr(sched, key)[0] = 0.5


def test_equality_hash_and_repr():
    a, b, c = Schedule.linear(100), Schedule.create("linear", 100), Schedule.linear(100, beta_end=0.03)
    assert a == b and hash(a) == hash(b)
    assert a != c and a != Schedule.quadratic(100)
    assert a == Schedule.from_betas(a.betas)  # equality is by betas
    assert a != "linear"
    assert repr(a) == "Schedule.linear(num_steps=100, beta_start=0.0001, beta_end=0.02)"
    assert repr(Schedule.cosine(10)) == "Schedule.cosine(num_steps=10, s=0.008, min_beta=0.0, max_beta=0.999)"
    assert repr(Schedule.from_betas([0.1, 0.2])) == "Schedule.from_betas(<2 betas in [0.1, 0.2]>)"


@pytest.mark.parametrize("sched", [Schedule.linear(10), Schedule.cosine(20, s=0.01),
                                   Schedule.sigmoid(7, beta_end=0.05), Schedule.from_betas([0.1, 0.25, 0.5])])
def test_config_round_trip_through_json(sched):
    config = json.loads(json.dumps(sched.to_config()))
    back = Schedule.from_config(config)
    assert back == sched and repr(back) == repr(sched)
    np.testing.assert_array_equal(back.alphas_cumprod, sched.alphas_cumprod)


def test_tables_cache_numpy_dtype():
    sched = Schedule.linear(10)
    t32 = sched.tables(dtype=np.float32)
    assert t32["alphas_cumprod"].dtype == np.float32
    assert sched.tables(dtype=np.float32) is t32
    np.testing.assert_array_equal(t32["betas"], sched.betas.astype(np.float32))


def test_tables_cache_torch():
    torch = pytest.importorskip("torch")
    sched = Schedule.linear(10)
    tab = sched.tables("cpu")
    assert tab["alphas_cumprod"].dtype == torch.float32 and sched.tables("cpu") is tab
    tab64 = sched.tables(torch.device("cpu"), torch.float64)
    np.testing.assert_array_equal(tab64["snr"].numpy(), sched.snr)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: Schedule.create("exponential", 10), ValueError, "unknown schedule 'exponential'; allowed: linear, cosine"),
    (lambda: Schedule.linear(0), ValueError, "num_steps must be an integer T >= 1, got 0"),
    (lambda: Schedule.linear(-5), ValueError, "num_steps must be an integer T >= 1"),
    (lambda: Schedule.linear(10.0), ValueError, "num_steps must be an integer"),
    (lambda: Schedule.linear(True), ValueError, "num_steps must be an integer"),
    (lambda: Schedule.linear(10, beta_end=1.0), ValueError, r"beta_end must lie in \(0, 1\), got 1.0"),
    (lambda: Schedule.quadratic(10, beta_start=0.0), ValueError, r"beta_start must lie in \(0, 1\)"),
    (lambda: Schedule.sigmoid(10, beta_start=float("nan")), ValueError, "beta_start must be finite"),
    (lambda: Schedule.cosine(10, max_beta=1.0), ValueError, r"max_beta must lie in \(0, 1\)"),
    (lambda: Schedule.cosine(10, s=-0.1), ValueError, "s must be >= 0"),
    (lambda: Schedule.cosine(10, min_beta=0.999), ValueError, r"min_beta must lie in \[0, max_beta\)"),
    (lambda: Schedule.create("linear", 10, s=0.1), TypeError, r"unknown parameter\(s\) \['s'\] for the 'linear'"),
    (lambda: Schedule.from_betas([0.1, 1.0]), ValueError, r"betas must lie in \(0, 1\); betas\[1\] = 1.0"),
    (lambda: Schedule.from_betas([0.0, 0.1]), ValueError, r"betas\[0\] = 0.0"),
    (lambda: Schedule.from_betas([0.1, float("nan")]), ValueError, r"betas\[1\] = nan"),
    (lambda: Schedule.from_betas([]), ValueError, r"at least one step \(T >= 1\)"),
    (lambda: Schedule.from_betas([[0.1, 0.2]]), ValueError, "betas must be 1-D"),
    (lambda: Schedule.from_betas("abc"), TypeError, "betas must be a 1-D array of floats"),
    (lambda: Schedule.from_config({"name": "nope", "num_steps": 3}), ValueError, "unknown schedule 'nope' in config"),
])
def test_bad_parameters(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_schedule_tables_match_reference():
    """kernels.coefficients.schedule_tables (what Schedule uses) against the NumPy oracle."""
    from fastddpm.kernels import coefficients as KC
    from fastddpm.kernels import reference as R

    for betas in (R.betas_cosine(1000), R.betas_sigmoid(17), np.array([0.3, 0.01])):
        got, ref = KC.schedule_tables(betas), R.schedule_tables(betas)
        assert set(got) == set(ref)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-14, atol=0, err_msg=key)
