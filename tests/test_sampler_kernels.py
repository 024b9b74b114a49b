"""The fused loop (plan → table → one generic kernel) against kernels/reference.py, sampler by sampler.

The oracle restates each sampler from its formulas (kernels/reference.py ``sample_run``; it never
reads a table) and is itself checked against diffusers (tests/test_reference_samplers.py). Here
``fastddpm.sample`` on the host backends runs the same grid (``plan.grid``) from the same x_T
(stream 0) with the same noise (call k: stream k + 1 at the sample's global offset) on ragged
shapes: D = 1, 2, 3, 7, 4096 with batches that put chunk (4096 elements) and batch boundaries
inside samples, every prediction type, with and without clip. Also: samples do not depend on
the batch size (1 / 37 / n) or the thread count, and a killed multistep run resumes to the
same file (the history ring restarts per batch).

Tolerance: float32 runs of ≤ 10 calls, both sides rounding each coefficient once: 1e-5
relative / 3e-6 absolute on samples of magnitude ≲ 5 (the reference's own float32 rounding
against its float64 math is ≤ 2 ulps per call, tests/test_reference_samplers.py).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastddpm
from fastddpm.kernels import reference as R
from fastddpm.sampling import SAMPLERS, make_plan

T = 100
SCHEDULE = fastddpm.Schedule.linear(T)
SEED = 11


class Toy:
    """A NumPy network: out = tanh(a·x + sin(3t/T + b)) per element (pure function of x and t)."""

    array_api = "numpy"

    def __init__(self, shape, channels: int = 1):
        rng = np.random.default_rng(1)
        self.sample_shape = shape
        d = int(np.prod(shape))
        self.a = (0.5 * rng.standard_normal(d * channels)).astype(np.float32)
        self.b = rng.standard_normal(d * channels).astype(np.float32)
        self.channels = channels

    def __call__(self, x, t):
        B = x.shape[0]
        flat = x.reshape(B, -1)
        if self.channels == 2:
            flat = np.concatenate([flat, flat], axis=1)
        t = np.broadcast_to(np.asarray(t, dtype=np.float32).reshape(-1, 1), (B, 1))
        out = np.tanh(self.a * flat + np.sin(3.0 * t / T + self.b)).astype(np.float32)
        if self.channels == 2:
            out[:, out.shape[1] // 2:] = out[:, out.shape[1] // 2:] * 0.9  # v in (−1, 1)
        shape = (x.shape[0],) + ((2 * x.shape[1],) + x.shape[2:] if self.channels == 2 else x.shape[1:])
        return np.ascontiguousarray(out.reshape(shape))


def reference_run(name, model, n, shape, plan, **options):
    """kernels.reference.sample_run on plan.grid, x_T and noise drawn as the loop draws them."""
    D = int(np.prod(shape))
    x_T = R.randn(n * D, SEED, 0).reshape(n, D)  # the oracle works on [B, D]

    def noise(k, sh):
        return R.randn(int(np.prod(sh)), SEED, k + 1).reshape(sh)

    def flat_model(x, t):
        return model(np.ascontiguousarray(x.reshape((x.shape[0],) + shape)), t).reshape(x.shape[0], -1)

    g = plan.grid
    out = R.sample_run(name, flat_model, x_T, g.t, g.alpha_bar, noise, prediction=plan.prediction, clip=plan.clip,
                       **options)
    return out.reshape((n,) + shape)


def _run(name, model, n, shape, backend="numba", batch_size=None, **kw):
    return fastddpm.sample(model, SCHEDULE, n, sampler=name, sample_shape=shape, seed=SEED, backend=backend,
                           batch_size=batch_size, progress=False, **kw)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-6)


# name, steps, options: every sampler, the multistep ones at an order that fills the ring
CASES = [("ddpm", 6, {}), ("ddim", 6, dict(eta=0.5)), ("dpmpp2m", 6, {}), ("dpmpp3m", 7, {}),
         ("dpmpp2m-sde", 6, {}), ("dpmpp3m-sde", 7, {}), ("unipc", 7, dict(order=3)), ("deis", 7, dict(order=3)),
         ("euler", 6, {}), ("euler-ancestral", 6, {}), ("heun", 5, {}), ("consistency", 6, {})]
assert {c[0] for c in CASES} == set(SAMPLERS), "every sampler has a case here"


@pytest.mark.parametrize("name,steps,options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("shape,n,batch", [((1,), 9, 4), ((2,), 2100, 1000), ((3,), 5, 2), ((7,), 6, 5),
                                           ((4096,), 3, 2), ((2, 3, 5), 4, 3)])
def test_loop_equals_reference_on_ragged_shapes(name, steps, options, shape, n, batch):
    model = Toy(shape)
    plan = make_plan(SCHEDULE, name, steps, prediction="epsilon", **options)
    ref = reference_run(name, model, n, shape, plan, **options)
    _close(_run(name, model, n, shape, batch_size=batch, steps=steps, **options), ref)


@pytest.mark.parametrize("name,steps,options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("prediction,clip", [("v_prediction", None), ("sample", 0.7), ("epsilon", 0.9)])
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_predictions_and_clip_equal_reference(name, steps, options, prediction, clip, backend):
    shape, n = (3,), 13
    model = Toy(shape)
    plan = make_plan(SCHEDULE, name, steps, prediction=prediction, clip=clip, **options)
    ref = reference_run(name, model, n, shape, plan, **options)
    _close(_run(name, model, n, shape, backend=backend, batch_size=5, steps=steps, prediction=prediction, clip=clip,
                **options), ref)


@pytest.mark.parametrize("name,spacing,final", [("dpmpp2m", "karras", "zero"), ("unipc", "exponential", "zero"),
                                                ("ddim", "trailing", "sigma_min"), ("euler", "linspace", "zero"),
                                                ("dpmpp3m", "logsnr", "sigma_min")])
def test_spacings_and_final_equal_reference(name, spacing, final):
    shape, n = (2,), 7
    model = Toy(shape)
    plan = make_plan(SCHEDULE, name, 8, spacing, final=final)
    ref = reference_run(name, model, n, shape, plan)
    _close(_run(name, model, n, shape, steps=8, spacing=spacing, final=final), ref)


@pytest.mark.parametrize("variance", ["learned_range", "learned"])
def test_variance_channel_equals_reference(variance):
    shape, n = (3,), 9
    model = Toy(shape, channels=2)
    if variance == "learned":  # σ = √v needs v ≥ 0
        inner = model

        class Positive:
            array_api = "numpy"
            sample_shape = shape

            def __call__(self, x, t):
                out = inner(x, t)
                out[:, 3:] = 0.01 + out[:, 3:] ** 2
                return out
        model = Positive()
    plan = make_plan(SCHEDULE, "ddpm", 6, variance=variance)
    ref = reference_run("ddpm", model, n, shape, plan, variance=variance)
    for backend in ("numba", "numpy"):
        _close(_run("ddpm", model, n, shape, backend=backend, batch_size=4, steps=6, variance=variance), ref)


@pytest.mark.parametrize("name", ["dpmpp3m-sde", "unipc", "heun"])
def test_samples_do_not_depend_on_the_batch_size(name):
    shape, n = (3,), 41
    model = Toy(shape)
    runs = [_run(name, model, n, shape, batch_size=b, steps=6) for b in (1, 37, n)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0], other)


def test_samples_do_not_depend_on_threads():
    """One and two Numba threads, big enough for the parallel compile (≥ 2¹⁶ elements)."""
    code = ("import numpy as np, fastddpm, sys; sys.path.insert(0, {tests!r}); from test_sampler_kernels import Toy, "
            "SCHEDULE; x = fastddpm.sample(Toy((4,)), SCHEDULE, 20000, sampler='dpmpp3m-sde', steps=4, seed=3, "
            "progress=False, batch_size=20000); sys.stdout.write(x.tobytes().hex()[:4000] + str(float(x.sum())))")
    outs = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        outs.append(subprocess.run([sys.executable, "-c", code.format(tests=os.path.dirname(__file__))], env=env,
                                   capture_output=True, text=True, check=True).stdout)
    assert outs[0] == outs[1]


def test_killed_multistep_run_resumes_to_the_same_file(tmp_path):
    """A unipc-3 run (state and a three-deep ring) killed after 2 batches resumes byte-identical."""
    from _sampling_models import FailAt

    shape = (2,)
    model = Toy(shape)
    full = tmp_path / "full.npy"
    _run("unipc", model, 50, shape, batch_size=8, steps=6, order=3, out=full)
    part = tmp_path / "part.npy"
    with pytest.raises(KeyboardInterrupt):
        _run("unipc", FailAt(model, 6 * 2 + 3), 50, shape, batch_size=8, steps=6, order=3, out=part)
    assert not part.exists()
    _run("unipc", model, 50, shape, batch_size=8, steps=6, order=3, out=part, resume=True)
    assert part.read_bytes() == full.read_bytes()


@pytest.mark.parametrize("name,options", [("dpmpp3m", {}), ("unipc", dict(order=3)), ("deis", dict(order=3)),
                                          ("dpmpp2m-sde", {})])
def test_null_step_is_the_identity(name, options):
    """karras ends at σ(0); with final="sigma_min" the last step goes from σ(0) to σ(0): a null
    step, the identity (diffusers' third-order DPM-Solver returns NaN there)."""
    shape, n = (3,), 6
    model = Toy(shape)
    plan = make_plan(SCHEDULE, name, 16, "karras", final="sigma_min", **options)
    assert plan.grid.alpha_bar[-1] == plan.grid.alpha_bar[-2]
    ref = reference_run(name, model, n, shape, plan, **options)
    got = _run(name, model, n, shape, steps=16, spacing="karras", final="sigma_min", **options)
    assert np.isfinite(got).all()
    _close(got, ref)
