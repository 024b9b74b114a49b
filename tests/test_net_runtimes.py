"""Issue 26: the network runtimes (torch, the export forms in onnxruntime) and engine="auto"'s
measured, cached choice between them.

Tolerance ("float32 rounding"): every runtime's output equals the torch module's within
``TOL = 1e-5 × max(1, max |torch output|)`` (observed ≤ 1.5e-6 on the three built-in nets with
perturbed random weights; one float32 ulp at 2 is 2.4e-7).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import warnings

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm import checkpoint
from fastddpm.nets import MLP, ResMLP, UNet
from fastddpm.nets.fused import export_form
from fastddpm.runtime import calibrate

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TOL = 1e-5


@pytest.fixture(autouse=True)
def _measure(monkeypatch):
    # conftest pins engine="auto" to onnx for the rest of the suite; here auto measures
    monkeypatch.delenv(calibrate.ENV_VAR, raising=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturbed(net):
    """Random weights everywhere (the nets zero-initialise their last layers)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


NETS = {
    "ResMLP": (lambda: ResMLP(dim=2, width=64, depth=3, fourier_features=16, fourier_scale=25.0), (2,)),
    "ResMLP-3d-nofourier": (lambda: ResMLP(dim=3, width=32, depth=2, fourier_features=0), (3,)),
    "MLP": (lambda: MLP(dim=2, width=48, depth=3), (2,)),
    "MLP-learned": (lambda: MLP(dim=2, width=32, depth=2, time_embedding="learned"), (2,)),
    "UNet": (lambda: UNet(in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1), (1, 8, 8)),
}


def _check(got, want):
    want = np.asarray(want)
    bound = TOL * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(np.asarray(got) - want).max())
    assert err <= bound, f"max |runtime − torch| = {err:.3g} > {bound:.3g}"
    return err


@pytest.mark.parametrize("name", sorted(NETS))
def test_export_form_and_onnxruntime_equal_the_module_on_odd_batches(name, tmp_path):
    from fastddpm.onnx_fused import export_fused
    from fastddpm.runtime import OnnxModel

    make, shape = NETS[name]
    torch.manual_seed(0)
    net = _perturbed(make())
    path = export_fused(net, tmp_path / "net.onnx", sample_shape=shape)
    plain = fastddpm.export_onnx(net, tmp_path / "plain.onnx", sample_shape=shape)
    session = OnnxModel(path, ["CPUExecutionProvider"])
    plain_session = OnnxModel(plain, ["CPUExecutionProvider"])
    assert session.shared_t
    form = export_form(net)
    for batch, t in ((1, 0), (7, 999), (33, 437), (129, 12)):
        x = torch.randn(batch, *shape) * 1.5
        with torch.no_grad():
            want = net(x, torch.full((batch,), t, dtype=torch.int64)).numpy()
            _check(form(x, torch.full((1,), t, dtype=torch.int64)).numpy(), want)
        xn = x.numpy().copy()
        _check(session(xn, t), want)
        _check(plain_session(xn, t), want)
        net_call = session.bind_batch(xn, [t])
        _check(net_call(0), want)
    # the export form folds one t into the weights: a per-sample t is refused, never misread
    with pytest.raises(Exception, match="invalid dimensions"):  # onnxruntime's InvalidArgument
        session(np.zeros((3, *shape), np.float32), np.array([1, 2, 3]))


def test_export_form_is_only_for_the_built_in_classes():
    class Mine(ResMLP):
        def forward(self, x_t, t):
            return super().forward(x_t, t) * 2

    assert export_form(Mine(width=8, depth=1, fourier_features=2)) is None
    assert export_form(torch.nn.Linear(2, 2)) is None
    from fastddpm.onnx_fused import export_fused

    with pytest.raises(ValueError, match="has no export form"):
        export_fused(torch.nn.Linear(2, 2), "unused.onnx", sample_shape=(2,))


# -- whole runs: the same seed on every runtime; bit-identical within one ---------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = _perturbed(ResMLP(dim=2, width=32, depth=2, fourier_features=4))
    from fastddpm.data import Normalization

    path = checkpoint.save(tmp_path_factory.mktemp("ck") / "ck", net, fastddpm.Schedule.linear(1000),
                           normalization=Normalization.identity(1), prediction="v_prediction")
    return path


