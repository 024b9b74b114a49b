"""Labels of a sampling request (issue 25): drawn as a pure function of (seed, sample index), checked,
returned with the samples, and written beside a bulk file under the samples' rules.

The drawn labels are compared with kernels/reference.py's restatement (its own Philox words and
mapping); the bulk sidecar goes through the kill harness of tests/test_faults.py (a kill at every
crash point, including between the labels' rename and the samples', then a resume with another
batch size: byte-identical samples and labels).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastddpm
from fastddpm import _io
from fastddpm.kernels import reference as R
from fastddpm.kernels.numba import labels as KL
from fastddpm.labels import LabelSet, resolve
from fastddpm.sampling import bulk, sample

from _sampling_models import FailAt, GaussianClassEps
from test_faults import _listing, _occurrences, _run_killed_at, _trace

T = 20
N = 53


@pytest.fixture(scope="module")
def schedule():
    return fastddpm.Schedule.linear(T)


@pytest.fixture(scope="module")
def model(schedule):
    return GaussianClassEps(schedule, [[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]], 0.3)


KW = dict(sampler="ddpm", steps=5, seed=7, progress=False, backend="numpy", labels="balanced", guidance=2.0)


# -- drawing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 10, 1000])
@pytest.mark.parametrize("first", [0, 5, 2**33 + 3])
def test_balanced_equals_reference_and_is_balanced(k, first):
    got = KL.balanced(11, first, 250, k)
    np.testing.assert_array_equal(got, R.labels_balanced(11, first, 250, k))
    if k <= 10:
        start = -(-first // k) * k  # whole blocks: every label exactly once
        block = KL.balanced(11, start, 5 * k, k).reshape(5, k)
        assert (np.sort(block, axis=1) == np.arange(k)).all()


@pytest.mark.parametrize("weights", [[1, 1, 1, 1], [5, 1, 0, 3], [0, 7], [1]])
def test_categorical_equals_reference(weights):
    got = KL.categorical(3, 17, 4000, KL.thresholds(weights))
    np.testing.assert_array_equal(got, R.labels_categorical(3, 17, 4000, weights))
    counts = np.bincount(got, minlength=len(weights))
    p = np.asarray(weights, float) / sum(weights)
    assert (counts[p == 0] == 0).all()  # a zero weight is never drawn
    # multinomial: each count within 5 standard deviations of n·p (a failure here is a real bias)
    sd = np.sqrt(4000 * p * (1 - p))
    assert (np.abs(counts - 4000 * p) <= 5 * sd + 1e-9).all()


@pytest.mark.parametrize("spec", ["balanced", "frequencies", 2, ("weights", (1, 0, 2))])
def test_labels_do_not_depend_on_batch_size(model, schedule, spec):
    """Batch sizes 1, 37 and n, and a shard (start = 20) of the same request: the same labels
    (and samples) for the same global indices."""
    model.label_counts = (5, 3, 2)
    try:
        kw = {**KW, "labels": spec, "guidance": 1.0}
        runs = [sample(model, schedule, N, batch_size=b, **kw) for b in (1, 37, N)]
        for x, y in runs[1:]:
            np.testing.assert_array_equal(y, runs[0][1])
            np.testing.assert_array_equal(x, runs[0][0])
        x20, y20 = sample(model, schedule, N - 20, start=20, batch_size=7, **kw)
        np.testing.assert_array_equal(y20, runs[0][1][20:])
        np.testing.assert_array_equal(x20, runs[0][0][20:])
    finally:
        del model.label_counts


def test_labels_and_guided_samples_do_not_depend_on_threads_or_backend(tmp_path, model, schedule):
    """NUMBA_NUM_THREADS 1 vs 2 (subprocesses, n large enough for the parallel kernels): the same
    labels and bit-identical guided, rescaled samples. numba vs numpy: the same labels, samples to
    1e-5 (the documented gap of the two normal generators, ≤ 2e-6 at x_T). The backends are
    compared without guidance_rescale: on 2-D samples σ(g) of two elements is ill-conditioned
    (one sample in 200 here moved by 4e-3 from a 2e-6 change of its x_T) — the rescale's own
    numbers agree call for call (test_guidance.py)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np, fastddpm\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from _sampling_models import GaussianClassEps\n"
        "s = fastddpm.Schedule.linear(20)\n"
        "m = GaussianClassEps(s, [[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]], 0.3)\n"
        "x, y = fastddpm.sample(m, s, 40000, sampler='dpmpp2m', steps=4, seed=3, labels='balanced', guidance=2.5,\n"
        "                       guidance_rescale=0.5, progress=False)\n"
        "np.save(sys.argv[1] + '.x.npy', x); np.save(sys.argv[1] + '.y.npy', y)\n")
    outs = {}
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        name = str(tmp_path / threads)
        subprocess.run([sys.executable, str(script), name], env=env, check=True, timeout=600)
        outs[threads] = np.load(name + ".x.npy"), np.load(name + ".y.npy")
    np.testing.assert_array_equal(outs["1"][1], outs["2"][1])
    np.testing.assert_array_equal(outs["1"][0], outs["2"][0])
    kw = dict(sampler="dpmpp2m", steps=4, seed=3, labels="balanced", guidance=2.5, progress=False)
    xa, ya = sample(model, schedule, 4000, backend="numba", **kw)
    xb, yb = sample(model, schedule, 4000, backend="numpy", **kw)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ya, outs["1"][1][:4000])
    np.testing.assert_allclose(xa, xb, rtol=0, atol=1e-5)


