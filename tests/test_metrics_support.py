"""fastddpm.metrics against closed forms: distance to the support, Fréchet distance, digit scores."""
import numpy as np
import pytest

from fastddpm import metrics
from fastddpm.data import butterfly_curve, load_dataset


def test_points_on_the_butterfly_curve_are_at_zero():
    theta = np.random.default_rng(0).uniform(0, 2 * np.pi, 2000)
    d = metrics.support_distance(butterfly_curve(theta), "butterfly")
    assert d.max() < 1e-6


def test_known_offset_along_the_normal_gives_that_distance():
    # Move points along the curve normal by δ; for δ below the local radius of curvature and the
    # distance to other branches the distance is δ. Keep points whose nearest other branch is far.
    theta = np.random.default_rng(1).uniform(0.2, 2 * np.pi - 0.2, 4000)
    p = butterfly_curve(theta)
    h = 1e-6
    tangent = (butterfly_curve(theta + h) - butterfly_curve(theta - h)) / (2 * h)
    second = (butterfly_curve(theta + h) - 2 * p + butterfly_curve(theta - h)) / h**2
    speed = np.linalg.norm(tangent, axis=1)
    curvature = np.abs(tangent[:, 0] * second[:, 1] - tangent[:, 1] * second[:, 0]) / speed**3
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) / speed[:, None]
    delta = 0.01
    moved = p + delta * normal
    # the offset point's nearest curve point is its foot unless another branch passes closer
    dense = butterfly_curve(np.linspace(0, 2 * np.pi, 400_000))
    from scipy.spatial import cKDTree

    others = cKDTree(dense).query_ball_point(moved, r=3 * delta)
    isolated = np.array([len(o) > 0 and np.ptp([i for i in o]) < 2000 for o in others]) & (curvature * delta < 0.1)
    assert isolated.sum() > 1000
    d = metrics.support_distance(moved[isolated], "butterfly")
    np.testing.assert_allclose(d, delta, rtol=2e-3)


def test_other_supports_closed_form():
    # moons: (−1.5, 0) is 0.5 left of the upper arc's end (−1, 0) (the lower circle is 1.55 away);
    # (1, −0.8) is 0.3 below the lower arc's bottom (1, −0.5)
    d = metrics.support_distance(np.array([[-1.5, 0.0], [1.0, -0.5 - 0.3]]), "moons")
    np.testing.assert_allclose(d, [0.5, 0.3], atol=1e-6)
    # swissroll: the spiral at t = 2π is (2π, 0) with tangent (1, 2π); 0.5 along the outward normal
    normal = np.array([2 * np.pi, -1.0]) / np.hypot(2 * np.pi, 1.0)
    np.testing.assert_allclose(metrics.support_distance(np.array([[2 * np.pi, 0.0]]) + 0.5 * normal, "swissroll"),
                               0.5, atol=1e-6)
    # checkerboard: inside a square 0, else the box distance; scaled column [−4, −2) holds rows [0, 2) and
    # [−4, −2), column [2, 4) rows [2, 4) and [−2, 0)
    d = metrics.support_distance(np.array([[-3.0, 1.0], [-3.0, 2.5], [9.0, -1.0]]), "checkerboard")
    np.testing.assert_allclose(d, [0.0, 0.5, 5.0])
    np.testing.assert_allclose(metrics.support_distance(np.array([[2.0, 0.0], [0.0, 0.0]]), "8gaussians"), [0, 2])
    np.testing.assert_allclose(metrics.support_distance(np.array([[5.25]]), "constant"), [0.25])
    for name in ("moons", "checkerboard", "8gaussians", "swissroll"):  # noise-free data lies on the support
        x = load_dataset(name, 500, seed=3, noise=0.0).raw()
        assert metrics.support_distance(x, name).max() < 1e-4, name