def test_runtimes_agree_and_each_is_bit_identical_across_batches_and_resume(ckpt, tmp_path, monkeypatch):
    pipe = fastddpm.Pipeline.from_checkpoint(ckpt)
    kw = dict(sampler="dpmpp2m", steps=20, seed=4, progress=False)
    runs = {}
    for runtime in calibrate_names():
        monkeypatch.setenv(calibrate.ENV_VAR, runtime)
        runs[runtime] = pipe.sample(45, **kw)
        assert pipe.runtime_choice.name == runtime and pipe.runtime_choice.source == "env"
        other = pipe.sample(45, batch_size=7, **kw)
        if runtime == "torch":  # MKL rounds a 3-row GEMM differently (main's torch path too): ≤ 1e-5 rel.
            np.testing.assert_allclose(other, runs[runtime], rtol=0, atol=1e-5 * float(np.abs(other).max()) * 100)
        else:  # onnxruntime: bit-identical whatever the batch
            np.testing.assert_array_equal(other, runs[runtime])
    ref = runs["torch"]
    for runtime, x in runs.items():
        np.testing.assert_allclose(x, ref, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    for runtime in runs:  # the same graph: the ONNX runtimes give the same bits
        if runtime.startswith("onnx"):
            np.testing.assert_array_equal(runs[runtime], runs["onnx"])
    # resume: an interrupted bulk run continued on the same runtime equals an uninterrupted one,
    # and is refused on a runtime that rounds differently
    import fastddpm.sampling.bulk as bulk
    from fastddpm.sampling import models

    monkeypatch.setattr(bulk, "PROGRESS_EVERY_S", 0.0)  # record every batch
    monkeypatch.setenv(calibrate.ENV_VAR, "onnx")
    real_bind, calls = models._NumpyNet.bind, [0]

    def failing_bind(self, x):
        net = real_bind(self, x)

        def call(k):
            calls[0] += 1
            if calls[0] == 20 * 2 + 5:  # in the third batch of 8
                raise KeyboardInterrupt
            return net(k)
        return call
    out = tmp_path / "x.npy"
    monkeypatch.setattr(models._NumpyNet, "bind", failing_bind)
    with pytest.raises(KeyboardInterrupt):
        pipe.sample(45, out=str(out), batch_size=8, **kw)
    monkeypatch.setattr(models._NumpyNet, "bind", real_bind)
    assert json.loads((tmp_path / "x.npy.progress.json").read_text())["done"] == 16
    monkeypatch.setenv(calibrate.ENV_VAR, "torch")
    with pytest.raises(ValueError, match=r"different settings \(model\)"):
        pipe.sample(45, out=str(out), resume=True, **kw)
    monkeypatch.setenv(calibrate.ENV_VAR, "onnx-nospin")  # same graph and rounding: resumes
    pipe.sample(45, out=str(out), resume=True, batch_size=13, **kw)
    np.testing.assert_array_equal(np.load(out), runs["onnx"])


def calibrate_names():
    """The runtimes auto measures on this machine (onnx-split needs more than one core)."""
    from fastddpm.runtime.split import usable_cores
    from fastddpm.pipelines.autoengine import RUNTIMES

    return tuple(r for r in RUNTIMES if r != "onnx-split" or usable_cores() > 1)


def test_split_sessions_equal_one_session_bit_for_bit(tmp_path):
    from fastddpm.onnx_fused import export_fused
    from fastddpm.runtime import OnnxModel
    from fastddpm.runtime.split import MIN_ROWS_PER_PART, SplitOnnxModel

    torch.manual_seed(0)
    net = _perturbed(ResMLP(dim=2, width=32, depth=2, fourier_features=4))
    form = export_fused(net, tmp_path / "form.onnx", sample_shape=(2,))
    plain = fastddpm.export_onnx(net, tmp_path / "plain.onnx", sample_shape=(2,))
    rng = np.random.default_rng(3)
    for path in (form, plain):
        one, split = OnnxModel(path, ["CPUExecutionProvider"]), SplitOnnxModel(path, parts=3)
        for batch in (1, MIN_ROWS_PER_PART - 1, 2 * MIN_ROWS_PER_PART + 1, 1001):
            x = rng.standard_normal((batch, 2), dtype=np.float32)
            want = one(x, 77)
            np.testing.assert_array_equal(split(x, 77), want)
            call = split.bind_batch(x, [77, 5])
            np.testing.assert_array_equal(call(0), want)
            np.testing.assert_array_equal(call(1), one(x, 5))
    # a per-sample t (the plain export takes one) is split with its rows
    x = rng.standard_normal((301, 2), dtype=np.float32)
    t = rng.integers(0, 1000, 301)
    np.testing.assert_array_equal(split(x, t), one(x, t))
    _check(split(x, t), net(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy())
    with pytest.raises(ValueError, match="parts must be an integer >= 1"):
        SplitOnnxModel(plain, parts=0)


def test_bit_identical_with_one_and_two_onnxruntime_threads(ckpt):
    from fastddpm.runtime import OnnxModel
    from fastddpm.pipelines.engines import cached_export

    pipe = fastddpm.Pipeline.from_checkpoint(ckpt)
    path = cached_export(pipe)
    outs = []
    for threads in (1, 2):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        model = OnnxModel(path, ["CPUExecutionProvider"], session_options=so)
        x = np.random.default_rng(1).standard_normal((999, 2), dtype=np.float32)
        outs.append(model(x, 321))
    np.testing.assert_array_equal(outs[0], outs[1])


# -- the calibration cache -------------------------------------------------------------------

def _fake(times):
    """Candidates whose calls take the given seconds (sleeps: no CPU, so load cannot reorder them)."""
    import time

    calls = {name: 0 for name in times}

    def factory(name):
        def make():
            def run():
                calls[name] += 1
                time.sleep(times[name])
            return run
        return make
    return {name: factory(name) for name in times}, calls


def test_calibration_measures_once_then_reads_its_record(tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "DROP_FACTOR", 1e9)  # keep both in every round
    cands, calls = _fake({"a": 0.03, "b": 0.001})
    kw = dict(model_id="m1", batch_shape=(64, 2), directory=str(tmp_path), budget_s=0.02)
    first = calibrate.choose(cands, **kw)
    assert (first.name, first.source) == ("b", "calibrated") and first.seconds["a"] > first.seconds["b"]
    record = json.loads(open(first.path).read())
    assert record["choice"] == "b" and len(record["samples"]["a"]) >= calibrate.MIN_ROUNDS
    assert record["inputs"]["batch_shape"] == [64, 2] and record["inputs"]["versions"]["numpy"] == np.__version__
    n = dict(calls)
    again = calibrate.choose(cands, **kw)
    assert (again.name, again.source, again.path) == ("b", "cached", first.path) and calls == n
    assert "cached calibration" in again.describe() and "per call at batch 64: b " in again.describe()


def test_a_much_slower_candidate_is_dropped_after_one_round(tmp_path):
    cands, calls = _fake({"fast": 0.001, "slow": 0.2})  # ×200: dropped even if load delays "fast" ~10 ms
    choice = calibrate.choose(cands, model_id="m1", batch_shape=(8, 2), directory=str(tmp_path), budget_s=0.05)
    assert choice.name == "fast" and calls["slow"] == 2 and calls["fast"] >= 1 + calibrate.MIN_ROUNDS  # warm-up + 1


def test_calibration_key_changes_with_model_machine_batch_and_libraries(tmp_path, monkeypatch):
    base = calibrate.calibration_inputs("m1", (64, 2), ["a", "b"])
    key = calibrate.calibration_key(base)
    assert calibrate.calibration_key(calibrate.calibration_inputs("m1", (64, 2), ["b", "a"])) == key
    assert calibrate.calibration_key(calibrate.calibration_inputs("m2", (64, 2), ["a", "b"])) != key
    assert calibrate.calibration_key(calibrate.calibration_inputs("m1", (128, 2), ["a", "b"])) != key
    assert calibrate.calibration_key(calibrate.calibration_inputs("m1", (64, 2), ["a", "b", "c"])) != key
    machine, versions = calibrate.machine_fingerprint, calibrate.library_versions
    monkeypatch.setattr(calibrate, "machine_fingerprint", lambda: dict(machine(), cores=machine()["cores"] + 1))
    assert calibrate.calibration_key(calibrate.calibration_inputs("m1", (64, 2), ["a", "b"])) != key
    monkeypatch.setattr(calibrate, "machine_fingerprint", lambda: dict(machine(), cpu="another CPU"))
    assert calibrate.calibration_key(calibrate.calibration_inputs("m1", (64, 2), ["a", "b"])) != key
    monkeypatch.setattr(calibrate, "machine_fingerprint", machine)
    monkeypatch.setattr(calibrate, "library_versions", lambda: dict(versions(), onnxruntime="0.0.1"))
    assert calibrate.calibration_key(calibrate.calibration_inputs("m1", (64, 2), ["a", "b"])) != key
    monkeypatch.setattr(calibrate, "library_versions", versions)
    assert calibrate.calibration_key(calibrate.calibration_inputs("m1", (64, 2), ["a", "b"])) == key
    # a record stored under a key is not taken for other inputs, even when copied to that key's name
    cands, calls = _fake({"a": 0.001, "b": 0.03})
    first = calibrate.choose(cands, model_id="m1", batch_shape=(64, 2), directory=str(tmp_path), budget_s=0.01)
    other = calibrate.calibration_key(calibrate.calibration_inputs("m2", (64, 2), ["a", "b"]))
    os.replace(first.path, tmp_path / f"{other}.json")
    with pytest.warns(RuntimeWarning, match="do not match"):
        second = calibrate.choose(cands, model_id="m2", batch_shape=(64, 2), directory=str(tmp_path), budget_s=0.01)
    assert second.source == "calibrated"


@pytest.mark.parametrize("damage", ["torn", "binary", "not-object", "wrong-choice", "bad-seconds", "old-format",
                                    "empty"])
def test_a_damaged_calibration_file_is_measured_again_and_replaced(tmp_path, damage):
    cands, _ = _fake({"a": 0.001, "b": 0.03})
    kw = dict(model_id="m1", batch_shape=(8, 2), directory=str(tmp_path), budget_s=0.01)
    path = calibrate.choose(cands, **kw).path
    text = open(path).read()
    record = json.loads(text)
    bad = {"torn": text[: len(text) // 2], "not-object": "[1, 2]", "empty": "",
           "wrong-choice": json.dumps(dict(record, choice="tensorrt")),
           "bad-seconds": json.dumps(dict(record, seconds={"a": -1})),
           "old-format": json.dumps(dict(record, format=0))}
    if damage == "binary":
        open(path, "wb").write(b"\xff\xfe\x00garbage")
    else:
        open(path, "w").write(bad[damage])
    with pytest.warns(RuntimeWarning, match="damaged runtime calibration"):
        again = calibrate.choose(cands, **kw)
    assert (again.name, again.source) == ("a", "calibrated")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibrate.choose(cands, **kw).source == "cached"  # the file was replaced whole


def _calibrate_in_child(directory, out, barrier):
    import time

    from fastddpm.runtime import calibrate as cal

    calls = []

    def make(name, sec):
        def factory():
            def run():
                calls.append(name)
                time.sleep(sec)
            return run
        return factory
    barrier.wait()
    choice = cal.choose({"a": make("a", 0.002), "b": make("b", 0.05)}, model_id="shared", batch_shape=(16, 2),
                        directory=directory, budget_s=0.3)
    with open(out, "w") as f:
        json.dump({"name": choice.name, "source": choice.source, "calls": len(calls)}, f)


def test_two_processes_calibrating_at_once_measure_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"r{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_calibrate_in_child, args=(str(tmp_path / "cal"), str(o), barrier)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [json.loads(o.read_text()) for o in outs]
    assert {r["name"] for r in results} == {"a"}
    assert sorted(r["source"] for r in results) == ["cached", "calibrated"]
    assert sorted(r["calls"] for r in results)[0] == 0  # the waiting one measured nothing
    assert len(list((tmp_path / "cal").glob("*.json"))) == 1


def test_an_unusable_cache_directory_measures_without_caching(tmp_path):
    cands, calls = _fake({"a": 0.001, "b": 0.03})
    (tmp_path / "file").write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="measuring without caching"):
        choice = calibrate.choose(cands, model_id="m1", batch_shape=(8, 2), directory=str(tmp_path / "file" / "cal"),
                                  budget_s=0.01)
    assert (choice.name, choice.source, choice.path) == ("a", "calibrated", None)


def test_environment_override_and_its_errors(tmp_path, monkeypatch):
    cands, calls = _fake({"a": 0.001, "b": 0.03})
    kw = dict(model_id="m1", batch_shape=(8, 2), directory=str(tmp_path), budget_s=0.01)
    monkeypatch.setenv(calibrate.ENV_VAR, "b")
    choice = calibrate.choose(cands, **kw)
    assert (choice.name, choice.source) == ("b", "env") and sum(calls.values()) == 0
    assert "FASTDDPM_RUNTIME" in choice.describe()
    monkeypatch.setenv(calibrate.ENV_VAR, "tensorrt")
    with pytest.raises(ValueError, match=r"FASTDDPM_RUNTIME='tensorrt' is not a runtime .* use one of a, b"):
        calibrate.choose(cands, **kw)
    monkeypatch.setenv(calibrate.ENV_VAR, "auto")
    assert calibrate.choose(cands, **kw).source == "calibrated"
    with pytest.raises(ValueError, match="model_id must be a non-empty string"):
        calibrate.choose(cands, model_id="", batch_shape=(8, 2), directory=str(tmp_path))


def test_auto_engine_calibrates_once_per_batch_and_the_cli_shows_it(ckpt, tmp_path, monkeypatch, capsys):
    from fastddpm.cli import main

    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    pipe = fastddpm.Pipeline.from_checkpoint(ckpt)
    pipe.sample(300, steps=3, sampler="ddim", progress=False)
    choice = pipe.runtime_choice
    assert choice.source == "calibrated" and choice.name in calibrate_names() and choice.batch == 512
    assert set(choice.seconds) == set(calibrate_names())
    records = list((tmp_path / "cache" / "calibration").glob("*.json"))
    assert len(records) == 1 and (tmp_path / "cache" / "onnx").is_dir()  # beside the export cache
    fastddpm.Pipeline.from_checkpoint(ckpt).sample(257, steps=3, sampler="ddim", progress=False)  # same bucket
    assert len(list((tmp_path / "cache" / "calibration").glob("*.json"))) == 1
    capsys.readouterr()
    assert main(["sample", str(ckpt), "--n", "300", "--steps", "3", "--out", str(tmp_path / "a.npy")]) == 0
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("network runtime:")]
    assert len(line) == 1 and "cached calibration" in line[0] and "batch 512" in line[0]
    assert main(["sample", str(ckpt), "--n", "300", "--steps", "3", "--out", str(tmp_path / "b.npy"),
                 "--overwrite", "--quiet"]) == 0
    assert "network runtime" not in capsys.readouterr().err


class _BatchTwo(torch.nn.Module):
    """Exports without error, but the tracer (batch 2) bakes in the branch: wrong at other batches."""
    sample_shape = (2,)

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x, t):
        y = self.lin(x) * 0.01
        return y * 3 if x.shape[0] == 2 else y


