"""Shared t: the built-in nets compute their time path once when every sample shares t, with the
outputs of the per-sample path (to float32 rounding), in torch and through ONNX Runtime; user
modules and graphs that know nothing of it keep working (fastddpm.nets.embedding)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastddpm  # noqa: E402
from fastddpm.nets import MLP, ResMLP, UNet, time_rows  # noqa: E402

B = 5
T_SHARED = 417


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # UNet's output conv starts at zero: give it weights
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


NETS = {
    "mlp-sinusoidal": (lambda: MLP(2, width=32, depth=3, time_embedding="sinusoidal"), (2,)),
    "mlp-learned": (lambda: MLP(3, width=16, depth=2, time_embedding="learned"), (3,)),
    "mlp-sinusoidal-time_dim": (lambda: MLP(2, width=16, depth=2, time_dim=8), (2,)),
    "unet-attention": (lambda: UNet(1, base_channels=8, channel_mults=(1, 2), attention=True), (1, 8, 8)),
    "resmlp": (lambda: ResMLP(2, width=16, depth=2, fourier_features=3, time_dim=8), (2,)),
    "unet-plain": (lambda: UNet(2, base_channels=8, channel_mults=(1,), attention=False), (2, 4, 4)),
}


def _time_input_rows(net, x, t):
    """Rows the net's time path saw: the input of its first time-path module."""
    first = net.time_embed[0] if net.time_embed is not None else net.time_proj[0]
    seen = []
    handle = first.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        with torch.inference_mode():
            net(x, t)
    finally:
        handle.remove()
    return seen[0]


def test_time_rows_reads_strides_not_values():
    t1 = torch.tensor([7])
    assert time_rows(t1.expand(6)).shape == (1,) and int(time_rows(t1.expand(6))) == 7
    assert time_rows(t1) is t1
    assert time_rows(torch.tensor(7)).shape == (1,)
    same_values = torch.full((6,), 7)  # equal values but a genuine [B] tensor: per-sample path
    assert time_rows(same_values) is same_values


@pytest.mark.parametrize("name", sorted(NETS))
def test_shared_t_equals_per_sample_in_torch(name):
    make, shape = NETS[name]
    net = _randomise(make())
    x = torch.randn((B, *shape), generator=torch.Generator().manual_seed(1))
    t1 = torch.tensor([T_SHARED])
    with torch.inference_mode():
        per_sample = net(x, torch.full((B,), T_SHARED))
        stride0 = net(x, t1.expand(B))
        one = net(x, t1)
        mixed = net(x, torch.tensor([0, 3, 250, T_SHARED, 999]))
        singles = torch.cat([net(x[i:i + 1], torch.tensor([v])) for i, v in enumerate([0, 3, 250, T_SHARED, 999])])
    assert stride0.shape == one.shape == x.shape
    torch.testing.assert_close(stride0, per_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one, per_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed, singles, rtol=1e-5, atol=1e-6)  # genuinely per-sample t
    assert not torch.allclose(mixed, per_sample)  # t does change the output
    # and the time path really ran on one row for a shared t, on B rows otherwise
    assert _time_input_rows(net, x, t1.expand(B))[0] == 1
    assert _time_input_rows(net, x, t1)[0] == 1
    assert _time_input_rows(net, x, torch.full((B,), T_SHARED))[0] == B


# -- ONNX --------------------------------------------------------------------------------------

onnx_needed = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("onnx", "onnxruntime")),
    reason="needs onnx and onnxruntime")


@onnx_needed
@pytest.mark.parametrize("name", ["mlp-sinusoidal", "mlp-learned", "resmlp", "unet-attention"])
def test_onnx_export_takes_t_of_shape_one_and_b(tmp_path, name):
    import onnx

    from fastddpm.runtime import OnnxModel

    make, shape = NETS[name]
    net = _randomise(make())
    path = fastddpm.export_onnx(net, tmp_path / "m.onnx", sample_shape=shape)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["t"] == ["t_rows"] and dims["x"][0] == "batch"
    model = OnnxModel(path, ["CPUExecutionProvider"])
    assert model.shared_t and model.metadata.shared_t
    x = np.random.default_rng(2).standard_normal((B, *shape)).astype(np.float32)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x), torch.full((B,), T_SHARED)).numpy()
    run = model.session.run
    out_b = run(None, {"x": x, "t": np.full(B, T_SHARED, np.int64)})[0]
    out_1 = run(None, {"x": x, "t": np.array([T_SHARED], np.int64)})[0]
    np.testing.assert_allclose(out_1, out_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_b, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model(x, T_SHARED), ref, rtol=1e-4, atol=1e-5)  # an int t goes in as [1]
    ts = np.array([0, 3, 250, T_SHARED, 999], np.int64)  # per-sample t still goes in as [B]
    with torch.inference_mode():
        ref_mixed = net(torch.from_numpy(x), torch.from_numpy(ts)).numpy()
    np.testing.assert_allclose(model(x, ts), ref_mixed, rtol=1e-4, atol=1e-5)
    # the loop's binding passes t [1] and reads x in place
    net_k = model.bind_batch(x, [T_SHARED, 3])
    assert net_k.buffers[1].shape == (1,)
    np.testing.assert_allclose(net_k(0), ref, rtol=1e-4, atol=1e-5)
    x[...] = 0.5
    with torch.inference_mode():
        ref3 = net(torch.from_numpy(x), torch.full((B,), 3)).numpy()
    np.testing.assert_allclose(net_k(1), ref3, rtol=1e-4, atol=1e-5)


