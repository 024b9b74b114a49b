"""Sampling from an ONNX file: same seed ⇒ same samples as the torch path, and no torch needed."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import fastddpm  # noqa: E402
from fastddpm import checkpoint  # noqa: E402
from fastddpm.data import load_dataset  # noqa: E402
from fastddpm.nets import MLP  # noqa: E402
from fastddpm.pipelines import OnnxSampler  # noqa: E402

N = 256  # samples of the 1000-step comparison
SEED = 11


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # torch's and Numba's OpenMP pools collapse on a loaded 2-core machine (torch ×25, Numba ×10
    # slower per step measured at load 9 with 2 threads); the comparison does not need threads.
    import numba

    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads[0])
    numba.set_num_threads(threads[1])


def quick_train(net, data, schedule, iters=400, batch=256, seed=0):
    """A few hundred ε-prediction steps: enough for samples of the data's scale, so that the
    1e-4 comparison below is at the scale of the data (an untrained net's samples blow up)."""
    gen = torch.Generator().manual_seed(seed)
    x0_all = torch.from_numpy(data)
    sa = torch.tensor(schedule.sqrt_alphas_cumprod, dtype=torch.float32)
    sb = torch.tensor(schedule.sqrt_one_minus_alphas_cumprod, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(iters):
        x0 = x0_all[torch.randint(0, len(x0_all), (batch,), generator=gen)]
        t = torch.randint(0, schedule.num_steps, (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t = sa[t, None] * x0 + sb[t, None] * eps
        loss = torch.nn.functional.mse_loss(net(x_t, t), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def butterfly(tmp_path_factory):
    """A quickly trained butterfly MLP saved as a checkpoint and exported to ONNX."""
    tmp = tmp_path_factory.mktemp("butterfly")
    torch.manual_seed(0)
    schedule = fastddpm.Schedule.linear(1000)
    data = load_dataset("butterfly", 2000, seed=0)
    net = quick_train(MLP(dim=2, width=64, depth=3), data.x, schedule)
    ckpt = checkpoint.save(tmp / "ckpt", net, schedule, normalization=data.normalization)
    path = fastddpm.export_onnx(fastddpm.load(ckpt), tmp / "butterfly.onnx")
    return fastddpm.load(ckpt), path


def test_onnx_sampling_equals_torch_after_1000_ddpm_steps(butterfly):
    ckpt, path = butterfly
    want = fastddpm.sample(ckpt.model, ckpt.schedule, N, seed=SEED, progress=False)
    assert np.abs(want).max() < 10  # samples at the data's scale: the tolerance means something
    sampler = OnnxSampler(path)
    assert sampler.schedule == ckpt.schedule and sampler.providers == ["CPUExecutionProvider"]
    got = sampler.sample(N, seed=SEED, progress=False, denormalize=False)
    assert got.shape == want.shape == (N, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # in data space: the stored butterfly normalisation is applied
    data = sampler.sample(N, seed=SEED, progress=False)
    np.testing.assert_allclose(ckpt.normalization.normalize(data), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sampler", ["unipc", "heun", "dpmpp3m-sde"])
def test_onnx_engine_runs_every_sampler_like_torch(butterfly, sampler):
    """The ONNX Runtime engine runs the same plan and kernels: new samplers need nothing of it."""
    ckpt, path = butterfly
    want = fastddpm.sample(ckpt.model, ckpt.schedule, N, sampler=sampler, steps=8, seed=SEED, progress=False)
    got = OnnxSampler(path).sample(N, sampler=sampler, steps=8, seed=SEED, progress=False, denormalize=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_fixed_batch_file_samples_the_same(butterfly, tmp_path):
    ckpt, path = butterfly
    fixed = fastddpm.export_onnx(ckpt, tmp_path / "fixed.onnx", dynamic_batch=False)
    a = OnnxSampler(path).sample(7, seed=3, steps=20, progress=False)
    b = OnnxSampler(fixed).sample(7, seed=3, steps=20, progress=False)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked in this test (simulating an install without torch)")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")

CHILD = textwrap.dedent("""
    import importlib.util, sys
    if sys.argv[3] == "blocked":
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the torch blocker is not active")
    else:
        assert importlib.util.find_spec("torch") is not None  # torch is there, just never imported
    import numpy as np
    import fastddpm
    from fastddpm.pipelines import OnnxSampler

    x = OnnxSampler(sys.argv[1]).sample(64, seed=5, steps=50, progress=False)
    np.save(sys.argv[2], x)
    assert "torch" not in sys.modules  # the library path never imports it
    # the command line too: `fastddpm sample model.onnx` (every subcommand module gets imported)
    from fastddpm.cli import main
    assert main(["sample", sys.argv[1], "--n", "64", "--seed", "5", "--steps", "50",
                 "--out", sys.argv[2] + ".cli.npy", "--quiet"]) == 0
    if sys.argv[3] == "blocked":  # a subcommand that needs torch fails cleanly instead
        assert main(["train", "--dataset", "butterfly", "--out", sys.argv[2] + ".ckpt"]) == 2
    print("ok", x.shape)
""")


def _run_child(tmp_path, args, *, block_torch: bool):
    env = dict(os.environ)
    if block_torch:  # a sitecustomize on PYTHONPATH installs the blocker before anything else runs
        (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_samples_in_a_process_where_torch_cannot_be_imported(butterfly, tmp_path):
    ckpt, path = butterfly
    out = tmp_path / "x.npy"
    proc = _run_child(tmp_path, [path, out, "blocked"], block_torch=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = fastddpm.sample(ckpt.model, ckpt.schedule, 64, seed=5, steps=50, progress=False)
    np.testing.assert_allclose(ckpt.normalization.normalize(np.load(out)), want, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.load(str(out) + ".cli.npy"), np.load(out))


def test_runtime_never_imports_torch_even_when_installed(butterfly, tmp_path):
    """With torch importable, the runtime path still leaves it out of sys.modules."""
    _, path = butterfly
    proc = _run_child(tmp_path, [path, tmp_path / "y.npy", "free"], block_torch=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pipeline_auto_engine_uses_a_cached_onnx_export(butterfly, tmp_path, monkeypatch):
    ckpt, _ = butterfly
    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    pipe = fastddpm.Pipeline(ckpt)
    kw = dict(seed=2, steps=100, progress=False)
    torch_x = pipe.sample(50, engine="torch", **kw)
    assert not (tmp_path / "cache").exists()  # engine="torch" exports nothing
    auto_x = pipe.sample(50, **kw)
    cached = list((tmp_path / "cache" / "onnx").glob("MLP-*.onnx"))
    assert len(cached) == 1 and isinstance(pipe._onnx_engine, fastddpm.runtime.OnnxModel)
    np.testing.assert_allclose(auto_x, torch_x, rtol=0, atol=1e-4 * ckpt.normalization.std.max())
    stamp = cached[0].stat().st_mtime_ns
    np.testing.assert_array_equal(pipe.sample(50, engine="onnx", **kw), auto_x)
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not re-exported
    # other weights → another file (the cache key includes the weights)
    with torch.no_grad():
        pipe.model.out.bias.add_(0.5)
    try:
        pipe.sample(5, **kw)
    finally:
        with torch.no_grad():
            pipe.model.out.bias.sub_(0.5)
    assert len(list((tmp_path / "cache" / "onnx").glob("MLP-*.onnx"))) == 2
    # float64 sampling stays on torch under auto, and is refused by engine="onnx"
    from fastddpm.sampling import SamplingOptions
    from fastddpm.pipelines.engines import choose

    assert choose(pipe, "auto", SamplingOptions(dtype="float64"))[0] is pipe.model
    assert choose(pipe, "auto", SamplingOptions(backend="torch"))[0] is pipe.model
    with pytest.raises(ValueError, match="engine='onnx' samples in float32 on the CPU"):
        pipe.sample(5, dtype="float64", engine="onnx", **kw)
    with pytest.raises(ValueError, match="engine must be one of"):
        pipe.sample(5, engine="tensorrt", **kw)