def test_given_labels_come_back_and_steer_the_samples(model, schedule):
    """The exact class-conditional ε of three Gaussians 2.8 apart (σ 0.3) on a full-length schedule:
    every sample lands nearest its own class's mean."""
    long = fastddpm.Schedule.linear(1000)
    exact = GaussianClassEps(long, model.mu[:3], 0.3)
    labels = np.arange(30) % 3
    x, y = sample(exact, long, 30, **{**KW, "labels": labels, "guidance": 1.0, "steps": 100})
    np.testing.assert_array_equal(y, labels)
    centers = model.mu[:3]
    near = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    assert (near == labels).all()
    x0 = sample(model, schedule, 30, **{**KW, "labels": None, "guidance": 1.0})
    assert isinstance(x0, np.ndarray) and x0.shape == (30, 2)  # no labels given: samples only


def test_trajectory_comes_with_labels(model, schedule):
    x, y, traj = sample(model, schedule, 9, return_trajectory=True, **KW)
    np.testing.assert_array_equal(traj.x[-1], x)
    assert y.shape == (9,)


# -- bad input: one line naming the argument ------------------------------------------------------


def _one_line(exc):
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_label_out_of_range(model, schedule):
    with pytest.raises(ValueError, match=r"labels \(--label / --labels\) holds 3, outside the model's classes 0 … 2"):
        sample(model, schedule, 4, **{**KW, "labels": 3})
    with pytest.raises(ValueError, match=r"labels \(--label / --labels\) holds 7") as info:
        sample(model, schedule, 4, **{**KW, "labels": np.array([0, 1, 7, 2])})
    _one_line(info)
    with pytest.raises(ValueError, match=r"labels .* must be >= 0"):
        sample(model, schedule, 4, **{**KW, "labels": -1})


def test_labels_array_of_the_wrong_length_or_dtype(model, schedule):
    with pytest.raises(ValueError, match=r"labels \(--label / --labels\) has 3 entries but the request has n = 4"):
        sample(model, schedule, 4, **{**KW, "labels": np.array([0, 1, 2])})
    with pytest.raises(TypeError, match=r"labels as an array must hold integers .* float64"):
        sample(model, schedule, 4, **{**KW, "labels": np.array([0.0, 1.0, 2.0, 1.0])})
    with pytest.raises(ValueError, match=r"labels as an array must be 1-D"):
        sample(model, schedule, 4, **{**KW, "labels": np.zeros((4, 1), np.int64)})


def test_labels_file_of_the_wrong_length_or_dtype(tmp_path):
    from fastddpm.data import load_labels

    np.save(tmp_path / "short.npy", np.arange(3))
    np.save(tmp_path / "float.npy", np.zeros(4))
    with pytest.raises(ValueError, match=r"--labels file .*short\.npy' has shape \[3\], expected \[4\]") as info:
        load_labels(tmp_path / "short.npy", 4, what="--labels")
    _one_line(info)
    with pytest.raises(TypeError, match=r"--labels file .*float\.npy' must hold integers .*float64") as info:
        load_labels(tmp_path / "float.npy", 4, what="--labels")
    _one_line(info)


