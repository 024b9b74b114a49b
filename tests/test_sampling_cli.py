"""Pipeline and the `fastddpm sample` / `fastddpm eval` commands on a small saved checkpoint."""
import json

import numpy as np
import pytest

import fastddpm
from fastddpm.cli import main

torch = pytest.importorskip("torch")
checkpoint = pytest.importorskip("fastddpm.checkpoint")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from fastddpm.data import Normalization
    from fastddpm.nets import MLP

    torch.manual_seed(0)
    model = MLP(dim=2, width=16, depth=2)
    path = tmp_path_factory.mktemp("ck") / "ckpt"
    norm = Normalization(np.array([10.0, -5.0]), np.array([2.0, 0.5]))
    checkpoint.save(path, model, fastddpm.Schedule.linear(100), normalization=norm)
    return path


def test_pipeline_denormalises(ckpt):
    from fastddpm import Pipeline
    from fastddpm.sampling import sample

    pipe = Pipeline.from_checkpoint(ckpt)
    # engine="torch": compared bit for bit with the torch loop (engine="auto" runs onnxruntime on
    # the CPU, equal to float32 rounding only; tests/test_onnx_sampling.py covers that)
    x = pipe.sample(6, sampler="ddim", steps=10, seed=3, progress=False, engine="torch")
    raw = sample(pipe.model, pipe.schedule, 6, sampler="ddim", steps=10, seed=3, progress=False,
                 sample_shape=(2,))
    np.testing.assert_allclose(x, raw * np.array([2.0, 0.5]) + np.array([10.0, -5.0]), rtol=1e-6)
    np.testing.assert_array_equal(pipe.sample(6, sampler="ddim", steps=10, seed=3, progress=False,
                                              denormalize=False, engine="torch"), raw)
    y, traj = pipe.sample(6, sampler="ddim", steps=10, seed=3, progress=False, return_trajectory=True)
    np.testing.assert_array_equal(traj.x[-1], y)
    with pytest.raises(TypeError, match="prediction comes from the checkpoint"):
        pipe.sample(2, prediction="sample")
    with pytest.raises(TypeError, match="unexpected keyword"):
        pipe.sample(2, stepz=3)
    with pytest.raises(TypeError, match="Checkpoint"):
        Pipeline("not a checkpoint")


def test_cli_sample_resume_and_errors(ckpt, tmp_path, capsys):
    from fastddpm import Pipeline

    out = tmp_path / "s.npy"
    args = ["sample", str(ckpt), "--n", "40", "--out", str(out), "--sampler", "dpmpp2m", "--steps", "8",
            "--seed", "4", "--batch-size", "16", "--quiet"]
    assert main(args) == 0
    expect = Pipeline.from_checkpoint(ckpt).sample(40, sampler="dpmpp2m", steps=8, seed=4, progress=False)
    np.testing.assert_array_equal(np.load(out), expect)
    # an existing file is refused with a one-line error; --overwrite replaces it
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--batch-size", "7"]) == 0
    np.testing.assert_array_equal(np.load(out), expect)
    # --resume with no unfinished run starts over; explicit timestep lists parse
    out2 = tmp_path / "t.npy"
    assert main(["sample", str(ckpt), "--n", "5", "--out", str(out2), "--sampler", "ddim", "--spacing",
                 "90,50,10", "--resume", "--quiet"]) == 0
    assert np.load(out2).shape == (5, 2)
    assert main(["sample", str(tmp_path / "missing"), "--n", "5", "--out", str(tmp_path / "u.npy"), "--quiet"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["sample", str(ckpt), "--n", "0", "--out", str(tmp_path / "v.npy"), "--quiet"]) == 2
    assert "n must be" in capsys.readouterr().err
    assert main(["sample", str(ckpt), "--n", "3", "--steps", "101", "--out", str(tmp_path / "w.npy"), "--quiet"]) == 2
    assert "steps must lie in [1, T = 100]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", str(ckpt), "--n", "3", "--out", str(tmp_path / "x.npy"), "--sampler", "plms"])
    assert not (tmp_path / "x.npy").exists()


def test_cli_eval_prints_metrics_json(tmp_path, capsys):
    pytest.importorskip("fastddpm.metrics")
    from fastddpm.data import load_dataset

    f = tmp_path / "s.npy"
    np.save(f, load_dataset("butterfly", 500, seed=5).raw().astype(np.float32))
    assert main(["eval", str(f), "--dataset", "butterfly"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 500 and result["dataset"] == "butterfly"
    assert main(["eval", str(tmp_path / "nope.npy"), "--dataset", "butterfly"]) == 2
    np.save(f, np.zeros((5, 3), np.float32))
    assert main(["eval", str(f), "--dataset", "butterfly"]) == 2
    assert "shape" in capsys.readouterr().err
