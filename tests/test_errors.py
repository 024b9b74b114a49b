"""Bad input to the core ops raises a clear exception that names the argument (type and
message checked); nothing reaches a kernel with it."""
import numpy as np
import pytest
import torch

import fastddpm
from fastddpm import BackendUnavailableError, Schedule

S = Schedule.linear(10)
X = np.zeros((2, 3), np.float32)
M = np.zeros((2, 3), np.float32)


def step(**kw):
    args = dict(schedule=S, x_t=X, model_output=M, t=5)
    args.update(kw)
    return fastddpm.ddpm_step(args.pop("schedule"), args.pop("x_t"), args.pop("model_output"), args.pop("t"), **args)


def ddim(**kw):
    return fastddpm.ddim_step(S, X, M, 5, **kw)


CASES = {
    # timesteps
    "t too large": (lambda: step(t=10),
        ValueError, r"t must lie in \[0, 10\) for this schedule \(T = 10\); got values in \[10, 10\]"),
    "t negative": (lambda: step(t=np.array([3, -1])), ValueError, r"t must lie in \[0, 10\)"),
    "t float": (lambda: step(t=2.0), TypeError, "t must be an integer or an integer array, got float"),
    "t float array": (lambda: step(t=np.array([1.0, 2.0])),
        TypeError, "t must have an integer dtype, got float64"),
    "t bool": (lambda: step(t=True), TypeError, "t must be an integer"),
    "t wrong shape": (lambda: step(t=np.array([[1, 2]])),
        ValueError, r"t must be an integer or have shape \[B\] = \[2\], got shape \(1, 2\)"),
    "t wrong length": (lambda: step(t=np.array([1, 2, 3])),
        ValueError, r"shape \[B\] = \[2\], got shape \(3,\)"),
    "q_sample t out of range": (lambda: fastddpm.q_sample(S, X, 11), ValueError, r"t must lie in \[0, 10\)"),
    "prev_t not below t": (lambda: step(t=4, prev_t=4),
        ValueError, "prev_t must be smaller than t for every sample"),
    "prev_t below -1": (lambda: step(t=4, prev_t=-2), ValueError, r"prev_t must lie in \[-1, 10\)"),
    # arrays
    "shape mismatch": (lambda: step(model_output=np.zeros((2, 4), np.float32)),
        ValueError, r"model_output has shape \(2, 4\) but x_t has shape \(2, 3\)"),
    "dtype mismatch": (lambda: step(model_output=M.astype(np.float64)),
        TypeError, "model_output has dtype float64 but x_t has dtype float32"),
    "int data": (lambda: step(x_t=X.astype(np.int32), model_output=M.astype(np.int32)),
        TypeError, "x_t must be float32 or float64, got int32"),
    "float16 data": (lambda: fastddpm.q_sample(S, X.astype(np.float16), 1),
        TypeError, "x0 must be float32 or float64, got float16"),
    "list data": (lambda: step(x_t=[[0.0]]),
        TypeError, "x_t must be a NumPy array or a torch tensor, got list"),
    "scalar data": (lambda: fastddpm.q_sample(S, np.array(1.0, np.float32), 1),
        ValueError, r"x0 must have a batch dimension \[B, ...\]"),
    "non-contiguous numpy": (lambda: step(x_t=np.zeros((3, 2), np.float32).T),
        ValueError, "x_t must be C-contiguous"),
    "non-contiguous torch": (lambda: step(x_t=torch.zeros(3, 2).T, model_output=torch.zeros(2, 3)),
        ValueError, r"x_t must be contiguous \(call .contiguous\(\) first\)"),
    "noise shape": (lambda: step(noise=np.zeros((2, 2), np.float32)),
        ValueError, r"noise has shape \(2, 2\) but x_t has shape \(2, 3\)"),
    "q_sample noise dtype": (lambda: fastddpm.q_sample(S, X, 1, np.zeros((2, 3))),
        TypeError, "noise has dtype float64 but x0 has dtype float32"),
    "out of another type": (lambda: step(out=torch.zeros(2, 3)),
        TypeError, "out must be of the same type as the input"),
    "out shape": (lambda: step(out=np.zeros((3, 2), np.float32)), ValueError, r"out has shape \(3, 2\)"),
    "wrong device": (lambda: step(x_t=torch.zeros(2, 3, device="meta"), model_output=torch.zeros(2, 3, device="meta"), backend="numba"),
                     ValueError, r"backend='numba' runs on the CPU but got tensors on \['meta'\]"),
    "t on another device": (lambda: step(x_t=torch.zeros(2, 3), model_output=torch.zeros(2, 3), t=torch.tensor(3, device="meta"), backend="numpy"),
                            ValueError, "backend='numpy' runs on the CPU but got tensors on"),
    "NaN model output": (lambda: step(model_output=np.array([[0, np.nan, 0], [0, 0, 0]], np.float32), check_finite=True),
                         FloatingPointError, r"model_output contains NaN or inf \(first at flat index 1\)"),
    "inf model output (ddim)": (lambda: fastddpm.ddim_step(S, X, np.array([[0, 0, 0], [0, 0, np.inf]], np.float32), 5, check_finite=True),
                                FloatingPointError, "first at flat index 5"),
    # choices
    "unknown prediction": (lambda: step(prediction="eps"),
        ValueError, "prediction must be one of 'epsilon', 'sample', 'v_prediction'; got 'eps'"),
    "unknown variance": (lambda: step(variance="learned"),
        ValueError, "variance must be one of 'fixed_small', 'fixed_large'; got 'learned'"),
    "unknown backend": (lambda: step(backend="cuda"),
        ValueError, "backend must be one of auto, numpy, numba, triton; got 'cuda'"),
    "triton on CPU": (lambda: step(backend="triton"),
        BackendUnavailableError, "backend='triton' needs CUDA tensors"),
    "not a schedule": (lambda: step(schedule="linear"),
        TypeError, "schedule must be a fastddpm.Schedule, got str"),
    "clip zero": (lambda: step(clip=0.0), ValueError, "clip must be None or a finite number > 0, got 0.0"),
    "clip nan": (lambda: step(clip=float("nan")), ValueError, "clip must be None or a finite number > 0"),
    "eta negative": (lambda: ddim(eta=-0.1), ValueError, "eta must be a finite number >= 0, got -0.1"),
    # noise counters
    "seed negative": (lambda: step(seed=-1), ValueError, r"seed must lie in \[0, 2\*\*32\), got -1"),
    "seed too large": (lambda: fastddpm.randn(3, seed=2**32),
        ValueError, r"seed must lie in \[0, 2\*\*32\), got 4294967296"),
    "seed float": (lambda: fastddpm.q_sample(S, X, 1, seed=1.5),
        TypeError, r"seed must be an integer in \[0, 2\*\*32\), got float"),
    "stream too large": (lambda: step(stream=2**32), ValueError, r"stream must lie in \[0, 2\*\*32\)"),
    "stream negative": (lambda: ddim(stream=-3, eta=1.0),
        ValueError, r"stream must lie in \[0, 2\*\*32\), got -3"),
    "offset negative": (lambda: step(offset=-1),
        ValueError, r"offset must lie in \[0, 2\*\*63 - numel\), got -1"),
    "offset overflow": (lambda: fastddpm.randn(10, seed=0, offset=2**63 - 5),
        ValueError, r"offset must lie in \[0, 2\*\*63 - numel\)"),
    "offset float": (lambda: fastddpm.q_sample(S, X, 1, offset=2.0),
        TypeError, "offset must be a non-negative integer, got float"),
    # randn
    "randn negative shape": (lambda: fastddpm.randn((2, -1), seed=0),
        ValueError, r"shape must have non-negative sizes, got \(2, -1\)"),
    "randn int dtype": (lambda: fastddpm.randn(3, seed=0, dtype=np.int32),
        TypeError, "dtype must be float32 or float64, got int32"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises(case):
    call, exc, msg = CASES[case]
    with pytest.raises(exc, match=msg):
        call()


def test_check_finite_off_lets_nan_through_visibly():
    """Without the guard a NaN stays a NaN (it is not hidden), and the guard is opt-in."""
    m = M.copy()
    m[0, 0] = np.nan
    out = step(model_output=m)
    assert np.isnan(out[0, 0]) and np.isfinite(out[1]).all()


def test_empty_batch_is_fine():
    empty = np.zeros((0, 3), np.float32)
    assert fastddpm.ddpm_step(S, empty, empty, 3).shape == (0, 3)
    assert fastddpm.q_sample(S, empty, 3)[0].shape == (0, 3)


# -- issue 16: the errors that were unclear -----------------------------------------------------


@pytest.mark.parametrize("betas, match", [
    ([1e-20] * 10, r"betas\[0\] = 1e-20 is too small: 1 - alphas_cumprod\[0\] rounds to 0"),
    ([0.5] * 3 + [1e-18] * 3, None),  # later tiny betas are fine: 1 - ᾱ stays > 0
    ([0.9] * 1000, r"betas make alphas_cumprod .* underflow in float64 at step 30[0-9] of 1000"),
])
def test_degenerate_betas_name_betas(betas, match):
    if match is None:
        assert np.isfinite(Schedule.from_betas(betas).posterior_mean_coef1).all()
        return
    with pytest.raises(ValueError, match=match):
        Schedule.from_betas(betas)


def test_sample_shape_that_contradicts_the_model():
    from fastddpm.nets import MLP, UNet

    s = Schedule.linear(10)
    with pytest.raises(ValueError, match=r"sample_shape \(3,\) does not match the model: MLP takes samples of "
                                         r"shape \(2,\)"):
        fastddpm.sample(MLP(2, width=8, depth=1, num_steps=10), s, 2, sample_shape=(3,), progress=False)
    with pytest.raises(ValueError, match=r"UNet has in_channels = 1, so sample_shape must be \(1, H, W\)"):
        fastddpm.sample(UNet(1, base_channels=8, num_steps=10), s, 2, sample_shape=(3, 8, 8), progress=False)
    # the right shape still works
    assert fastddpm.sample(MLP(2, width=8, depth=1, num_steps=10), s, 2, sample_shape=(2,), progress=False,
                           steps=2).shape == (2, 2)


def test_onnx_schedule_metadata_names_the_file():
    from fastddpm.runtime.metadata import FORMAT, PREFIX, decode

    props = {PREFIX + "format": FORMAT, PREFIX + "schedule": '{"name": "linear"}'}  # no num_steps
    with pytest.raises(ValueError, match=r"'m\.onnx': metadata entry fastddpm\.schedule is not a valid schedule"):
        decode(props, source="'m.onnx'")
    props[PREFIX + "schedule"] = '[1, 2]'
    with pytest.raises(ValueError, match=r"'m\.onnx': metadata entry fastddpm\.schedule"):
        decode(props, source="'m.onnx'")


def test_onnx_sampling_metadata_names_the_entry():
    from fastddpm.runtime.metadata import FORMAT, PREFIX, decode, encode

    for bad in ('{"spacing": "leading", "colour": 1}', '["leading"]'):
        with pytest.raises(ValueError, match=r"'m\.onnx': metadata entry fastddpm\.sampling must be a dict with "
                                             r"keys among sampler, steps, spacing, final, eta, variance, clip"):
            decode({PREFIX + "format": FORMAT, PREFIX + "sampling": bad}, source="'m.onnx'")
    with pytest.raises(ValueError, match=r"fastddpm\.sampling\['steps'\] = 0 is not a valid steps"):
        decode({PREFIX + "format": FORMAT, PREFIX + "sampling": '{"steps": 0}'}, source="'m.onnx'")
    with pytest.raises(ValueError, match="sampling must be a dict"):
        encode(schedule=None, prediction="epsilon", normalization=None, sample_shape=(2,), version="0",
               sampling={"teacher": 3})
    good = {"variance": "fixed_large", "clip": None, "spacing": "linspace"}
    props = encode(schedule=None, prediction="epsilon", normalization=None, sample_shape=(2,), version="0",
                   sampling=good)
    assert decode(props).sampling == good and decode({**props, PREFIX + "sampling": "null"}).sampling is None


def _cli(argv, capsys):
    from fastddpm.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cmd", [["sample", "ckpt", "--n", "3", "--out", "x.npy"],
                                 ["train", "--dataset", "moons", "--out", "ck"]])
