"""Checkpoints: round trip, refusal of missing / corrupt / truncated / tampered / unknown, atomicity."""
import json
import pickle

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm import checkpoint as ckpt
from fastddpm._io import sha256_file
from fastddpm.checkpoint import CheckpointError, CheckpointNotFoundError
from fastddpm.data import Normalization, load_dataset
from fastddpm.nets import MLP, MODEL_CLASSES, UNet


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.fixture
def mlp_ckpt(tmp_path):
    torch.manual_seed(0)
    model = _perturbed(MLP(2, width=16, depth=2), 1)
    ema = _perturbed(MLP(2, width=16, depth=2), 2)
    norm = load_dataset("butterfly", 100).normalization
    path = fastddpm.save(tmp_path / "ck", model, fastddpm.Schedule.cosine(100), ema_model=ema,
                         normalization=norm, prediction="v_prediction", train_config={"iters": 7})
    return path, model, ema, norm


def test_round_trip_identical_outputs(mlp_ckpt):
    path, model, ema, norm = mlp_ckpt
    x, t = torch.randn(9, 2), torch.randint(0, 100, (9,))
    c = fastddpm.load(path)
    assert c.weights == "ema" and not c.model.training
    with torch.no_grad():
        assert torch.equal(c.model(x, t), ema(x, t))
        assert torch.equal(fastddpm.load(path, ema=False).model(x, t), model(x, t))
    assert c.schedule == fastddpm.Schedule.cosine(100)
    assert c.normalization == norm
    assert c.prediction == "v_prediction" and c.sample_shape == (2,)
    assert c.config["train"] == {"iters": 7} and c.config["model"]["class"] == "MLP"
    assert c.config["fastddpm_version"] == fastddpm.__version__


def test_unet_round_trip_without_ema(tmp_path):
    model = _perturbed(UNet(1, base_channels=8), 3)
    norm = Normalization(np.full((1, 1, 1), 8.0), np.full((1, 1, 1), 8.0))
    path = fastddpm.save(tmp_path / "u", model, fastddpm.Schedule.linear(50), normalization=norm,
                         sample_shape=(1, 8, 8))
    c = fastddpm.load(path)
    assert c.weights == "model" and c.sample_shape == (1, 8, 8)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 40])
    with torch.no_grad():
        assert torch.equal(c.model(x, t), model(x, t))


def test_custom_schedule_round_trip(tmp_path):
    sched = fastddpm.Schedule.from_betas(np.linspace(1e-3, 0.05, 30))
    path = fastddpm.save(tmp_path / "c", MLP(1, width=8, depth=1, num_steps=30), sched,
                         normalization=Normalization.identity())
    assert fastddpm.load(path).schedule == sched


def test_loading_never_unpickles(mlp_ckpt, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    fastddpm.load(mlp_ckpt[0])


def test_missing_checkpoint_and_files(mlp_ckpt, tmp_path):
    path = mlp_ckpt[0]
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        fastddpm.load(tmp_path / "nowhere")
    (path / "ema.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="missing ema.safetensors"):
        fastddpm.load(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        fastddpm.load(path)
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_corrupt_weights_refused(mlp_ckpt):
    path = mlp_ckpt[0]
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # flip bits of a weight: same size, different content
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        fastddpm.load(path, ema=False)
    fastddpm.load(path, ema=True)  # the intact EMA file still loads


def test_truncated_weights_refused(mlp_ckpt):
    path = mlp_ckpt[0]
    f = path / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        fastddpm.load(path)


def test_truncated_file_with_matching_record_refused(mlp_ckpt):
    # Even if config.json were rewritten to match, a truncated safetensors file is not parsed as weights.
    path = mlp_ckpt[0]
    # (Cut 3 bytes: still more than the weights need, so the size check of the config passes.)
    f = path / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:-3])
    config = json.loads((path / "config.json").read_text())
    config["files"]["ema.safetensors"] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        fastddpm.load(path)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["model"].update({"class": "Evil"}), "unknown|not one of"),
    (lambda c: c["model"]["kwargs"].update({"width": 32}), "does not fit|expects|does not belong to these weights"),
    (lambda c: c["model"]["kwargs"].update({"colour": 1}), "cannot build MLP"),
    (lambda c: c.update({"prediction": "noise"}), "prediction"),
    (lambda c: c.update({"format_version": 99}), "format_version"),
    (lambda c: c["schedule"].update({"name": "weird"}), "schedule"),
    (lambda c: c.pop("normalization"), "normalization"),
])
def test_tampered_config_refused(mlp_ckpt, edit, match):
    path = mlp_ckpt[0]
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        fastddpm.load(path)