class PerSampleT(torch.nn.Module):
    """A user's net that knows nothing of shared t: it needs t [B] (concatenates it to x)."""

    sample_shape = (2,)

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = torch.nn.Parameter(torch.randn(3, 2, generator=g) * 0.3)

    def forward(self, x, t):
        return torch.cat([x, t.to(x.dtype)[:, None] / 1000.0], dim=1) @ self.w


def test_user_module_ignoring_the_convention_samples_the_same():
    net = PerSampleT()
    schedule = fastddpm.Schedule.linear(50)

    class Contiguous(torch.nn.Module):  # the same net, but always handed a fresh contiguous t
        sample_shape = (2,)

        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, x, t):
            return self.inner(x, t.contiguous().clone())

    kw = dict(steps=20, seed=4, batch_size=3, progress=False)
    a = fastddpm.sample(net, schedule, 7, **kw)
    b = fastddpm.sample(Contiguous(), schedule, 7, **kw)
    np.testing.assert_array_equal(a, b)


@onnx_needed
def test_user_graph_that_needs_t_of_shape_b_still_works(tmp_path):
    import onnx

    from fastddpm.runtime import OnnxModel

    schedule = fastddpm.Schedule.linear(50)
    net = PerSampleT()
    path = fastddpm.export_onnx(net, tmp_path / "user.onnx", sample_shape=(2,), schedule=schedule)
    model = OnnxModel(path, ["CPUExecutionProvider"])
    assert not model.shared_t and not model.metadata.shared_t  # no accepts_shared_t: t stays [B]
    kw = dict(steps=20, seed=4, batch_size=3, progress=False)
    ref = fastddpm.sample(net, schedule, 7, **kw)
    np.testing.assert_allclose(fastddpm.sample(model, schedule, 7, **kw), ref, rtol=1e-5, atol=1e-5)

    # A graph whose metadata claims shared t but whose t axis is x's batch axis: detected from the
    # graph, t goes in as [B].
    mlp = _randomise(MLP(2, width=16, depth=2))
    path = fastddpm.export_onnx(mlp, tmp_path / "tied.onnx", sample_shape=(2,), schedule=schedule)
    proto = onnx.load(path)
    next(i for i in proto.graph.input if i.name == "t").type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(proto, str(tmp_path / "tied2.onnx"))
    tied = OnnxModel(tmp_path / "tied2.onnx", ["CPUExecutionProvider"])
    assert tied.metadata.shared_t and not tied.shared_t
    x = np.zeros((3, 2), np.float32)
    assert tied.bind_batch(x, [5]).buffers[1].shape == (3,)
    ref = fastddpm.sample(mlp, schedule, 7, **kw)
    np.testing.assert_allclose(fastddpm.sample(tied, schedule, 7, **kw), ref, rtol=1e-4, atol=1e-5)


@onnx_needed
def test_fixed_batch_export_samples_like_torch(tmp_path):
    from fastddpm.runtime import OnnxModel

    schedule = fastddpm.Schedule.linear(50)
    mlp = _randomise(MLP(2, width=16, depth=2))
    path = fastddpm.export_onnx(mlp, tmp_path / "b1.onnx", sample_shape=(2,), dynamic_batch=False)
    model = OnnxModel(path, ["CPUExecutionProvider"])
    assert model.fixed_batch == 1
    assert model.bind_batch(np.zeros((3, 2), np.float32), [5]) is None  # the loop calls model(x, t)
    kw = dict(steps=10, seed=5, batch_size=3, progress=False)
    np.testing.assert_allclose(fastddpm.sample(model, schedule, 4, **kw), fastddpm.sample(mlp, schedule, 4, **kw),
                               rtol=1e-4, atol=1e-5)


@onnx_needed
@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_resmlp_samples_through_onnx_runtime_with_t_of_shape_one(tmp_path, dynamic_batch):
    """ResMLP (LayerNorm · (1 + scale(t)) + shift(t), Fourier features of x) keeps the shared-t
    convention through the exporter: the graph takes t [1] with x [B] (also with B fixed to 1),
    and the ORT engine samples what torch samples."""
    from fastddpm.runtime import OnnxModel

    schedule = fastddpm.Schedule.linear(50)
    make, shape = NETS["resmlp"]
    net = _randomise(make())
    path = fastddpm.export_onnx(net, tmp_path / "r.onnx", sample_shape=shape, schedule=schedule,
                                dynamic_batch=dynamic_batch)
    model = OnnxModel(path, ["CPUExecutionProvider"])
    assert model.shared_t
    x = np.random.default_rng(3).standard_normal((B, *shape)).astype(np.float32)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x), torch.full((B,), T_SHARED)).numpy()
    np.testing.assert_allclose(model(x, np.array([T_SHARED])), ref, rtol=1e-4, atol=1e-5)
    for sampler in ("ddpm", "dpmpp2m"):
        kw = dict(sampler=sampler, steps=10, seed=5, batch_size=3, progress=False)
        np.testing.assert_allclose(fastddpm.sample(model, schedule, 7, **kw), fastddpm.sample(net, schedule, 7, **kw),
                                   rtol=1e-4, atol=1e-5)
