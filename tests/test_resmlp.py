"""ResMLP, the default vector net: shapes, config round trip, time path once, ONNX with a dynamic batch."""
import numpy as np
import pytest
import torch

from fastddpm.nets import MODEL_CLASSES, ResMLP, build
from fastddpm.nets.resmlp import FourierFeatures, fourier_frequencies


def _net(**kw):
    torch.manual_seed(0)
    net = ResMLP(**{"width": 32, "depth": 2, **kw}).eval()
    with torch.no_grad():  # the output layers start at zero; make every block matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def test_fourier_features_closed_form():
    f = fourier_frequencies(4, 8.0)
    assert torch.allclose(f, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    x = torch.tensor([[0.5, -1.0]])
    got = FourierFeatures(2, 4, 8.0)(x)
    args = torch.tensor([0.5 * 1, 0.5 * 2, 0.5 * 4, 0.5 * 8, -1, -2, -4, -8.0])
    assert torch.allclose(got, torch.cat([x[0], torch.sin(args), torch.cos(args)])[None])
    assert torch.equal(FourierFeatures(2, 0, 1.0)(x), x)


def test_registered_and_config_rebuilds_same_net():
    net = _net(fourier_features=3, fourier_scale=10.0)
    assert MODEL_CLASSES["ResMLP"] is ResMLP
    twin = build("ResMLP", **net.config)
    twin.load_state_dict(net.state_dict())
    x, t = torch.randn(6, 2), torch.arange(6)
    with torch.no_grad():
        assert torch.equal(twin(x, t), net(x, t))
    assert net.config["fourier_features"] == 3 and net.config["fourier_scale"] == 10.0
    assert "features.freqs" not in net.state_dict()  # rebuilt from the config, not stored


def test_time_path_once_for_shared_t():
    net = _net()
    x = torch.randn(7, 2)
    full = torch.full((7,), 123, dtype=torch.int64)
    calls = []
    net.time_embed.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    with torch.no_grad():
        want = net(x, full)
        strided = net(x, torch.tensor([123]).expand(7))
        single = net(x, torch.tensor([123]))
    assert calls == [(7,), (1,), (1,)]
    torch.testing.assert_close(strided, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(single, want, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # per-sample t really differ per row
        mixed = net(x, torch.arange(7) * 100)
    assert not torch.allclose(mixed, want)


@pytest.mark.parametrize("kw, match", [
    (dict(fourier_scale=0.5), "fourier_scale"), (dict(fourier_features=-1), "fourier_features"),
    (dict(activation="swish"), "activation"), (dict(time_dim=3), "time_dim"), (dict(width=0), "width"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        ResMLP(**kw)


def test_onnx_export_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fastddpm.onnx_export import export_onnx

    net = _net()
    path = export_onnx(net, tmp_path / "resmlp.onnx", sample_shape=(2,))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b in (1, 5, 33):
        x = np.random.default_rng(b).standard_normal((b, 2)).astype(np.float32)
        t = np.arange(b, dtype=np.int64) * 7
        with torch.no_grad():
            want = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": x, "t": t})[0], want, rtol=1e-4, atol=1e-5)