def test_guidance_on_an_unconditional_model(schedule):
    from _sampling_models import GaussianEps

    plain = GaussianEps(schedule, [1.0, -1.0], [0.5, 2.0])
    with pytest.raises(ValueError, match=r"guidance=3 \(--guidance.*needs a conditional model") as info:
        sample(plain, schedule, 4, sampler="ddpm", progress=False, guidance=3.0)
    _one_line(info)
    with pytest.raises(ValueError, match=r"labels \(--label / --labels\) was given but the model is unconditional"):
        sample(plain, schedule, 4, sampler="ddpm", progress=False, labels=1)


def test_conditional_model_without_labels_and_without_a_no_label_class(model, schedule):
    class NoNull(GaussianClassEps):
        pass

    m = NoNull(schedule, [[2.0, 0.0], [0.0, 2.0]], 0.3)
    m.null_label = None
    with pytest.raises(ValueError, match=r"labels is required: this conditional model \(2 classes\) has no 'no label'") \
            as info:
        sample(m, schedule, 4, sampler="ddpm", progress=False)
    _one_line(info)
    with pytest.raises(ValueError, match=r"guidance=2 needs the model's 'no label' class"):
        sample(m, schedule, 4, sampler="ddpm", progress=False, labels=0, guidance=2.0)
    x, y = sample(m, schedule, 4, sampler="ddpm", progress=False, labels=1)  # guidance 1 needs no null class
    assert (y == 1).all()


def test_guidance_without_labels_and_bad_options(model, schedule):
    with pytest.raises(ValueError, match=r"guidance=2 needs labels"):
        sample(model, schedule, 4, sampler="ddpm", progress=False, guidance=2.0)
    with pytest.raises(ValueError, match=r"guidance_rescale \(--guidance-rescale.*\[0, 1\]"):
        sample(model, schedule, 4, sampler="ddpm", progress=False, labels=0, guidance=2.0, guidance_rescale=1.5)
    with pytest.raises(ValueError, match=r"guidance_interval \(--guidance-interval\)"):
        sample(model, schedule, 4, sampler="ddpm", progress=False, labels=0, guidance=2.0, guidance_interval=(5, 1))
    with pytest.raises(ValueError, match=r"frequencies' needs the training label counts"):
        sample(model, schedule, 4, sampler="ddpm", progress=False, labels="frequencies")


def test_label_set_config_is_checked():
    with pytest.raises(ValueError, match=r"ckpt/config.json: labels.counts must be 3 integers"):
        LabelSet.from_config({"num_classes": 3, "null_label": 3, "counts": [1, 2]}, where="ckpt/config.json")
    assert resolve(None, 4, 0, 0, LabelSet(3, 3)) is None


# -- bulk: the labels sidecar ----------------------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch):
    # a record per batch; checksum chunks of 3 sample rows (2 float32) and 3 label rows (int64)
    monkeypatch.setattr(bulk, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 24)


def test_sidecar_matches_the_in_memory_result(tmp_path, model, schedule):
    out = tmp_path / "s.npy"
    assert sample(model, schedule, N, out=out, batch_size=8, **KW) == str(out)
    x, y = sample(model, schedule, N, **KW)
    np.testing.assert_array_equal(np.load(out), x)
    lab = np.load(tmp_path / "s.labels.npy")
    assert lab.dtype == np.int64
    np.testing.assert_array_equal(lab, y)
    assert _listing(tmp_path) == ["s.labels.npy", "s.npy"]


def test_labels_sidecar_killed_at_every_step_then_resumed_is_byte_identical(tmp_path, schedule, model, small_chunks):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    points = _trace(lambda: sample(model, schedule, 23, out=ref_dir / "s.npy", batch_size=4, **KW))
    want = (ref_dir / "s.npy").read_bytes(), (ref_dir / "s.labels.npy").read_bytes()
    assert {"bulk.labels_written", "bulk.labels_renamed", "bulk.renamed"} <= set(points)
    for name, k in _occurrences(points):
        d = tmp_path / f"{name}-{k}"
        d.mkdir()
        out = d / "s.npy"
        code = _run_killed_at(lambda: sample(model, schedule, 23, out=out, batch_size=4, **KW), name, k)
        assert code == _io.CRASH_EXIT, f"{name}#{k}: exit {code}"
        if out.exists():  # killed after the final rename: both files are complete
            assert (out.read_bytes(), (d / "s.labels.npy").read_bytes()) == want, f"{name}#{k}"
        # resume (another batch size) finishes it to exactly the uninterrupted bytes
        sample(model, schedule, 23, out=out, batch_size=3, resume=True, overwrite=out.exists(), **KW)
        assert (out.read_bytes(), (d / "s.labels.npy").read_bytes()) == want, f"{name}#{k}"
        assert _listing(d) == ["s.labels.npy", "s.npy"], f"{name}#{k}: leftovers {_listing(d)}"


