"""fastddpm.sample: reproducibility across batch sizes, backends and threads; trajectories; errors."""
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastddpm
from fastddpm.sampling import sample

from _sampling_models import GaussianEps, tiny_mlp

T = 100
SAMPLE_SHAPE = (3,)


@pytest.fixture(scope="module")
def schedule():
    return fastddpm.Schedule.linear(T)


@pytest.fixture(scope="module")
def model(schedule):
    return GaussianEps(schedule, [1.0, -1.0, 0.0], [0.5, 1.0, 2.0])


SETTINGS = [dict(sampler="ddpm"), dict(sampler="ddpm", steps=10, spacing="trailing", variance="fixed_large"),
            dict(sampler="ddim", steps=10, eta=0.5, clip=1.5), dict(sampler="dpmpp2m", steps=8)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_same_samples_for_any_batch_size(schedule, model, settings):
    n = 23
    ref = sample(model, schedule, n, batch_size=n, seed=5, progress=False, **settings)
    for bs in (1, 7):
        np.testing.assert_array_equal(sample(model, schedule, n, batch_size=bs, seed=5, progress=False, **settings),
                                      ref, err_msg=f"batch_size={bs}")
    # ... and sample s of a larger request is sample s here (global noise offsets)
    big = sample(model, schedule, n + 9, batch_size=10, seed=5, progress=False, **settings)
    np.testing.assert_array_equal(big[:n], ref)
    assert not np.array_equal(ref, sample(model, schedule, n, seed=6, progress=False, **settings))


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_numba_matches_numpy_reference(schedule, model, settings):
    a = sample(model, schedule, 40, backend="numba", seed=3, progress=False, **settings)
    b = sample(model, schedule, 40, backend="numpy", batch_size=16, seed=3, progress=False, **settings)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_parallel_kernels_match_serial(schedule, model):
    """Batches above PARALLEL_MIN_ELEMENTS take the parallel kernels; same samples."""
    from fastddpm.kernels.numba.common import PARALLEL_MIN_ELEMENTS

    n = PARALLEL_MIN_ELEMENTS // 3 + 5
    for settings in SETTINGS[1:]:
        big = sample(model, schedule, n, batch_size=n, seed=1, progress=False, **settings)
        small = sample(model, schedule, n, batch_size=1000, seed=1, progress=False, **settings)
        np.testing.assert_array_equal(big, small)


def test_torch_module_and_torch_backend(schedule):
    """A torch module on the host path equals the all-torch path (the CUDA code) on CPU."""
    torch = pytest.importorskip("torch")
    mlp = tiny_mlp(dim=3)
    # ddim with v_prediction and a clip: ε̂ must come from the unclipped x̂0 on both paths.
    extra = [dict(sampler="ddpm", steps=20, spacing="linspace"),
             dict(sampler="ddim", steps=10, eta=0.5, prediction="v_prediction", clip=0.3)]
    for settings in extra + SETTINGS[1:]:
        host = sample(mlp, schedule, 20, sample_shape=SAMPLE_SHAPE, seed=2, progress=False, **settings)
        dev = sample(mlp, schedule, 20, sample_shape=SAMPLE_SHAPE, seed=2, progress=False, backend="torch",
                     batch_size=7, **settings)
        assert isinstance(dev, torch.Tensor)
        np.testing.assert_allclose(dev.numpy(), host, rtol=1e-4, atol=1e-5)
        assert np.isfinite(host).all()


_THREAD_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    sys.path.insert(0, {tests!r})
    import numba, fastddpm
    from fastddpm.sampling import sample
    from _sampling_models import GaussianEps
    s = fastddpm.Schedule.linear(50)
    m = GaussianEps(s, [1.0, 0.0], [0.5, 2.0])
    assert numba.get_num_threads() == int(sys.argv[1])
    x = sample(m, s, 40000, sampler=sys.argv[2], steps=10, seed=9, batch_size=40000, progress=False)  # 80000 elements ≥ PARALLEL_MIN_ELEMENTS: parallel kernels
    print(hashlib.sha256(x.tobytes()).hexdigest())
""")


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp2m"])
def test_same_samples_for_numba_threads_1_and_2(sampler):
    script = _THREAD_SCRIPT.format(tests=os.path.dirname(__file__))
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        res = subprocess.run([sys.executable, "-c", script, threads, sampler], env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        digests.append(res.stdout.strip())
    assert digests[0] == digests[1]


def test_trajectory(schedule, model):
    x, traj = sample(model, schedule, 9, steps=20, sampler="ddim", seed=4, progress=False,
                     return_trajectory=True, trajectory_steps=[0, 5, 20])
    assert traj.positions == [0, 5, 20] and traj.x.shape == (3, 9, 3)
    plan = fastddpm.sampling.make_plan(schedule, "ddim", 20)
    assert traj.timesteps == [int(plan.t[0]), int(plan.t[5]), -1]
    np.testing.assert_array_equal(traj.x[-1], x)
    np.testing.assert_array_equal(traj.x[0], fastddpm.randn((9, 3), seed=4, stream=0))
    # the state after 5 steps is the result of a 5-step run over the same first timesteps
    first5 = sample(model, schedule, 9, sampler="ddim", spacing=list(plan.t[:5]), seed=4, progress=False,
                    return_trajectory=True, trajectory_steps=[5])[1]
    # (a 5-step run ends with prev_t = −1 instead of plan.t[5], so compare its 4th state instead)
    four = sample(model, schedule, 9, sampler="ddim", spacing=list(plan.t[:5]), seed=4, progress=False,
                  return_trajectory=True, trajectory_steps=[4])[1]
    _, t4 = sample(model, schedule, 9, steps=20, sampler="ddim", seed=4, progress=False,
                   return_trajectory=True, trajectory_steps=[4])
    np.testing.assert_array_equal(four.x[0], t4.x[0])
    assert first5.x.shape == (1, 9, 3)
    _, default = sample(model, schedule, 4, progress=False, return_trajectory=True)
    assert default.positions[0] == 0 and default.positions[-1] == T and len(default.positions) == 11
    _, every = sample(model, schedule, 2, steps=5, sampler="ddim", progress=False, return_trajectory=True,
                      trajectory_steps="all")
    assert every.x.shape == (6, 2, 3)


class _Bad:
    array_api = "numpy"
    sample_shape = (2,)

    def __init__(self, kind, at=3):
        self.kind, self.at, self.calls = kind, at, 0

    def __call__(self, x, t):
        self.calls += 1
        if self.kind == "shape":
            return x[:, :1].copy()
        out = 0.1 * x
        if self.kind in ("nan", "inf") and self.calls == self.at:
            out[-1, 0] = np.nan if self.kind == "nan" else np.inf
        return out


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(n=0), ValueError, "n must be"), (dict(n=-3), ValueError, "n must be"), (dict(n=2.0), TypeError, "n must"),
    (dict(steps=0), ValueError, "steps must"), (dict(steps=T + 1), ValueError, "steps must"),
    (dict(sampler="plms"), ValueError, "sampler must be one of"), (dict(spacing="log"), ValueError, "spacing"),
    (dict(prediction="noise"), ValueError, "prediction"), (dict(variance="learned"), ValueError, "variance"),
    (dict(eta=-1.0), ValueError, "eta"), (dict(eta=0.5), ValueError, r"eta does not apply to sampler='ddpm' \(its options: variance"),
    (dict(batch_size=0), ValueError, "batch_size"), (dict(seed=-1), ValueError, "seed"),
    (dict(backend="cuda"), ValueError, "backend must be"), (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(clip=0.0), ValueError, "clip"), (dict(resume=True), ValueError, "resume=True needs out="),
])
def test_bad_input(schedule, kwargs, exc, match):
    kw = dict(n=4, progress=False)
    kw.update(kwargs)
    n = kw.pop("n")
    with pytest.raises(exc, match=match):
        sample(_Bad("ok"), schedule, n, **kw)


def test_bad_models(schedule):
    with pytest.raises(ValueError, match=r"model returned shape \(4, 1\) for an input of shape \(4, 2\)"):
        sample(_Bad("shape"), schedule, 4, progress=False)
    for kind in ("nan", "inf"):
        with pytest.raises(FloatingPointError, match=r"NaN or inf at step 3/100 \(t=97\)"):
            sample(_Bad(kind), schedule, 4, progress=False)
    # the guard can be switched off: the NaN then reaches the samples
    out = sample(_Bad("nan"), schedule, 4, progress=False, check_finite=False)
    assert np.isnan(out[-1]).any() and np.isfinite(out[0]).all()
    with pytest.raises(TypeError, match="model must be a torch nn.Module"):
        sample(lambda x, t: x, schedule, 4, sample_shape=(2,), progress=False)
    no_shape = _Bad("ok")
    no_shape.sample_shape = None
    with pytest.raises(ValueError, match="sample_shape is required"):
        sample(no_shape, schedule, 4, progress=False)
    with pytest.raises(TypeError, match="schedule must be"):
        sample(_Bad("ok"), "linear", 4, progress=False)


def test_bad_torch_models(schedule):
    torch = pytest.importorskip("torch")

    class Half(torch.nn.Module):
        def forward(self, x, t):
            return x[:, :1]

    class NaN(torch.nn.Module):
        def forward(self, x, t):
            return torch.where(t[:, None] == 42, torch.nan, 0.1 * x)

    for backend in ("auto", "torch"):
        with pytest.raises(ValueError, match="model returned shape"):
            sample(Half(), schedule, 3, sample_shape=(2,), progress=False, backend=backend)
        with pytest.raises(FloatingPointError, match=r"step 58/100 \(t=42\)"):
            sample(NaN(), schedule, 3, sample_shape=(2,), progress=False, backend=backend)


def test_import_without_torch():
    code = ("import sys, fastddpm, fastddpm.sampling, fastddpm.sampling.bulk; "
            "from fastddpm.sampling import sample; assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_progress_bar_runs(schedule, model, capsys):
    x = sample(model, schedule, 3, steps=5, sampler="ddim", progress=True)
    assert x.shape == (3, 3)
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    assert digest == hashlib.sha256(sample(model, schedule, 3, steps=5, sampler="ddim",
                                           progress=False).tobytes()).hexdigest()


def test_guard_exact_when_the_sum_overflows():
    from fastddpm.sampling.guard import all_finite

    big = np.full((4, 2), 3e38, dtype=np.float32)  # finite, but the sum overflows
    assert all_finite(big)
    big[2, 1] = np.nan
    assert not all_finite(big)
    assert not all_finite(np.array([np.inf, -np.inf], dtype=np.float32))
    assert all_finite(np.zeros((0, 2), dtype=np.float32))


def test_numpy_model_accepts_any_spelling_of_the_cpu_device(schedule, model):
    """torch.device("cpu") (what torchrun ranks pass) is the CPU; a GPU device is refused clearly."""
    torch = pytest.importorskip("torch")
    ref = sample(model, schedule, 5, steps=5, seed=4, progress=False)
    for device in ("cpu", torch.device("cpu")):
        np.testing.assert_array_equal(sample(model, schedule, 5, steps=5, seed=4, device=device, progress=False), ref)
    with pytest.raises(ValueError, match="array_api='numpy' model runs on the CPU"):
        sample(model, schedule, 5, steps=5, device="cuda", progress=False)
