"""A conditional network through ONNX (issue 25): the export takes a labels input and records the
label set; OnnxModel / the ONNX Runtime engine sample it with labels and guidance as torch does.

Tolerance: onnxruntime and torch round a network's float32 output differently (≤ ~1e-6 per call for
these nets); over a 10-call guided run that stays under 1e-4 of the samples' scale (the same bound
as tests/test_onnx_sampling.py)."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import fastddpm  # noqa: E402
from fastddpm import checkpoint  # noqa: E402
from fastddpm.data import Normalization  # noqa: E402
from fastddpm.labels import LabelSet  # noqa: E402
from fastddpm.nets import ResMLP, UNet  # noqa: E402
from fastddpm.runtime import OnnxModel  # noqa: E402

T = 50


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = ResMLP(dim=2, width=16, depth=1, num_steps=T, num_classes=3)
    with torch.no_grad():
        model.label_embed.table.weight.normal_()
    path = tmp_path_factory.mktemp("onnxc") / "c"
    checkpoint.save(path, model, fastddpm.Schedule.linear(T), normalization=Normalization([1.0, 0.0], [2.0, 1.0]),
                    labels=LabelSet(3, 3, (1, 1, 2), 0.1, "test"))
    return path


def test_export_has_a_labels_input_and_the_label_set(cond_ckpt, tmp_path):
    path = fastddpm.export_onnx(cond_ckpt, tmp_path / "c.onnx")
    m = OnnxModel(path)
    assert [i.name for i in m.session.get_inputs()] == ["x", "t", "labels"]
    assert (m.num_classes, m.null_label, m.label_counts) == (3, 3, (1, 1, 2))
    assert m.metadata.labels.meaning == "test"
    net = fastddpm.load(cond_ckpt).model
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 1])
    with torch.no_grad():
        want = net(torch.from_numpy(x), torch.full((5,), 17), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(m(x, 17, y), want, rtol=0, atol=1e-5)
    with torch.no_grad():
        null = net(torch.from_numpy(x), torch.full((5,), 17)).numpy()
    np.testing.assert_allclose(m(x, 17), null, rtol=0, atol=1e-5)  # no labels: the "no label" class


def test_unet_with_labels_exports():
    torch.manual_seed(0)
    net = UNet(base_channels=8, num_classes=10).eval()
    with torch.no_grad():
        net.label_embed.table.weight.normal_()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = fastddpm.export_onnx(net, f"{d}/u.onnx", sample_shape=(1, 8, 8))
        m = OnnxModel(path)
        x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
        y = np.array([0, 9, 10])
        with torch.no_grad():
            want = net(torch.from_numpy(x), torch.full((3,), 400), torch.from_numpy(y)).numpy()
        np.testing.assert_allclose(m(x, 400, y), want, rtol=0, atol=1e-5)


def test_onnx_sampler_guided_equals_torch(cond_ckpt, tmp_path):
    path = fastddpm.export_onnx(cond_ckpt, tmp_path / "c.onnx")
    kw = dict(sampler="dpmpp2m", steps=10, seed=3, labels="balanced", guidance=3.0, guidance_rescale=0.4,
              progress=False)
    x_onnx, y_onnx = fastddpm.OnnxSampler(path).sample(40, **kw)
    pipe = fastddpm.Pipeline.from_checkpoint(cond_ckpt)
    x_torch, y_torch = pipe.sample(40, engine="torch", **kw)
    x_engine, y_engine = pipe.sample(40, engine="onnx", **kw)  # the engine's own cached export
    np.testing.assert_array_equal(y_onnx, y_torch)
    np.testing.assert_array_equal(y_engine, y_torch)
    scale = float(np.abs(x_torch).max())
    np.testing.assert_allclose(x_onnx, x_torch, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(x_engine, x_torch, rtol=0, atol=1e-4 * scale)
    x_f, y_f = fastddpm.OnnxSampler(path).sample(40, **{**kw, "labels": "frequencies"})
    assert set(np.unique(y_f)) <= {0, 1, 2}


def test_onnx_file_refusals(cond_ckpt, tmp_path):
    path = fastddpm.export_onnx(cond_ckpt, tmp_path / "c.onnx")
    m = OnnxModel(path)
    with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \[2\]"):
        m(np.zeros((2, 2), np.float32), 3, np.zeros(3, np.int64))
    res = subprocess.run([sys.executable, "-m", "fastddpm", "sample", str(path), "--n", "4", "--out",
                          str(tmp_path / "s.npy"), "--label", "5", "--quiet"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "fastddpm sample: error: labels (--label / --labels) holds 5, outside the model's classes 0 … 2 (3 classes)"]


def test_stream_and_dataset_carry_labels(cond_ckpt):
    """Pipeline.stream with labels yields LabelledBatch(start, x, labels): concatenated, the in-memory result."""
    from fastddpm.pipelines import LabelledBatch

    pipe = fastddpm.Pipeline.from_checkpoint(cond_ckpt)
    kw = dict(sampler="dpmpp2m", steps=4, seed=3, labels="balanced", guidance=2.0, engine="torch")
    batches = list(pipe.stream(10, batch_size=4, **kw))
    assert all(isinstance(b, LabelledBatch) for b in batches) and [b.start for b in batches] == [0, 4, 8]
    x, y = pipe.sample(10, batch_size=4, progress=False, **kw)
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), y)
    items = list(pipe.dataset(10, batch_size=4, **kw))
    np.testing.assert_array_equal(torch.cat([b.labels for b in items]).numpy(), y)
