"""Conditional training (issue 25): labelled data sets, the label embedding, label dropout, the
checkpoint's label set, resume, and the errors that name the argument."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.data import LABELLED, load_dataset
from fastddpm.nets import ResMLP, UNet
from fastddpm.training import DEFAULT_LABEL_DROPOUT, drop_labels, fresh_batch, train

# sha256[:16] of load_dataset(name, 1000, seed=3).x computed by the code before labels existed
# (branch i23): the labels come from the same draws, the points do not change.
POINTS_BEFORE_LABELS = {"moons": "f5c11300238d2a4b", "checkerboard": "537abd4c7b1568cb",
                        "8gaussians": "a4d82c537890cc26", "butterfly": "875f4a9077cded78",
                        "swissroll": "dfb7c04da1587996"}


@pytest.mark.parametrize("name", list(POINTS_BEFORE_LABELS))
def test_points_unchanged_by_labels(name):
    d = load_dataset(name, 1000, seed=3)
    assert hashlib.sha256(d.x.tobytes()).hexdigest()[:16] == POINTS_BEFORE_LABELS[name]
    assert (d.labels is None) == (name not in LABELLED)


def test_toy_labels_match_the_geometry():
    g = load_dataset("8gaussians", 4000, seed=1)
    raw = g.raw()
    angles = np.arange(8) * np.pi / 4
    centers = 2 * np.stack([np.cos(angles), np.sin(angles)], 1)
    np.testing.assert_array_equal(np.argmin(((raw[:, None] - centers[None]) ** 2).sum(-1), 1), g.labels)
    c = load_dataset("checkerboard", 4000, seed=1)
    raw = c.raw()
    column = np.floor(raw[:, 0] / 2).astype(int) + 2
    row = np.floor(raw[:, 1] / 2).astype(int) + 2
    np.testing.assert_array_equal(c.labels // 2, column)
    # the two filled squares of a column: rows (column parity) and (column parity) + 2; label parity = upper one
    np.testing.assert_array_equal(c.labels % 2, (row >= 2).astype(int))
    assert sorted(set(zip(column, row))) == [(col, r) for col in range(4) for r in (col % 2, col % 2 + 2)]
    m = load_dataset("moons", 4000, seed=1, noise=0.0)
    raw = m.raw()
    upper = m.labels == 0
    # raw() comes back through the float32 model-space data: 1e-6 is a few float32 ulps at |x| ≤ 2
    np.testing.assert_allclose(np.hypot(raw[upper, 0], raw[upper, 1]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.hypot(raw[~upper, 0] - 1.0, raw[~upper, 1] - 0.5), 1.0, atol=1e-6)
    assert g.label_counts() == np.bincount(g.labels, minlength=8).tolist()


def test_digits_labels_are_the_targets():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    np.testing.assert_array_equal(d.labels, load_digits().target)
    assert d.num_classes == 10


def test_fresh_batches_keep_their_points_and_carry_labels():
    d = load_dataset("8gaussians", 100, seed=0)
    x0, t = fresh_batch(d, 3, 17, 64, 1000)
    x1, t1, y = fresh_batch(d, 3, 17, 64, 1000, labels=True)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(t, t1)
    assert y.shape == (64,) and y.dtype == np.int64


def test_label_dropout_is_a_pure_function_of_seed_and_iteration():
    y = np.arange(20000) % 8
    a = drop_labels(y, 5, 11, 0.1, 8)
    np.testing.assert_array_equal(a, drop_labels(y, 5, 11, 0.1, 8))
    assert not np.array_equal(a, drop_labels(y, 5, 12, 0.1, 8))
    dropped = a == 8
    np.testing.assert_array_equal(a[~dropped], y[~dropped])
    # Binomial(20000, 0.1): 2000 ± 42 (sd); 5 sd
    assert abs(int(dropped.sum()) - 2000) <= 5 * 42.5
    assert DEFAULT_LABEL_DROPOUT == 0.1


def test_conditional_nets_start_as_their_unconditional_selves():
    """The label table starts at zero, so a fresh conditional net equals the unconditional net of the
    same seed; labels None is "no label"; the shared-t broadcast holds with and without labels."""
    torch.manual_seed(0)
    plain = ResMLP(dim=2, width=16, depth=1)
    torch.manual_seed(0)
    cond = ResMLP(dim=2, width=16, depth=1, num_classes=3)
    assert cond.num_classes == 3 and cond.null_label == 3 and cond.config["num_classes"] == 3
    assert "num_classes" not in plain.config
    x, t = torch.randn(5, 2), torch.tensor([7]).expand(5)
    with torch.no_grad():
        cond.label_embed.table.weight.normal_()
        torch.testing.assert_close(cond(x, t), cond(x, t, torch.full((5,), 3)))
        per_sample = cond(x, torch.full((5,), 7), torch.arange(5) % 4)
        torch.testing.assert_close(cond(x, t, torch.arange(5) % 4), per_sample)
    u = UNet(base_channels=8, num_classes=10)
    with torch.no_grad():
        out = u(torch.randn(3, 1, 8, 8), torch.tensor([1]).expand(3), torch.tensor([0, 10, 4]))
    assert out.shape == (3, 1, 8, 8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "g8"
    result = train("8gaussians", out, conditional=True, iters=40, batch_size=64, progress=False)
    return out, result


def test_checkpoint_records_the_label_set(tiny):
    out, result = tiny
    config = json.loads((out / "config.json").read_text())
    assert config["labels"]["num_classes"] == 8 and config["labels"]["null_label"] == 8
    assert config["labels"]["label_dropout"] == 0.1
    assert config["labels"]["counts"] == load_dataset("8gaussians", 10_000, seed=0).label_counts()
    assert config["model"]["kwargs"]["num_classes"] == 8
    assert config["train"]["conditional"] == {"num_classes": 8, "null_label": 8, "label_dropout": 0.1}
    ckpt = fastddpm.load(out)
    assert ckpt.labels.num_classes == 8 and ckpt.model.label_counts == tuple(config["labels"]["counts"])
    x, y = fastddpm.Pipeline.from_checkpoint(out).sample(16, labels="frequencies", steps=5, sampler="dpmpp2m",
                                                          progress=False, engine="torch")
    assert x.shape == (16, 2) and y.min() >= 0 and y.max() < 8


def test_conditional_resume_equals_uninterrupted(tmp_path):
    """The label-dropout draws are a pure function of (seed, it): 25 + 15 iterations equal 40 bit for bit."""
    kw = dict(conditional=True, batch_size=64, progress=False, lr_schedule="constant", lr_warmup=0)
    whole = train("8gaussians", None, iters=40, **kw)
    part = tmp_path / "part"
    train("8gaussians", part, iters=25, **kw)
    resumed = train("8gaussians", part, iters=40, resume=True, **kw)
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"cannot resume .*conditional"):
        train("8gaussians", part, iters=45, resume=True, **{**kw, "label_dropout": 0.2})


def test_npy_with_a_labels_file_via_the_cli(tmp_path):
    from fastddpm.cli import main

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.standard_normal((300, 2)) + 3 * y[:, None]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert main(["train", "--dataset", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--conditional",
                 "--out", str(tmp_path / "c"), "--iters", "5", "--batch-size", "32", "--quiet"]) == 0
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["labels"]["counts"] == np.bincount(y).tolist() and config["labels"]["num_classes"] == 3


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"conditional=True needs labels: dataset 'butterfly' has none \(labelled: "
                                         r"digits, 8gaussians, moons, checkerboard"):
        train("butterfly", None, conditional=True, iters=1, progress=False)
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    np.save(tmp_path / "y.npy", np.zeros(9, np.int64))
    with pytest.raises(ValueError, match=r"labels \(a labels file\) is given but conditional=False"):
        train(str(tmp_path / "x.npy"), None, labels=str(tmp_path / "y.npy"), iters=1, progress=False)
    with pytest.raises(ValueError, match=r"labels file .*y\.npy' has shape \[9\], expected \[10\]"):
        train(str(tmp_path / "x.npy"), None, labels=str(tmp_path / "y.npy"), conditional=True, iters=1,
              progress=False)
    with pytest.raises(ValueError, match=r"net='MLP' has no label embedding"):
        train("moons", None, conditional=True, net="MLP", iters=1, progress=False)
    with pytest.raises(ValueError, match=r"label_dropout must be a number in \[0, 1\)"):
        train("moons", None, conditional=True, label_dropout=1.0, iters=1, progress=False)
    from fastddpm.cli import main

    with pytest.raises(ValueError, match=r"--labels FILE needs --conditional"):
        main(["train", "--dataset", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "--out",
              str(tmp_path / "o"), "--debug"])
