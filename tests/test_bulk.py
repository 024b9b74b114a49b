"""Bulk sampling to .npy: chunked writes, SIGKILL + resume gives the same bytes, atomic final file."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastddpm
from fastddpm.sampling import sample

from _sampling_models import FailAt, GaussianEps, kill_after, slow_writer_script

T = 50


@pytest.fixture(scope="module")
def schedule():
    return fastddpm.Schedule.linear(T)


@pytest.fixture(scope="module")
def model(schedule):
    return GaussianEps(schedule, [1.0, -1.0], [0.5, 2.0])


def test_out_equals_in_memory(tmp_path, schedule, model):
    out = tmp_path / "s.npy"
    ref = sample(model, schedule, 37, sampler="ddpm", seed=3, progress=False)
    path = sample(model, schedule, 37, sampler="ddpm", seed=3, progress=False, out=out, batch_size=8)
    assert path == str(out)
    np.testing.assert_array_equal(np.load(out), ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


def test_existing_file_and_bad_names(tmp_path, schedule, model):
    out = tmp_path / "s.npy"
    sample(model, schedule, 5, progress=False, out=out)
    with pytest.raises(FileExistsError, match="overwrite"):
        sample(model, schedule, 5, progress=False, out=out)
    sample(model, schedule, 6, progress=False, out=out, overwrite=True)
    assert np.load(out).shape == (6, 2)
    with pytest.raises(ValueError, match=r"\.npy"):
        sample(model, schedule, 5, progress=False, out=tmp_path / "s.bin")
    with pytest.raises(FileNotFoundError, match="directory"):
        sample(model, schedule, 5, progress=False, out=tmp_path / "nope" / "s.npy")
    with pytest.raises(ValueError, match="return_trajectory"):
        sample(model, schedule, 5, progress=False, out=tmp_path / "t.npy", return_trajectory=True)


def test_interrupted_run_leaves_no_final_file_and_resumes(tmp_path, schedule, model, monkeypatch):
    import fastddpm.sampling.bulk as bulk

    monkeypatch.setattr(bulk, "PROGRESS_EVERY_S", 0.0)  # record every batch
    out = tmp_path / "s.npy"
    ref = sample(model, schedule, 30, sampler="ddim", steps=10, seed=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        sample(FailAt(model, 10 * 2 + 5), schedule, 30, sampler="ddim", steps=10, seed=1, progress=False,
               out=out, batch_size=4)
    assert not out.exists()
    record = json.loads((tmp_path / "s.npy.progress.json").read_text())
    assert record["done"] == 8  # two batches of 4 were complete
    # different settings refuse to resume
    with pytest.raises(ValueError, match="seed"):
        sample(model, schedule, 30, sampler="ddim", steps=10, seed=2, progress=False, out=out, resume=True)
    # a different batch size is fine: samples do not depend on it
    sample(model, schedule, 30, sampler="ddim", steps=10, seed=1, progress=False, out=out, resume=True, batch_size=7)
    np.testing.assert_array_equal(np.load(out), ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


def test_resume_without_record_starts_over(tmp_path, schedule, model):
    out = tmp_path / "s.npy"
    sample(model, schedule, 9, seed=1, progress=False, out=out, resume=True)
    np.testing.assert_array_equal(np.load(out), sample(model, schedule, 9, seed=1, progress=False))


_KILL_SCRIPT = slow_writer_script(T, """
    sample(m, s, 400, sampler="ddpm", steps=20, spacing="linspace", seed=11, batch_size=int(sys.argv[3]),
           out=sys.argv[1], resume=True, progress=False)
""")


def _run(script, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_then_resume_is_byte_identical(tmp_path):
    script = _KILL_SCRIPT
    full = tmp_path / "full.npy"
    proc = _run(script, full, 0, 64)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    out = tmp_path / "killed.npy"
    progress = tmp_path / "killed.npy.progress.json"
    proc = _run(script, out, 0.003, 16)  # 25 batches × 20 steps × 3 ms ≈ 1.5 s + start-up
    done = kill_after(proc, progress, 48)
    assert 48 <= done < 400
    assert not out.exists(), "a killed run left a file under the final name"
    assert (tmp_path / "killed.npy.partial").exists()

    proc = _run(script, out, 0, 48)  # resume with another batch size
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert out.read_bytes() == full.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.npy", "killed.npy"]