def _user_pipeline(module):
    from fastddpm.data import Normalization

    class Ck:
        model = module
        schedule = fastddpm.Schedule.linear(100)
        normalization = Normalization.identity(1)
        prediction = "epsilon"
        sample_shape = (2,)
        config = None
    return fastddpm.Pipeline(Ck())


def test_a_user_module_whose_export_is_wrong_stays_on_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    pipe = _user_pipeline(_BatchTwo())
    with pytest.warns(RuntimeWarning, match="differs from the torch module"):
        x = pipe.sample(300, steps=3, sampler="ddim", seed=1, progress=False)
    assert pipe.runtime_choice.name == "torch"
    np.testing.assert_array_equal(x, pipe.sample(300, steps=3, sampler="ddim", seed=1, progress=False,
                                                 engine="torch"))
    record = json.loads(open(pipe.runtime_choice.path).read())
    assert set(record["rejected"]) == {r for r in calibrate_names() if r != "torch"}


def test_a_rejected_candidate_is_left_out_and_recorded(tmp_path):
    cands, calls = _fake({"a": 0.03, "b": 0.001})

    def refuse():
        raise calibrate.CandidateRejected("wrong output")
    cands["b"] = refuse
    with pytest.warns(RuntimeWarning, match="'b' left out: wrong output"):
        choice = calibrate.choose(cands, model_id="m1", batch_shape=(8, 2), directory=str(tmp_path), budget_s=0.01)
    assert choice.name == "a" and json.loads(open(choice.path).read())["rejected"] == {"b": "wrong output"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibrate.choose(cands, model_id="m1", batch_shape=(8, 2), directory=str(tmp_path)).name == "a"


def test_a_user_module_keeps_working_on_the_torch_path(tmp_path, monkeypatch):
    """A module the exporter cannot handle: auto warns and samples with torch."""
    pipe = _user_pipeline(_BatchTwo())
    monkeypatch.setattr("fastddpm.pipelines.engines.cached_export",
                        lambda p, d=None: (_ for _ in ()).throw(RuntimeError("cannot trace")))
    with pytest.warns(RuntimeWarning, match="sampling with torch: exporting _BatchTwo to ONNX .* cannot trace"):
        x = pipe.sample(5, steps=2, sampler="ddim", progress=False)
    assert x.shape == (5, 2) and pipe.runtime_choice.name == "torch"
