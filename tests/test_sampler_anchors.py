"""Every sampler equals its anchor: diffusers' scheduler on the same network, x_T and noise.

Whole runs through ``fastddpm.sample`` (plan → table → the fused Numba kernel; the numpy
backend for a few) against the diffusers scheduler loop, with the diffusers scheduler fed
fastddpm's x_T (stream 0) and, at call k, fastddpm's noise of stream k + 1 (its randn_tensor
patched, or ``variance_noise``). The diffusers network is called with the integer timestep
fastddpm feeds (diffusers' Euler family passes a fractional t between integers; fastddpm always
feeds round(t) and keeps diffusers' σ in the math: docs/sampling.md "Step math").

Tolerance: both sides compute in float32 from coefficients that differ in the last float32 bit
(fastddpm's are float64 rounded once; diffusers' come from float32 sigmas), so a whole run
agrees to a few float32 ulps of the sample's magnitude amplified by the steps: rtol 1e-4 /
atol 3e-5 (|x| ≲ 3). Step-by-step comparisons (same input state at every call) use 2e-5.
"""
from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import reference as R
from fastddpm.sampling import make_plan

diffusers = pytest.importorskip("diffusers")

T = 1000
N, D = 11, 3
SEED = 5
SCHEDULE = fastddpm.Schedule.linear(T)
EULER_FAMILY = ("euler", "euler-ancestral", "heun")

# sampler → (diffusers class, config, how its noise is injected)
ANCHORS = {
    "ddpm": ("DDPMScheduler", {}, "randn"),
    "ddim": ("DDIMScheduler", {}, "randn"),
    "dpmpp2m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2), None),
    "dpmpp3m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=3), None),
    "dpmpp2m-sde": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=2),
                    "variance_noise"),
    "dpmpp3m-sde": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3),
                    "variance_noise"),
    "unipc": ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2"), None),
    "deis": ("DEISMultistepScheduler", dict(solver_order=2), None),
    "euler": ("EulerDiscreteScheduler", {}, None),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}, "randn"),
    "heun": ("HeunDiscreteScheduler", {}, None),
}


class Net(torch.nn.Module):
    """A fixed smooth network: out = tanh(W·x + sin(3t/T + b)); ``channels`` × the input's width."""

    def __init__(self, channels: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = torch.nn.Parameter(0.4 * torch.randn(D * channels, D, generator=g), requires_grad=False)
        self.b = torch.nn.Parameter(torch.randn(D * channels, generator=g), requires_grad=False)
        self.sample_shape = (D,)

    def forward(self, x, t):
        t = t.to(torch.float32).reshape(-1, 1)
        return torch.tanh(x @ self.W.T + torch.sin(3.0 * t / T + self.b))


NET = Net()


def _noise(k: int) -> torch.Tensor:
    """fastddpm's noise of network call k (stream k + 1), as a tensor [N, D]."""
    return torch.from_numpy(R.randn(N * D, SEED, k + 1).reshape(N, D))


def _x_T() -> np.ndarray:
    return R.randn(N * D, SEED, 0).reshape(N, D)


def _scheduler(name: str, prediction: str, spacing: str, clip=None, karras=False, **extra):
    cls_name, config, _ = ANCHORS[name]
    cls = getattr(diffusers, cls_name)
    kw = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,  # = SCHEDULE
              prediction_type=prediction, timestep_spacing=spacing, **{**config, **extra})
    if clip is not None:
        kw.update(clip_sample=True, clip_sample_range=clip)
    elif "clip_sample" in inspect.signature(cls.__init__).parameters:
        kw.update(clip_sample=False)
    if karras:
        kw.update(use_karras_sigmas=True)
    return cls(**kw)


