"""Inputs fastddpm must refuse (or repair) up front, naming what is wrong (issue 28):

- a diffusers directory whose scheduler fastddpm does not reproduce (a variance-exploding one);
- a damaged file in the ONNX export cache (re-exported under the cache lock, one line said);
- ``fastddpm sample … --n 10000000000000`` (more bytes than the disk has: refused before anything
  is written, naming --n, the bytes and the free space);
- a training .npy whose float64 values overflow float32.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastddpm
from fastddpm.cli import main

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from fastddpm import checkpoint
    from fastddpm.data import Normalization
    from fastddpm.nets import MLP

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "ckpt"
    checkpoint.save(path, MLP(dim=2, width=16, depth=2), fastddpm.Schedule.linear(100),
                    normalization=Normalization(np.array([1.0, -1.0]), np.array([2.0, 0.5])))
    return path


# -- diffusers schedulers fastddpm does not reproduce ------------------------------------------

@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from diffusers import DDPMPipeline, DDPMScheduler

    from _diffusers_models import tiny_unet

    path = tmp_path_factory.mktemp("diffusers") / "pipe"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(path)
    return path


def _with_scheduler(src, dst, name: str, config: dict | None = None):
    """A copy of the diffusers directory whose scheduler is ``name`` (model_index.json and
    scheduler_config.json both say so, as save_pretrained writes them)."""
    import shutil

    shutil.copytree(src, dst)
    index = json.loads((dst / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", name]
    (dst / "model_index.json").write_text(json.dumps(index))
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": name, **(config or {})}))
    return dst


def test_ve_scheduler_directory_is_refused_naming_the_class(diffusers_dir, tmp_path, capsys):
    from diffusers import ScoreSdeVeScheduler

    from fastddpm.schedule import DIFFUSERS_SCHEDULERS

    # KarrasVeScheduler as older diffusers saved it; ScoreSdeVeScheduler as this diffusers saves it
    karras = _with_scheduler(diffusers_dir, tmp_path / "karras", "KarrasVeScheduler",
                             {"sigma_min": 0.02, "sigma_max": 100.0, "s_noise": 1.007, "s_churn": 80})
    sde = _with_scheduler(diffusers_dir, tmp_path / "sde", "ScoreSdeVeScheduler", dict(ScoreSdeVeScheduler().config))
    for path, name in ((karras, "KarrasVeScheduler"), (sde, "ScoreSdeVeScheduler")):
        with pytest.raises(ValueError) as info:
            fastddpm.Pipeline.from_diffusers(path)
        message = str(info.value)
        assert name in message and all(s in message for s in DIFFUSERS_SCHEDULERS), message
        with pytest.raises(ValueError, match=name):
            fastddpm.Pipeline.load(path)
        with pytest.raises(ValueError, match=name):
            fastddpm.export_onnx(path, tmp_path / f"{name}.onnx")
        out = tmp_path / f"{name}.npy"
        assert main(["sample", str(path), "--n", "4", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert name in err and "DDPMScheduler" in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    # the schedule converter refuses the class too (a config dict a user passes by hand)
    with pytest.raises(ValueError, match="KarrasVeScheduler"):
        fastddpm.Schedule.from_diffusers({"_class_name": "KarrasVeScheduler", "num_train_timesteps": 1000})
    # the supported classes still load
    for name in ("DDIMScheduler", "DPMSolverMultistepScheduler"):
        ok = _with_scheduler(diffusers_dir, tmp_path / name, name, {"num_train_timesteps": 50})
        assert fastddpm.Pipeline.load(ok).schedule.num_steps == 50


# -- the ONNX export cache ---------------------------------------------------------------------

def _cache_entry(cache) -> str:
    (entry,) = [p for p in os.listdir(cache) if p.endswith(".onnx")]
    return os.path.join(cache, entry)


@pytest.mark.parametrize("damage", ["truncated", "edited", "no digest and truncated"])
def test_damaged_onnx_cache_entry_is_exported_again(ckpt, tmp_path, monkeypatch, damage):
    pytest.importorskip("onnxruntime")
    from fastddpm.pipelines.engines import OnnxCacheRepaired

    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    kw = dict(sampler="ddim", steps=5, seed=1, progress=False, engine="onnx")
    first = fastddpm.Pipeline.from_checkpoint(ckpt).sample(8, **kw)
    entry = _cache_entry(tmp_path / "cache" / "onnx")
    good = open(entry, "rb").read()
    if damage.endswith("truncated"):
        with open(entry, "r+b") as f:
            f.truncate(len(good) // 2)
    else:  # same size, a few bytes changed in the middle (a flipped block on disk)
        with open(entry, "r+b") as f:
            f.seek(len(good) // 2)
            f.write(bytes(b ^ 0xFF for b in good[len(good) // 2:len(good) // 2 + 16]))
    if damage.startswith("no digest"):  # an entry from before digests were recorded
        os.unlink(entry + ".sha256")
    with pytest.warns(OnnxCacheRepaired, match="exported it again") as record:
        again = fastddpm.Pipeline.from_checkpoint(ckpt).sample(8, **kw)
    assert len([w for w in record if issubclass(w.category, OnnxCacheRepaired)]) == 1
    np.testing.assert_array_equal(again, first)
    assert open(entry, "rb").read() == good  # the same export again
    assert not os.path.exists(entry + ".lock")


def test_intact_cache_entry_without_digest_is_kept(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import warnings

    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    kw = dict(sampler="ddim", steps=5, seed=1, progress=False, engine="onnx")
    fastddpm.Pipeline.from_checkpoint(ckpt).sample(8, **kw)
    entry = _cache_entry(tmp_path / "cache" / "onnx")
    os.unlink(entry + ".sha256")
    mtime = os.stat(entry).st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: it loads, so it is kept and its digest recorded
        fastddpm.Pipeline.from_checkpoint(ckpt).sample(8, **kw)
    assert os.stat(entry).st_mtime_ns == mtime and os.path.isfile(entry + ".sha256")


def test_damaged_cache_entry_cli_says_so_in_one_line(ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    env = {**os.environ, "FASTDDPM_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "fastddpm", "sample", str(ckpt), "--n", "8", "--sampler", "ddim", "--steps", "5",
           "--engine", "onnx", "--quiet"]
    first = subprocess.run(cmd + ["--out", str(tmp_path / "a.npy")], env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    entry = _cache_entry(tmp_path / "cache" / "onnx")
    with open(entry, "r+b") as f:
        f.truncate(100)
    second = subprocess.run(cmd + ["--out", str(tmp_path / "b.npy")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastddpm sample: warning:") and entry in lines[0], lines
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_cache_lock_waits_for_the_exporting_process(tmp_path):
    from fastddpm._io import OutputLock, OutputLockedError

    target = tmp_path / "net.onnx"
    held = OutputLock(target).acquire()
    with pytest.raises(OutputLockedError, match="pid"):
        OutputLock(target).acquire()  # wait=0: refused at once, as for --out files
    threading.Timer(0.3, held.release).start()
    tic = time.monotonic()
    with OutputLock(target, wait=30):
        assert 0.2 < time.monotonic() - tic < 20


# -- more samples than the disk can hold -------------------------------------------------------

def test_sample_larger_than_the_disk_is_refused_before_writing(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out" / "big.npy"
    out.parent.mkdir()
    n = 10_000_000_000_000
    assert main(["sample", str(ckpt), "--n", str(n), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    need = 128 + n * 2 * 4  # the .npy header, then float32 [n, 2]
    assert "--n" in err and f"{need:,} bytes" in err and "free" in err, err
    assert os.listdir(out.parent) == []  # no lock file, no partial, no progress record
    assert not (tmp_path / "cache").exists()  # nothing exported either

    # the library names n too, and a modest n on a (pretend) full disk is refused the same way
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OSError, match=r"not enough disk space for .*big.npy: n = 1,000 samples of 8 bytes .n, --n. need 8,128 bytes .7.9 KiB. but only 1,000 bytes are free"):
        fastddpm.Pipeline.from_checkpoint(ckpt).sample(1000, out=out, progress=False, engine="torch")
    pipe = fastddpm.Pipeline.from_checkpoint(ckpt)
    with pytest.raises(OSError, match="n = 1,000 samples"):  # fastddpm.sample(out=...) checks in write_samples
        fastddpm.sample(pipe.model, pipe.schedule, 1000, out=out, progress=False, sample_shape=(2,))
    assert os.listdir(out.parent) == []
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert fastddpm.Pipeline.from_checkpoint(ckpt).sample(1000, out=out, progress=False, engine="torch") == str(out)


# -- training data beyond float32 --------------------------------------------------------------

def test_npy_beyond_float32_is_refused_naming_the_file_and_count(tmp_path, capsys):
    from fastddpm.data import load_dataset

    data = np.random.default_rng(0).normal(size=(50, 2))
    data[[3, 7, 11], 1] = [1e39, -5e300, 3.5e38]  # all three overflow float32 (max 3.4028e38)
    path = tmp_path / "huge.npy"
    np.save(path, data)
    with pytest.raises(ValueError, match=r"huge\.npy.*3 of 100 values are not finite after conversion to float32"):
        load_dataset(str(path))
    assert main(["train", "--dataset", str(path), "--out", str(tmp_path / "ck"), "--iters", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "3 of 100 values" in err, err
    assert not (tmp_path / "ck").exists()
    data[[3, 7, 11], 1] = 3.0e38  # within range: accepted
    np.save(path, data)
    assert load_dataset(str(path)).x.shape == (50, 2)
