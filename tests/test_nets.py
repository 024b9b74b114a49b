"""ε-networks: shapes, time conditioning, argument checks, registry, ONNX export."""
import io

import numpy as np
import pytest
import torch

from fastddpm.nets import MLP, MODEL_CLASSES, UNet, build


def _randomise(model, seed=0):
    # UNet's output conv starts at zero; give every weight a non-trivial value for the checks.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("time_embedding", ["sinusoidal", "learned"])
@pytest.mark.parametrize("activation", ["relu", "silu", "gelu"])
def test_mlp_shape_and_time_dependence(time_embedding, activation):
    m = _randomise(MLP(3, width=32, depth=2, activation=activation, time_embedding=time_embedding, num_steps=50))
    x = torch.randn(6, 3)
    t = torch.tensor([0, 1, 2, 10, 30, 49])
    y = m(x, t)
    assert y.shape == (6, 3) and y.dtype == torch.float32
    # t enters the net: same x, different t → different output, per sample (no batch mixing).
    y2 = m(x, t.flip(0))
    assert not torch.allclose(y, y2)
    assert torch.allclose(m(x[:1], t[:1]), y[:1], atol=1e-6)


def test_mlp_time_reaches_every_hidden_layer():
    m = MLP(2, width=16, depth=4, num_steps=10)
    assert len(m.time_proj) == len(m.layers) == 4
    m = MLP(2, width=16, depth=4, time_embedding="learned", num_steps=10)
    assert all(isinstance(p, torch.nn.Embedding) and p.num_embeddings == 10 for p in m.time_proj)


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("mults", [(1,), (1, 2), (1, 2, 2)])
def test_unet_shape_and_time_dependence(attention, mults):
    m = _randomise(UNet(1, base_channels=8, channel_mults=mults, num_res_blocks=1, attention=attention))
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 500, 999])
    y = m(x, t)
    assert y.shape == x.shape
    assert not torch.allclose(y, m(x, t.flip(0)))
    assert torch.allclose(m(x[1:2], t[1:2]), y[1:2], atol=1e-5)


def test_unet_multichannel_and_zero_init():
    m = UNet(3, base_channels=16, channel_mults=(1, 2), num_res_blocks=2)
    x = torch.randn(2, 3, 16, 16)
    y = m(x, torch.tensor([3, 4]))
    assert y.shape == x.shape
    assert torch.count_nonzero(y) == 0  # zero-initialised output conv


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=0), "dim"), (dict(width=1.5), "width"), (dict(activation="swish"), "activation"),
    (dict(time_embedding="fourier"), "time_embedding"), (dict(depth=0), "depth"), (dict(num_steps=0), "num_steps"),
])
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(channel_mults=()), "channel_mults"), (dict(channel_mults=(1, 0)), "channel_mults"),
    (dict(base_channels=0), "base_channels"), (dict(dropout=1.0), "dropout"),
])
def test_unet_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_registry_and_build():
    from fastddpm.nets import ResMLP

    assert MODEL_CLASSES == {"MLP": MLP, "ResMLP": ResMLP, "UNet": UNet}
    m = build("MLP", dim=2, width=8, depth=1)
    assert isinstance(m, MLP) and m.config["width"] == 8
    assert build("UNet", base_channels=8).config["base_channels"] == 8
    with pytest.raises(ValueError, match="unknown model class 'Transformer'.*MLP, ResMLP, UNet"):
        build("Transformer")


def test_config_rebuilds_same_architecture():
    for m in (MLP(2, width=24, depth=2, time_embedding="learned", num_steps=77), UNet(1, base_channels=8)):
        clone = build(type(m).__name__, **m.config)
        assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


@pytest.mark.parametrize("make, shape", [
    (lambda: MLP(2, width=32, depth=3), (2,)),
    (lambda: MLP(1, width=16, depth=2, time_embedding="learned"), (1,)),
    (lambda: UNet(1, base_channels=8, channel_mults=(1, 2), attention=True), (1, 8, 8)),
])
def test_onnx_export_matches_torch(make, shape):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = _randomise(make())
    x, t = torch.randn(4, *shape), torch.tensor([0, 5, 500, 999])
    buf = io.BytesIO()
    torch.onnx.export(m, (x, t), buf, input_names=["x_t", "t"], output_names=["out"], opset_version=17,
                      dynamic_axes={"x_t": {0: "B"}, "t": {0: "B"}, "out": {0: "B"}}, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x2, t2 = torch.randn(7, *shape), torch.randint(0, 1000, (7,))  # another batch size
    got = sess.run(None, {"x_t": x2.numpy(), "t": t2.numpy()})[0]
    with torch.no_grad():
        want = m(x2, t2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