def diffusers_run(name, sched, steps, monkeypatch, model=NET, x_T=None):
    """The diffusers loop from fastddpm's x_T with fastddpm's noise; returns the VP sample [N, D]."""
    sched.set_timesteps(steps)
    x_T = _x_T() if x_T is None else x_T
    call = [0]
    noise_mode = ANCHORS[name][2]
    if noise_mode == "randn":
        module = importlib.import_module(type(sched).__module__)
        monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: _noise(call[0]).to(kw.get("dtype") or
                                                                                           torch.float32))
    x = torch.from_numpy(x_T)
    if name in EULER_FAMILY:  # diffusers steps X = x/α: start from fastddpm's x_T in that variable
        sigma0 = float(sched.sigmas[0])
        x = x * (1.0 + sigma0 ** 2) ** 0.5
    with torch.no_grad():
        for k, t in enumerate(sched.timesteps):
            call[0] = k
            inp = sched.scale_model_input(x, t)
            t_int = torch.full((N,), int(np.round(float(t))), dtype=torch.int64)
            m = model(inp, t_int)
            kw = {"variance_noise": _noise(k)} if noise_mode == "variance_noise" else {}
            x = sched.step(m, t, x, **kw).prev_sample
    return x.numpy()


# dpmpp3m-sde is compared with diffusers' own D2 term; its default, the exact one, with a closed
# form (test_dpmpp3m_sde_converges_to_the_data) and kernels/reference.py (k-diffusion's φ₃).
ANCHOR_OPTIONS = {"dpmpp3m-sde": {"d2_coefficient": "diffusers"}}


def ours(name, steps, spacing, prediction, clip=None, backend="numba", batch_size=4, **options):
    if name in ANCHOR_OPTIONS:
        options["sampler_options"] = {**(options.get("sampler_options") or {}), **ANCHOR_OPTIONS[name]}
    return fastddpm.sample(NET, SCHEDULE, N, sampler=name, steps=steps, spacing=spacing, prediction=prediction,
                           clip=clip, seed=SEED, batch_size=batch_size, backend=backend, progress=False, **options)


def _close(a, b, rtol=1e-4, atol=3e-5):
    """Float32 rounding of the run's largest values (x̂0 of this untrained net reaches hundreds at
    σ_ve ≈ 157) carries into every element: atol scales with max |b|."""
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(np.abs(b).max())))


# ----------------------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------------------

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _supports(name: str, prediction: str) -> bool:
    return not (name == "euler-ancestral" and prediction == "sample")  # diffusers: NotImplementedError


@pytest.mark.parametrize("name", list(ANCHORS))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_whole_run_equals_diffusers(name, prediction, monkeypatch):
    if not _supports(name, prediction):
        pytest.skip(f"diffusers' {ANCHORS[name][0]} has no prediction_type={prediction!r}")
    spacing = "linspace" if name in EULER_FAMILY or name in ("unipc", "deis") else "leading"
    steps = 7
    sched = _scheduler(name, prediction, spacing)
    ref = diffusers_run(name, sched, steps, monkeypatch)
    got = ours(name, steps, spacing, prediction, final="sigma_min" if name == "deis" else None)
    plan = make_plan(SCHEDULE, name, steps, spacing, prediction=prediction)
    np.testing.assert_array_equal(plan.t, np.round(sched.timesteps.numpy()).astype(np.int64))
    _close(got, ref)


@pytest.mark.parametrize("name,steps", [("dpmpp2m", 20), ("dpmpp3m", 16), ("dpmpp3m", 5), ("dpmpp3m-sde", 16),
                                        ("unipc", 16), ("deis", 16), ("deis", 3), ("heun", 12)])
def test_lower_order_branches(name, steps, monkeypatch):
    """Runs of ≥ 15 steps (no lower_order_final) and of 3–5 (warm-up meets the end)."""
    spacing = "linspace"
    ref = diffusers_run(name, _scheduler(name, "epsilon", spacing), steps, monkeypatch)
    _close(ours(name, steps, spacing, "epsilon"), ref)