def test_damaged_labels_partial_is_refused(tmp_path, schedule, model, small_chunks):
    out = tmp_path / "s.npy"
    with pytest.raises(KeyboardInterrupt):
        sample(FailAt(model, 5 * 3 + 2), schedule, 30, out=out, batch_size=4, **KW)  # 3 batches done
    part = tmp_path / "s.labels.npy.partial"
    data = bytearray(part.read_bytes())
    data[128 + 8 * 4] ^= 1  # label of row 4
    part.write_bytes(bytes(data))
    with pytest.raises(bulk.ResumeError, match=r"rows \[3, 6\) of the partial file .*s\.labels\.npy\.partial do not "
                                               r"match their checksum"):
        sample(model, schedule, 30, out=out, batch_size=4, resume=True, **KW)
    part.unlink()
    with pytest.raises(bulk.ResumeError, match=r"partial file .*s\.labels\.npy\.partial is missing"):
        sample(model, schedule, 30, out=out, batch_size=4, resume=True, **KW)


def test_resume_with_other_labels_is_refused(tmp_path, schedule, model):
    out = tmp_path / "s.npy"
    with pytest.raises(KeyboardInterrupt):
        sample(FailAt(model, 7), schedule, 30, out=out, batch_size=4, **KW)
    with pytest.raises(bulk.ResumeError, match=r"different settings \(conditioning\)"):
        sample(model, schedule, 30, out=out, batch_size=4, resume=True, **{**KW, "guidance": 3.0})


def test_existing_labels_file_and_overwrite(tmp_path, schedule, model):
    out = tmp_path / "s.npy"
    (tmp_path / "s.labels.npy").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match=r"s\.labels\.npy already exists .*overwrite"):
        sample(model, schedule, 8, out=out, **KW)
    sample(model, schedule, 8, out=out, overwrite=True, **KW)
    assert np.load(tmp_path / "s.labels.npy").shape == (8,)
    # an unlabelled overwrite removes the labels, which no longer describe the rows
    sample(model, schedule, 8, out=out, overwrite=True, **{**KW, "labels": None, "guidance": 1.0})
    assert _listing(tmp_path) == ["s.npy"]


def test_cli_writes_the_sidecar_and_names_bad_labels(tmp_path):
    """fastddpm sample with --labels FILE / --label on a conditional checkpoint (a tiny 8gaussians
    model): the sidecar, and one-line errors for a label out of range and a file of wrong length."""
    from fastddpm.cli import main

    ckpt = tmp_path / "c"
    assert main(["train", "--dataset", "8gaussians", "--out", str(ckpt), "--conditional", "--iters", "3",
                 "--batch-size", "16", "--quiet"]) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["labels"]["num_classes"] == 8 and config["labels"]["null_label"] == 8
    assert config["labels"]["label_dropout"] == 0.1 and sum(config["labels"]["counts"]) == 10_000
    np.save(tmp_path / "lab.npy", np.arange(12) % 8)
    out = tmp_path / "s.npy"
    assert main(["sample", str(ckpt), "--n", "12", "--out", str(out), "--labels", str(tmp_path / "lab.npy"),
                 "--guidance", "2", "--steps", "3", "--sampler", "dpmpp2m", "--engine", "torch", "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "s.labels.npy"), np.arange(12) % 8)
    assert np.load(out).shape == (12, 2)
    res = subprocess.run([sys.executable, "-m", "fastddpm", "sample", str(ckpt), "--n", "12", "--out",
                          str(tmp_path / "t.npy"), "--label", "8", "--engine", "torch", "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "fastddpm sample: error: labels (--label / --labels) holds 8, outside the model's classes 0 … 7 (8 classes)"]
    res = subprocess.run([sys.executable, "-m", "fastddpm", "sample", str(ckpt), "--n", "13", "--out",
                          str(tmp_path / "t.npy"), "--labels", str(tmp_path / "lab.npy"), "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "--labels file" in res.stderr and "expected [13]" in res.stderr
