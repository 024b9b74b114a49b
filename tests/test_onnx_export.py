"""export_onnx: the ONNX graph computes what the torch net computes, and carries the metadata."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import fastddpm  # noqa: E402
from fastddpm import checkpoint  # noqa: E402
from fastddpm.cli import main as cli_main  # noqa: E402
from fastddpm.data import Normalization  # noqa: E402
from fastddpm.nets import MLP, UNet  # noqa: E402
from fastddpm.onnx_export import export_onnx  # noqa: E402
from fastddpm.runtime import OnnxModel  # noqa: E402

NETS = {
    "mlp-sinusoidal": (lambda: MLP(dim=2, width=64, depth=3), (2,)),
    "mlp-learned": (lambda: MLP(dim=2, width=64, depth=3, time_embedding="learned"), (2,)),
    "unet": (lambda: UNet(in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                          attention=True, norm_groups=8), (1, 8, 8)),
}


def torch_out(net, x, t):
    with torch.no_grad():
        return net(torch.from_numpy(x), torch.from_numpy(t)).numpy()


@pytest.mark.parametrize("name", sorted(NETS))
def test_onnxruntime_matches_torch_with_dynamic_batch(tmp_path, name):
    build, shape = NETS[name]
    torch.manual_seed(0)
    net = build().eval()
    with torch.no_grad():  # the UNet's output conv starts at zero: give every weight a random part
        for param in net.parameters():
            param.add_(0.1 * torch.randn_like(param))
    path = export_onnx(net, tmp_path / "net.onnx", sample_shape=shape, schedule=fastddpm.Schedule.linear(1000))
    model = OnnxModel(path)
    assert model.fixed_batch is None and model.sample_shape == shape
    rng = np.random.default_rng(1)
    for batch in (1, 37):  # one file, two batch sizes: the batch axis is dynamic
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        t = rng.integers(0, 1000, batch).astype(np.int64)
        got = model(x, t)
        want = torch_out(net, x, t)
        assert got.shape == want.shape == x.shape
        assert np.abs(want).max() > 0.1  # a net that outputs (nearly) nothing would pass vacuously
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_fixed_batch_export_and_opset(tmp_path):
    torch.manual_seed(0)
    net = MLP(dim=2, width=32, depth=2)
    path = export_onnx(net, tmp_path / "fixed.onnx", dynamic_batch=False, opset=13)
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [13]
    model = OnnxModel(path)
    assert model.fixed_batch == 1
    x = np.random.default_rng(2).standard_normal((5, 2)).astype(np.float32)
    t = np.arange(5, dtype=np.int64) * 100
    np.testing.assert_allclose(model(x, t), torch_out(net, x, t), rtol=0, atol=1e-5)
    assert net.training  # export leaves the module's mode as it found it


def test_net_ignoring_t_keeps_the_t_input(tmp_path):
    class NoTime(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, t):
            return self.lin(x)

    model = OnnxModel(export_onnx(NoTime(), tmp_path / "nt.onnx", sample_shape=(3,)))
    assert {i.name for i in model.session.get_inputs()} == {"x", "t"}
    assert model.schedule is None and model.metadata.present  # exported without a schedule


def test_checkpoint_export_carries_metadata(tmp_path):
    torch.manual_seed(0)
    net = MLP(dim=2, width=32, depth=2)
    schedule = fastddpm.Schedule.cosine(100)
    norm = Normalization(np.array([0.5, -1.0]), np.array([2.0, 3.0]))
    ckpt = checkpoint.save(tmp_path / "ckpt", net, schedule, normalization=norm, prediction="v_prediction")
    out = tmp_path / "model.onnx"
    assert cli_main(["export", str(ckpt), "--out", str(out), "--quiet"]) == 0
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["fastddpm.schedule"]) == schedule.to_config()
    assert props["fastddpm.prediction"] == "v_prediction"
    assert Normalization.from_config(json.loads(props["fastddpm.normalization"])) == norm
    assert json.loads(props["fastddpm.sample_shape"]) == [2]
    assert props["fastddpm.version"] == fastddpm.__version__
    assert json.loads(props["fastddpm.model"])["class"] == "MLP"
    model = OnnxModel(out)
    assert model.schedule == schedule and model.prediction == "v_prediction"
    # the same net through fastddpm.export_onnx(Checkpoint) gives the same graph output
    loaded = fastddpm.load(ckpt)
    x = np.random.default_rng(3).standard_normal((9, 2)).astype(np.float32)
    t = np.arange(9, dtype=np.int64) * 11
    np.testing.assert_allclose(model(x, t), torch_out(loaded.model, x, t), rtol=0, atol=1e-5)
    # an existing file is not overwritten without --force
    assert cli_main(["export", str(ckpt), "--out", str(out), "--quiet"]) == 2
    assert cli_main(["export", str(ckpt), "--out", str(out), "--quiet", "--force", "--opset", "18"]) == 0


def test_bad_arguments_and_atomic_write(tmp_path):
    net = MLP(dim=2, width=8, depth=1)
    with pytest.raises(ValueError, match="opset must be an integer"):
        export_onnx(net, tmp_path / "a.onnx", opset=3)
    with pytest.raises(ValueError, match="prediction must be one of"):
        export_onnx(net, tmp_path / "a.onnx", prediction="noise")
    with pytest.raises(TypeError, match="model_or_checkpoint must be"):
        export_onnx(object(), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="sample_shape is required"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "a.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(net, tmp_path / "no" / "dir" / "a.onnx")

    class Broken(torch.nn.Module):
        def forward(self, x, t):
            raise RuntimeError("boom")

    target = tmp_path / "b.onnx"
    target.write_bytes(b"old")
    with pytest.raises(Exception, match="boom"):
        export_onnx(Broken(), target, sample_shape=(2,))
    assert target.read_bytes() == b"old"  # the old file survives a failed export …
    assert sorted(os.listdir(tmp_path)) == ["b.onnx"]  # … and no temp file is left behind