def test_support_quantiles_and_errors():
    q = metrics.support_quantiles(np.array([[5.0]] * 9 + [[6.0]]), "constant")
    assert q["p50"] == 0.0 and q["mean"] == pytest.approx(0.1) and q["p99"] == pytest.approx(0.91)
    assert q["p99.9"] == pytest.approx(0.991) and q["far"] == pytest.approx(0.1)  # one point of ten is 1.0 out
    assert metrics.support_quantiles(np.array([[5.0], [5.5], [5.6]]), "constant")["far"] == pytest.approx(1 / 3)
    assert metrics.quantile_key(0.5) == "p50" and metrics.quantile_key(0.999) == "p99.9"
    with pytest.raises(ValueError, match="dataset must be one of"):
        metrics.support_distance(np.zeros((3, 2)), "gaussian")
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        metrics.support_distance(np.zeros((3, 1)), "butterfly")


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 3))
    # same covariance, mean shifted by m: ‖m‖²; b = 2a: ‖μ‖² + tr(Σ + 4Σ − 2·2Σ) = ‖μ‖² + tr Σ
    assert metrics.frechet_distance(a, a + [1.0, 2.0, 0.0]) == pytest.approx(5.0, rel=1e-6)
    want = (a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert metrics.frechet_distance(a, 2.0 * a) == pytest.approx(want, rel=1e-6)


def test_digit_scores_real_vs_noise():
    sklearn = pytest.importorskip("sklearn")
    real = load_dataset("digits").raw()
    s = metrics.digit_scores(real)
    assert s["confident"] > 0.9 and max(abs(h - 0.1) for h in s["class_hist"]) < 0.02
    assert s["frechet"] < 1e-6  # the same set against itself
    noise = metrics.digit_scores(np.random.default_rng(0).uniform(0, 16, (300, 1, 8, 8)))
    assert noise["confident"] < 0.05 and noise["frechet"] > 50 * s["frechet_floor"]
    with pytest.raises(ValueError, match="64 pixels"):
        metrics.digit_scores(np.zeros((3, 2)))
    assert sklearn


def test_digits_classifier_held_out():
    """The metric's classifier, fit on 70 % of the real digits: the held-out 30 % must be both
    classified right and called confident (else a ≥ 90 % target is out of reach for real data),
    uniform noise must not be (measured 0.993 / 0.974 / 0.000, bench/digits_sweep.py)."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.data / 16.0, d.target, test_size=0.3, random_state=0, stratify=d.target)
    clf = metrics.TemperatureOvRSVC().fit(xtr, ytr)
    proba = clf.predict_proba(xte)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    assert (clf.predict(xte) == proba.argmax(1)).all()
    assert (clf.predict(xte) == yte).mean() > 0.98
    assert (proba.max(1) >= metrics.CONFIDENCE).mean() > 0.95
    noise = np.random.default_rng(0).uniform(0, 1, (1000, 64))
    assert (clf.predict_proba(noise).max(1) >= metrics.CONFIDENCE).mean() < 0.02
    assert 0.0 < clf.temperature_ < 10.0


def test_sliced_wasserstein_equal_sizes_is_pots():
    """The equal-size closed form (sorted projections) equals POT's weighted quantile path on
    POT's own directions, for p = 1 and 2, 1-D to 64-D; unequal sizes still go through POT."""
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(0)
    for d, n in ((1, 50), (2, 300), (3, 7), (64, 200)):
        a, b = rng.standard_normal((n, d)), 1.5 * rng.standard_normal((n, d)) + 0.3
        for p in (1, 2):
            want = ot.sliced_wasserstein_distance(a, b, n_projections=40, p=p, seed=3)
            assert metrics.sliced_wasserstein(a, b, n_projections=40, seed=3, p=p) == pytest.approx(want, rel=1e-10)
    a, b = rng.standard_normal((30, 2)), rng.standard_normal((45, 2))
    assert metrics.sliced_wasserstein(a, b, 40, seed=1) == ot.sliced_wasserstein_distance(a, b, n_projections=40, seed=1)
    assert metrics.sliced_wasserstein(a, a, 40, seed=1) == 0.0