def test_corrupt_config_refused(mlp_ckpt):
    path = mlp_ckpt[0]
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        fastddpm.load(path)


def test_unknown_class_refused_on_save(tmp_path):
    class Custom(torch.nn.Module):
        def forward(self, x, t):
            return x

    with pytest.raises(CheckpointError, match="MODEL_CLASSES"):
        fastddpm.save(tmp_path / "x", Custom(), fastddpm.Schedule.linear(10), normalization=Normalization.identity(),
                      sample_shape=(2,))
    assert not (tmp_path / "x").exists()


def test_registered_custom_class_loads(tmp_path, monkeypatch):
    class Tiny(torch.nn.Module):
        def __init__(self, dim=2):
            super().__init__()
            self.config = {"dim": dim}
            self.lin = torch.nn.Linear(dim, dim)

        def forward(self, x, t):
            return self.lin(x)

    monkeypatch.setitem(MODEL_CLASSES, "Tiny", Tiny)
    path = fastddpm.save(tmp_path / "t", Tiny(), fastddpm.Schedule.linear(10),
                         normalization=Normalization.identity(), sample_shape=(2,))
    assert isinstance(fastddpm.load(path).model, Tiny)


def test_failed_save_keeps_the_good_checkpoint(mlp_ckpt, monkeypatch):
    path, model, ema, norm = mlp_ckpt
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def half_then_crash(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second file: write half of it, then die
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:
                f.truncate(50)
            raise OSError("disk full")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        fastddpm.save(path, _perturbed(model, 9), fastddpm.Schedule.cosine(100), ema_model=ema, normalization=norm)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]  # no temp or old directories left
    fastddpm.load(path)


def test_overwrite_replaces_whole_checkpoint(mlp_ckpt):
    path, model, ema, norm = mlp_ckpt
    fastddpm.save(path, model, fastddpm.Schedule.cosine(100), normalization=norm)  # now without EMA
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert fastddpm.load(path).weights == "model"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]


def test_refuses_to_replace_other_directories(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match="not a fastddpm checkpoint"):
        fastddpm.save(other, MLP(2, width=8, depth=1), fastddpm.Schedule.linear(10),
                      normalization=Normalization.identity())
    assert (other / "cat.jpg").read_bytes() == b"meow"


def test_train_state_round_trip(tmp_path):
    model = MLP(2, width=8, depth=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 2), torch.tensor([1, 2, 3, 4])).pow(2).mean().backward()
        opt.step()
    path = fastddpm.save(tmp_path / "s", model, fastddpm.Schedule.linear(10), normalization=Normalization.identity(),
                         train_state={"step": 3, "optimizer": opt.state_dict(), "losses": [0.5, 0.25, 0.125]})
    state = ckpt.load_train_state(path)
    assert state["step"] == 3 and state["losses"] == [0.5, 0.25, 0.125]
    opt2 = torch.optim.Adam(MLP(2, width=8, depth=1).parameters(), lr=1.0)
    opt2.load_state_dict(state["optimizer"])
    want, got = opt.state_dict(), opt2.state_dict()
    assert got["param_groups"][0]["lr"] == 3e-3
    for idx, per in want["state"].items():
        for key, value in per.items():
            assert torch.equal(got["state"][idx][key], value)
    f = path / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        ckpt.load_train_state(path)