def test_device_cuda_without_cuda_is_one_line(cmd, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _cli([*cmd, "--device", "cuda"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--device cuda: " in err and "use --device cpu" in err
    assert list(tmp_path.iterdir()) == []


def test_out_directory_refused_before_anything(capsys, tmp_path):
    out = tmp_path / "d.npy"
    out.mkdir()
    (out / "keep").write_text("x")
    # the checkpoint does not even exist: the refusal comes before loading or sampling
    code, err = _cli(["sample", tmp_path / "nockpt", "--n", "3", "--out", out, "--overwrite"], capsys)
    assert code == 2 and f"--out {out} is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy"] and (out / "keep").read_text() == "x"


def test_write_samples_refuses_a_directory(tmp_path):
    from _sampling_models import GaussianEps

    s = Schedule.linear(10)
    out = tmp_path / "d.npy"
    out.mkdir()
    m = GaussianEps(s, [0.0], [1.0])
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fastddpm.sample(m, s, 3, out=out, overwrite=True, progress=False)
    assert m.calls == 0


def test_eval_on_a_truncated_npy_names_the_file(capsys, tmp_path):
    f = tmp_path / "s.npy"
    np.save(f, np.zeros((100, 2), np.float32))
    f.write_bytes(f.read_bytes()[:300])
    code, err = _cli(["eval", f, "--dataset", "moons"], capsys)
    assert code == 2 and f"{f} is not a readable .npy file (truncated or corrupt" in err


def test_batch_larger_than_the_dataset_warns():
    from fastddpm.data import load_dataset
    from fastddpm.training import train

    with pytest.warns(UserWarning, match=r"batch_size=16 is larger than the dataset \(8 rows\)"):
        train(load_dataset("moons", 8), iters=1, batch_size=16, net_kwargs={"width": 8, "depth": 1},
              num_steps=10, progress=False)


def test_train_distributed_without_batch_size(tmp_path):
    """One rank (WORLD_SIZE=1) under torchrun's variables: the default batch size is checked, not None."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**__import__("os").environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, "-m", "fastddpm", "train", "--dataset", "moons", "--n", "64", "--iters",
                           "2", "--num-steps", "10", "--width", "8", "--depth", "1", "--out", str(tmp_path / "ck"),
                           "--distributed", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    from fastddpm.training import KIND_DEFAULTS

    assert json.loads((tmp_path / "ck" / "config.json").read_text())["train"]["batch_size"] == \
        KIND_DEFAULTS["vector"]["batch_size"]


def test_benchmark_default_model_names_the_net():
    from fastddpm import benchmark

    with pytest.raises(ValueError, match="net must be one of ResMLP, MLP, got 'UNet'"):
        benchmark.default_model(net="UNet")
    model, _, _, prediction = benchmark.default_model(net="MLP")
    assert type(model).__name__ == "MLP" and prediction == "epsilon"
