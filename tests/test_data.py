"""Datasets: shapes, dtypes, normalisation, geometry against closed forms, user .npy files."""
import numpy as np
import pytest

from fastddpm.data import DATASETS, Dataset, Normalization, butterfly_curve, load_dataset

SHAPES = {"constant": (1,), "gaussian": (1,), "butterfly": (2,), "moons": (2,), "swissroll": (2,),
          "checkerboard": (2,), "8gaussians": (2,), "digits": (1, 8, 8)}


@pytest.mark.parametrize("name", DATASETS)
def test_shape_dtype_and_normalisation(name):
    if name == "digits":
        pytest.importorskip("sklearn")
    ds = load_dataset(name, 500, seed=1)
    assert ds.x.shape == (500, *SHAPES[name]) and ds.x.dtype == np.float32
    assert ds.sample_shape == SHAPES[name] and len(ds) == 500
    raw = ds.raw()
    np.testing.assert_allclose(ds.normalization.normalize(raw), ds.x, atol=1e-6)
    if name == "digits":
        return
    if name == "constant":
        np.testing.assert_array_equal(raw, 5.0)
        np.testing.assert_array_equal(ds.x, 0.0)
        assert ds.normalization.std.tolist() == [1.0] and ds.normalization.mean.tolist() == [5.0]
    else:  # per-feature standardisation of the training data
        np.testing.assert_allclose(ds.x.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(ds.x.std(0), 1.0, atol=1e-5)
        np.testing.assert_allclose(ds.normalization.mean, raw.mean(0), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", [d for d in DATASETS if d != "digits"])
def test_seeded(name):
    a, b = load_dataset(name, 200, seed=3), load_dataset(name, 200, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    if name != "constant":
        assert not np.array_equal(a.x, load_dataset(name, 200, seed=4).x)


def test_gaussian_moments():
    raw = load_dataset("gaussian", 20000, seed=0).raw()
    assert abs(raw.mean() - 3.0) < 0.03 and abs(raw.std() - 1.0) < 0.02


def test_butterfly_points_lie_on_the_curve():
    raw = load_dataset("butterfly", 2000, seed=0, noise=0.0).raw().astype(np.float64)
    # p = r(θ)·(sin θ, cos θ) with θ ∈ [0, 2π); r may be negative, so θ is atan2(x, y) or that + π.
    base = np.arctan2(raw[:, 0], raw[:, 1])
    dist = np.min([np.linalg.norm(butterfly_curve(np.mod(base + s, 2 * np.pi)) - raw, axis=1)
                   for s in (0.0, np.pi)], axis=0)
    # float32 storage moves a point by ~1e-7·|p|; recovering θ by atan2 amplifies that near the
    # origin by |dr/dθ|/|p| (measured max 1.2e-5). Noise of 0.01 would give ~1e-2.
    assert dist.max() < 1e-4
    # the closed form itself (independent of butterfly_curve)
    th = np.array([0.3, 2.0, 5.5])
    r = np.exp(np.cos(th)) - 2 * np.cos(4 * th) + np.sin(th / 12) ** 5
    np.testing.assert_allclose(butterfly_curve(th), np.stack([r * np.sin(th), r * np.cos(th)], 1))


def test_butterfly_noise_spreads_points():
    raw = load_dataset("butterfly", 2000, seed=0, noise=0.1).raw()
    assert raw.std() > load_dataset("butterfly", 2000, seed=0, noise=0.0).raw().std()


def test_toy_geometry_without_noise():
    m = load_dataset("moons", 1000, noise=0.0).raw().astype(np.float64)
    d_upper = np.abs(np.hypot(m[:, 0], m[:, 1]) - 1)
    d_lower = np.abs(np.hypot(m[:, 0] - 1, m[:, 1] - 0.5) - 1)
    assert np.minimum(d_upper, d_lower).max() < 1e-5
    g = load_dataset("8gaussians", 1000, noise=0.0).raw().astype(np.float64)
    angles = np.mod(np.arctan2(g[:, 1], g[:, 0]), 2 * np.pi) / (np.pi / 4)
    np.testing.assert_allclose(np.hypot(g[:, 0], g[:, 1]), 2.0, atol=1e-5)
    np.testing.assert_allclose(angles, np.round(angles), atol=1e-5)
    assert len(np.unique(np.round(angles) % 8)) == 8
    c = load_dataset("checkerboard", 2000, noise=0.0).raw()
    assert np.all((np.floor(c[:, 0] / 2) + np.floor(c[:, 1] / 2)) % 2 == 0)
    assert c.min() >= -4 and c.max() <= 4
    s = load_dataset("swissroll", 1000, noise=0.0).raw().astype(np.float64)
    radius = np.hypot(s[:, 0], s[:, 1])  # = t, and the angle is t mod 2π
    np.testing.assert_allclose(np.cos(radius), s[:, 0] / radius, atol=1e-4)


def test_digits_scaled_to_unit_range():
    sklearn = pytest.importorskip("sklearn.datasets")
    ds = load_dataset("digits")
    images = sklearn.load_digits().images
    assert ds.x.shape == (images.shape[0], 1, 8, 8)
    np.testing.assert_allclose(ds.x[:, 0], images / 8.0 - 1.0, atol=1e-6)
    assert ds.x.min() == -1.0 and ds.x.max() == 1.0
    np.testing.assert_allclose(ds.raw()[:, 0], images, atol=1e-5)
    assert load_dataset("digits", 10).x.shape == (10, 1, 8, 8)
    with pytest.raises(ValueError, match="n must be <= 1797"):
        load_dataset("digits", 5000)


def test_user_npy(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal([1.0, -2.0, 10.0], [0.5, 2.0, 3.0], size=(300, 3))
    path = tmp_path / "mine.npy"
    np.save(path, arr)
    ds = load_dataset(str(path))
    assert ds.x.shape == (300, 3) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.normalization.mean, arr.mean(0))
    np.testing.assert_allclose(ds.normalization.std, arr.std(0))
    np.testing.assert_allclose(ds.raw(), arr, rtol=1e-5, atol=1e-5)
    assert load_dataset(str(path), 50).x.shape == (50, 3)
    images = rng.normal(size=(20, 1, 4, 4))
    np.save(tmp_path / "img.npy", images)
    img = load_dataset(str(tmp_path / "img.npy"))
    assert img.normalization.mean.shape == (1, 1, 1)  # one scalar for image-like arrays


def test_user_npy_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(ValueError, match=r"shape \[n, \.\.\.\]"):
        load_dataset(str(tmp_path / "flat.npy"))
    np.save(tmp_path / "nan.npy", np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="NaN"):
        load_dataset(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickles"):
        load_dataset(str(tmp_path / "obj.npy"))
    np.save(tmp_path / "small.npy", np.zeros((5, 2)))
    with pytest.raises(ValueError, match="only 5"):
        load_dataset(str(tmp_path / "small.npy"), 6)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(name="spiral", n=10), ValueError, "unknown dataset 'spiral'.*butterfly"),
    (dict(name="butterfly", n=0), ValueError, "n must be"),
    (dict(name="butterfly", n=None), ValueError, "n must be"),
    (dict(name="butterfly", n=10, noise=-1.0), ValueError, "noise"),
    (dict(name="constant", n=10, noise=0.5), ValueError, "noise is not supported"),
    (dict(name="gaussian", n=10, seed=-1), ValueError, "seed"),
    (dict(name=3, n=10), TypeError, "string"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        load_dataset(kwargs.pop("name"), kwargs.pop("n"), **kwargs)


def test_normalization_round_trips():
    norm = Normalization(np.array([1.0, -2.0]), np.array([0.5, 4.0]))
    back = Normalization.from_config(norm.to_config())
    assert back == norm
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-6)
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(norm.normalize(xt).numpy(), norm.normalize(x), atol=1e-6)
    with pytest.raises(ValueError, match="std"):
        Normalization(np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="normalization"):
        Normalization.from_config({"shape": [3], "mean": [0.0], "std": [1.0]})


def test_dataset_config_round_trip():
    ds = load_dataset("butterfly", 100, seed=7, noise=0.02)
    again = Dataset.from_config(ds.to_config())
    np.testing.assert_array_equal(again.x, ds.x)
    assert again.normalization == ds.normalization and again.to_config() == ds.to_config()