def test_bad_save_arguments(tmp_path):
    m, s, n = MLP(2, width=8, depth=1), fastddpm.Schedule.linear(10), Normalization.identity()
    with pytest.raises(ValueError, match="prediction"):
        fastddpm.save(tmp_path / "a", m, s, normalization=n, prediction="noise")
    with pytest.raises(TypeError, match="schedule"):
        fastddpm.save(tmp_path / "a", m, "linear", normalization=n)
    with pytest.raises(ValueError, match="sample_shape"):
        fastddpm.save(tmp_path / "a", UNet(1, base_channels=8), s, normalization=n)
    with pytest.raises(CheckpointError, match="JSON"):
        fastddpm.save(tmp_path / "a", m, s, normalization=n, train_config={"x": object()})
    assert not (tmp_path / "a").exists()


# -- issue 16: configs that ask for absurd or contradictory models ------------------------------


def _edit_config(path, fn):
    config = json.loads((path / "config.json").read_text())
    fn(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("field, value, match", [
    # (depth = 10**6 is left out: building a million Linear modules even on the meta device takes
    # tens of seconds; the byte bound still refuses it.)
    ("width", 10**9, r"config\.json: MLP with .*model\.kwargs\.width = 1000000000.* would need [0-9,]+ bytes of "
                     r"weights, over the limit"),
    ("width", 64, r"config\.json: MLP with .*model\.kwargs\.width = 64.* needs 27,720 bytes of weights but "
                  r"model\.safetensors holds 5,616; the config does not belong to these weights"),
])
def test_absurd_model_sizes_refused_before_allocation(mlp_ckpt, monkeypatch, field, value, match):
    path = mlp_ckpt[0]
    _edit_config(path, lambda c: c["model"]["kwargs"].update({field: value}))
    import fastddpm.nets as nets

    devices = []
    real = nets.build

    def spy(name, **kwargs):
        devices.append(torch.get_default_device().type)
        return real(name, **kwargs)

    monkeypatch.setattr(nets, "build", spy)
    with pytest.raises(CheckpointError, match=match):
        fastddpm.load(path)
    assert set(devices) == {"meta"}  # counted on the meta device; never built for real


def test_sample_shape_contradicting_the_model_caught_at_load(mlp_ckpt, tmp_path):
    path = mlp_ckpt[0]
    _edit_config(path, lambda c: c.update(sample_shape=[3]))
    with pytest.raises(CheckpointError, match=r"config\.json: sample_shape \[3\] contradicts the model \(MLP samples "
                                              r"have shape \[2\]"):
        fastddpm.load(path)
    _edit_config(path, lambda c: c.update(sample_shape="2"))
    with pytest.raises(CheckpointError, match="sample_shape must be a non-empty list of positive integers"):
        fastddpm.load(path)
    unet = fastddpm.save(tmp_path / "u", UNet(1, base_channels=8), fastddpm.Schedule.linear(10),
                         normalization=Normalization.identity(), sample_shape=(1, 8, 8))
    _edit_config(unet, lambda c: c.update(sample_shape=[3, 8, 8]))
    with pytest.raises(CheckpointError, match=r"UNet has in_channels = 1, so samples are \[1, H, W\]"):
        fastddpm.load(unet)


def test_deeply_nested_or_huge_config_names_the_file(mlp_ckpt, monkeypatch):
    path = mlp_ckpt[0]
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"ck/config\.json is nested too deeply"):
        fastddpm.load(path)
    monkeypatch.setattr(ckpt, "MAX_CONFIG_BYTES", 1000)
    with pytest.raises(CheckpointError, match=r"ck/config\.json has 200,000 bytes"):
        fastddpm.load(path)


def test_load_finds_the_copy_an_interrupted_save_left(mlp_ckpt):
    """The fallback save's one gap: killed between its renames, path is missing and .ck.old-* holds the
    checkpoint (tests/test_faults.py kills real saves there; this is the state it leaves)."""
    path, model, ema, norm = mlp_ckpt
    old = path.parent / ".ck.old-1234abcd"
    path.rename(old)
    with pytest.warns(RuntimeWarning, match=r"checkpoint .*ck is missing but a complete copy \.ck\.old-1234abcd"):
        c = fastddpm.load(path)
    assert c.path == old and c.weights == "ema"
    fastddpm.save(path, model, fastddpm.Schedule.cosine(100), normalization=norm)  # restores, then replaces
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]
    assert fastddpm.load(path).weights == "model"
