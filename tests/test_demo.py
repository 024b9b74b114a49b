"""`fastddpm demo --budget ci` end to end, and the figures of fastddpm.plots."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.image as mpimg  # noqa: E402

from fastddpm import Schedule, plots  # noqa: E402
from fastddpm.cli import main  # noqa: E402
from fastddpm.demo import FIGURES, SAMPLERS  # noqa: E402

NAMES = tuple(f"{s}-{k}" for s, k in SAMPLERS)  # ("ddpm-1000", "dpmpp2m-sde-20")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path, min_size=(200, 200)):
    """A decodable PNG with drawn content: not blank, not one flat colour."""
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert h >= min_size[0] and w >= min_size[1], (path, img.shape)
    rgb = img[..., :3].astype(np.float64)
    # Content: a fair share of non-white pixels and real variation between pixels.
    non_white = (rgb.min(axis=-1) < 0.9).mean()
    assert non_white > 0.01, (path, non_white)
    assert rgb.var() > 1e-3, (path, rgb.var())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", "--budget", "ci", "--out", str(out), "--distill"])
    return out, code, stdout.getvalue(), stderr.getvalue()


def test_demo_ci_writes_everything(demo_run):
    out, code, stdout, stderr = demo_run
    assert code == 0, stderr
    assert stdout.strip() == str(out / "report.md")       # the one result on stdout
    assert str(out) in stderr and "report.md" in stderr    # and it says where everything is
    for name in FIGURES:
        assert_real_png(out / f"{name}.png")
    for f in ("model/config.json", "constant_model/config.json", "metrics.json",
              *(f"samples_{name}.npy" for name in NAMES)):
        assert (out / f).is_file(), f
    assert not list(out.glob(".tmp-*")), "temporary files left behind"


def test_demo_samples_and_metrics(demo_run):
    out, code, _, _ = demo_run
    assert code == 0
    info = json.loads((out / "metrics.json").read_text())
    m = info["metrics"]
    assert set(m) == set(NAMES) | {"student-4", "student-2"} and NAMES[0] == "ddpm-1000" and len(NAMES) == 2
    assert np.isfinite(info["constant"]["mean"]) and info["constant"]["std"] >= 0
    for name in NAMES:
        x = np.load(out / f"samples_{name}.npy")
        assert x.shape == (1000, 2) and x.dtype == np.float32 and np.isfinite(x).all()
        # Samples are in data space: the butterfly spans roughly [-3, 3] on both axes.
        assert 1.0 < np.abs(x).max() < 10.0
        assert set(m[name]) == {"sliced_wasserstein", "sw_baseline", "sw_ratio", "precision", "recall",
                                "support_p50", "support_p90"}
        assert all(np.isfinite(v) for v in m[name].values())
        assert m[name]["sw_ratio"] == pytest.approx(m[name]["sliced_wasserstein"] / m[name]["sw_baseline"])
    # The two samplers drew different numbers (not one array saved twice).
    assert not np.array_equal(np.load(out / f"samples_{NAMES[0]}.npy"), np.load(out / f"samples_{NAMES[1]}.npy"))


def test_demo_report_links_every_figure_and_has_the_table(demo_run):
    out, _, _, _ = demo_run
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(links) == sorted(f"{n}.png" for n in FIGURES)
    for link in links:
        assert (out / link).is_file()
    info = json.loads((out / "metrics.json").read_text())
    for row in NAMES:
        line = next(l for l in report.splitlines() if l.startswith(f"| {row} |"))
        assert f"{info['metrics'][row]['sliced_wasserstein']:.4f}" in line


def test_demo_distill_shows_the_student_beside_the_teacher_samplers(demo_run):
    """--distill (off by default: the 3-minute budget) adds the 4-step student at 4 and 2 steps; the
    module's run uses it, so the rest of the demo is checked with the student in place."""
    from fastddpm.demo import run_demo
    import inspect

    assert inspect.signature(run_demo).parameters["distill"].default is False
    out = demo_run[0]
    info = json.loads((out / "metrics.json").read_text())
    assert info["student"]["sampling"]["steps"] == 4 and info["timings_s"]["distill_s"] > 0
    assert (out / "student" / "config.json").is_file()
    for name in ("student-4", "student-2"):
        x = np.load(out / f"samples_{name}.npy")
        assert x.shape == (1000, 2) and np.isfinite(x).all() and 1.0 < np.abs(x).max() < 10.0
    report = (out / "report.md").read_text()
    assert "| student-4 |" in report and "| student-2 |" in report and "(student/)" in report
    assert not np.array_equal(np.load(out / "samples_student-4.npy"), np.load(out / "samples_student-2.npy"))


# ----------------------------------------------------------------------------- plots alone


def _butterfly(n=3000):
    from fastddpm.data import load_dataset

    return load_dataset("butterfly", n, seed=3).x


def test_plot_schedules_and_forward_kinds(tmp_path):
    s = Schedule.linear(200)
    assert plots.plot_schedules(tmp_path / "s.png", num_steps=200) == str(tmp_path / "s.png")
    assert_real_png(tmp_path / "s.png")
    plots.plot_forward(tmp_path / "f2.png", s, _butterfly(), [0, 20, 199])
    assert_real_png(tmp_path / "f2.png")
    plots.plot_forward(tmp_path / "f1.png", s, np.random.default_rng(0).normal(3, 1, (2000, 1)).astype(np.float32),
                       [0, 100, 199])
    assert_real_png(tmp_path / "f1.png")
    imgs = np.random.default_rng(0).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    plots.plot_forward(tmp_path / "fi.png", s, imgs, [10, 199])
    assert_real_png(tmp_path / "fi.png")


def test_forward_panels_use_q_sample(tmp_path, monkeypatch):
    # The figure draws what fastddpm.q_sample returns for each t (not a re-implementation).
    import fastddpm.ops

    calls = []
    real = fastddpm.ops.q_sample

    def spy(schedule, x0, t, *a, **k):
        calls.append(np.unique(t).tolist())
        return real(schedule, x0, t, *a, **k)

    monkeypatch.setattr(fastddpm.ops, "q_sample", spy)
    plots.plot_forward(tmp_path / "f.png", Schedule.linear(100), _butterfly(500), [5, 50, 99])
    assert calls == [[5], [50], [99]]


def test_plot_errors(tmp_path):
    s = Schedule.linear(10)
    with pytest.raises(ValueError, match=r"ts: every t must be in \[0, 10\)"):
        plots.plot_forward(tmp_path / "x.png", s, _butterfly(10), [10])
    with pytest.raises(ValueError, match="cannot plot samples of shape"):
        plots.plot_samples(tmp_path / "x.png", {"a": np.zeros((5, 3, 2, 2, 2))})
    with pytest.raises(ValueError, match="losses is empty"):
        plots.plot_loss(tmp_path / "x.png", [])
    assert not list(tmp_path.iterdir()), "a failed plot left a file"


def test_save_is_atomic(tmp_path, monkeypatch):
    # A failure while writing leaves neither a partial PNG under the final name nor a temp file.
    import matplotlib.figure

    target = tmp_path / "loss.png"
    target.write_bytes(b"old")

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_loss(target, [1.0, 0.5])
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