@pytest.mark.parametrize("name,options,extra", [
    ("unipc", dict(order=3), dict(solver_order=3)),
    ("unipc", dict(order=1), dict(solver_order=1)),
    ("unipc", dict(order=2, solver_type="bh1"), dict(solver_order=2, solver_type="bh1", final_sigmas_type="sigma_min")),
    ("unipc", dict(order=2, sampler_options=dict(disable_corrector=(1, 3))), dict(disable_corrector=[1, 3])),
    ("deis", dict(order=3), dict(solver_order=3)),
    ("dpmpp2m", dict(solver_type="heun"), dict(solver_type="heun")),
    ("dpmpp2m-sde", dict(solver_type="heun"), dict(solver_type="heun")),
    ("ddpm", dict(variance="fixed_large"), dict(variance_type="fixed_large")),
    ("ddim", dict(eta=0.7), {}),
])
def test_options_equal_diffusers(name, options, extra, monkeypatch):
    spacing = "leading" if name in ("ddpm", "ddim") else "linspace"
    final = "sigma_min" if extra.get("final_sigmas_type") == "sigma_min" or name == "deis" else None
    sched = _scheduler(name, "epsilon", spacing, **extra)
    if name == "ddim":  # DDIMScheduler.step takes eta per call
        step = sched.step
        sched.step = lambda m, t, x, **kw: step(m, t, x, eta=options["eta"], **kw)
    ref = diffusers_run(name, sched, 8, monkeypatch)
    _close(ours(name, 8, spacing, "epsilon", final=final, **options), ref)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "heun"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_clip_equals_diffusers(name, prediction, monkeypatch):
    """The anchors with clip_sample: x̂0 clipped to [−c, c] (c small enough to bite)."""
    spacing = "linspace" if name == "heun" else "leading"
    ref = diffusers_run(name, _scheduler(name, prediction, spacing, clip=0.6), 6, monkeypatch)
    _close(ours(name, 6, spacing, prediction, clip=0.6), ref)


@pytest.mark.parametrize("name", ["dpmpp2m", "unipc", "euler", "heun", "dpmpp2m-sde", "deis"])
def test_karras_spacing_equals_diffusers(name, monkeypatch):
    """use_karras_sigmas: the same σ in the math, the network fed round(t). deis ends at
    "sigma_min" (its only end point): σ_min → σ_min is a null last step."""
    sched = _scheduler(name, "epsilon", "linspace", karras=True)
    ref = diffusers_run(name, sched, 9, monkeypatch)
    _close(ours(name, 9, "karras", "epsilon", final="sigma_min" if name == "deis" else None), ref)


@pytest.mark.parametrize("spacing", ["karras", "exponential"])
@pytest.mark.parametrize("name", ["dpmpp2m", "dpmpp3m", "unipc", "deis"])
def test_sigma_spacings_with_final_sigma_min(name, spacing, monkeypatch):
    """The last σ of karras/exponential is σ(0) itself, so "sigma_min" adds a null step; its ᾱ
    must not round above ᾱ_0 (it did by one ulp, and every such run raised)."""
    grid = make_plan(SCHEDULE, name, 9, spacing, final="sigma_min").grid
    assert grid.alpha_bar[-2] == grid.alpha_bar[-1] == float(SCHEDULE.alphas_cumprod[0])
    extra = {"use_karras_sigmas": True} if spacing == "karras" else {"use_exponential_sigmas": True}
    if name != "deis":
        extra["final_sigmas_type"] = "sigma_min"
    ref = diffusers_run(name, _scheduler(name, "epsilon", "linspace", **extra), 9, monkeypatch)
    _close(ours(name, 9, spacing, "epsilon", final="sigma_min"), ref)


@pytest.mark.parametrize("name", ["dpmpp2m", "euler"])
def test_exponential_spacing_equals_diffusers(name, monkeypatch):
    sched = _scheduler(name, "epsilon", "linspace", use_exponential_sigmas=True)
    ref = diffusers_run(name, sched, 9, monkeypatch)
    _close(ours(name, 9, "exponential", "epsilon"), ref)


@pytest.mark.parametrize("name", ["dpmpp3m", "unipc", "heun", "dpmpp2m-sde"])
def test_numpy_backend_equals_numba(name):
    """backend="numpy" applies the same rows with NumPy operators (the in-loop reference)."""
    a = ours(name, 7, None, "epsilon", backend="numba", batch_size=5)
    b = ours(name, 7, None, "epsilon", backend="numpy", batch_size=N)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


# ----------------------------------------------------------------------------------------
# Variance channel (learned / learned_range)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["learned_range", "learned"])
def test_learned_variance_equals_diffusers(variance, monkeypatch):
    """A network with a variance channel ([B, 2D]); diffusers splits it the same way."""
    net = Net(channels=2)
    if variance == "learned":  # σ = √v: keep the channel positive
        class Positive(torch.nn.Module):
            def forward(self, x, t):
                out = net(x, t)
                return torch.cat([out[:, :D], 0.01 + out[:, D:] ** 2], dim=1)
        model = Positive()
    else:
        model = net
    sched = _scheduler("ddpm", "epsilon", "leading", variance_type=variance)
    ref = diffusers_run("ddpm", sched, 6, monkeypatch, model=model)
    got = fastddpm.sample(model, SCHEDULE, N, sampler="ddpm", steps=6, variance=variance, seed=SEED, batch_size=4,
                          sample_shape=(D,), progress=False)
    _close(got, ref)


def test_variance_channel_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="variance channel"):
        fastddpm.sample(NET, SCHEDULE, 3, sampler="ddpm", steps=4, variance="learned_range", progress=False)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


def test_unknown_sampler_names_the_samplers():
    with pytest.raises(ValueError, match="sampler must be one of 'ddpm', 'ddim', 'dpmpp2m'.*'unipc'"):
        fastddpm.sample(NET, SCHEDULE, 2, sampler="plms", progress=False)


def test_unknown_spacing_names_the_spacings():
    with pytest.raises(ValueError, match="spacing must be one of .*'karras'.*'exponential'"):
        fastddpm.sample(NET, SCHEDULE, 2, sampler="euler", spacing="polyexponential", progress=False)


@pytest.mark.parametrize("name,options,match", [
    ("unipc", dict(order=4), "order must be 1, 2 or 3 for unipc"),
    ("deis", dict(order=0), "order must be 1, 2 or 3 for deis"),
    ("dpmpp2m", dict(order=3), r"order does not apply to sampler='dpmpp2m' \(its options: solver_type"),
    ("dpmpp2m", dict(eta=0.5), "eta does not apply to sampler='dpmpp2m'"),
    ("unipc", dict(solver_type="bh3"), "solver_type must be one of 'bh1', 'bh2'"),
    ("ddpm", dict(variance="large"), "variance must be one of 'fixed_small'"),
])
def test_bad_sampler_option_is_one_line_naming_it(name, options, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        fastddpm.sample(NET, SCHEDULE, 2, sampler=name, steps=4, progress=False, **options)
    assert "\n" not in str(info.value)


class GaussianEps(torch.nn.Module):
    """The exact ε of 1-D data N(MU, SD²): E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ·MU)/(ᾱ·SD² + 1 − ᾱ)."""
    MU, SD = 0.5, 0.05

    def forward(self, x, t):
        a = torch.as_tensor(SCHEDULE.alphas_cumprod, dtype=x.dtype)[t.long()].view(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.MU) / (a * self.SD**2 + 1 - a)


@pytest.mark.parametrize("d2_coefficient,converges", [("exact", True), ("diffusers", False)])
def test_dpmpp3m_sde_converges_to_the_data(d2_coefficient, converges):
    """With the exact ε of Gaussian data, dpmpp3m-sde at 200 steps must draw that Gaussian. The
    exact D2 term (the default) does: std 0.04988 for 0.05 (n = 20,000, seed 0; estimator std
    0.5 %). diffusers' term, which tends to −1 instead of 0 as h → 0, stays 12 % wide (0.0560) at
    200 and at 500 steps: the reason the default is not diffusers' (kernels/samplers/dpmsolver.py)."""
    x = np.asarray(fastddpm.sample(GaussianEps(), SCHEDULE, 20000, sample_shape=(1,), sampler="dpmpp3m-sde",
                                   steps=200, seed=0, progress=False,
                                   sampler_options={"d2_coefficient": d2_coefficient}), dtype=np.float64)
    assert abs(x.mean() - GaussianEps.MU) <= 0.003
    assert (abs(x.std() / GaussianEps.SD - 1.0) <= 0.02) == converges, x.std()
