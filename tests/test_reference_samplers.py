"""kernels/reference.py's whole-run samplers equal their anchors, diffusers' schedulers.

Each case runs the diffusers scheduler loop and ``reference.sample_run`` on the same small
network, from the same x_T, with the same injected noise, on the grid the scheduler itself
visits (its timesteps, and ᾱ from its own tables: alphas_cumprod for DDPM/DDIM, 1/(1+σ²) from
its ``sigmas`` for the σ-based ones), and compares every network input (the state at each call)
and the final sample.

Two comparisons per case, because "equal to float32 rounding" has two parts:
- the math (float64 everywhere): the network, the data, and the scheduler's scalar tables in
  float64 (its float32 tables cast up; its ``.to(torch.float32)`` upcasts made no-ops). Both
  sides evaluate the same formulas in float64 and agree to ≤ MATH_RTOL · magnitude.
- float32: the data and the network in float32 as in use, the scheduler's scalar tables in
  float64 (rounded to float32 where they meet the data, as the reference does). The two sides
  then differ only in the order of float32 operations: ≤ F32_ULPS · u · magnitude, u = 2⁻²⁴.
  The scheduler's *stock* float32 tables are not used: diffusers computes e.g. β = 1 − ᾱ_t/ᾱ_p
  in float32, an absolute error of u that is a relative error of u/β (5e-4 at DDPM's last step
  of a 1000-step run). That is diffusers' own rounding, not a difference in the math
  (test_stock_float32_tables_differ_by_diffusers_own_rounding measures it).

magnitude = Σ over the network calls of the magnitude the call's step works at, as it reaches
the next state (call_magnitudes: the state in the VE variable X = x/√ᾱ, which x̂0 = (x − σε̂)/α
divides a rounding error of x by, times √ᾱ′) + max |x_0|: rounding errors are relative to what
is combined, and the calls' errors add up over a run.
"""
from __future__ import annotations

import contextlib
import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler, DDPMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers import (  # noqa: E402
    scheduling_ddpm, scheduling_dpmsolver_multistep, scheduling_euler_ancestral_discrete,
    scheduling_euler_discrete,
)

from fastddpm.kernels import reference as R  # noqa: E402

T = 1000
B, D = 3, 5
U32 = 2.0**-24  # float32 unit roundoff
# float32: at each call both sides round each operation once (≤ u/2 of its result) and each
# float64 coefficient once (≤ u/2 of it); a step combines ≤ 5 terms no larger than its
# magnitude (call_magnitudes), so one call's disagreement is ≲ 3u of it, and a run's ≲ 3u of the
# sum (the steps do not amplify an error of the state beyond what the magnitude counts).
# 4 is that bound. Largest seen (error / (u · magnitude)): heun 1.9, euler-ancestral 1.7,
# deis 1.2, euler 0.9, ddpm 0.3; ddim, dpmpp* and unipc 0 — bitwise equal to diffusers once its
# tables are float64 (same formulas, same operation order).
F32_ULPS = 4
# float64: the same bound with u = 2⁻⁵³ is ~4e-16 of the magnitude; 1e-12 leaves room for what
# the magnitude leaves out (largest seen 5e-14: unipc, dpmpp3m-sde, heun). A difference in the
# math (a coefficient, an order, a noise term) is ≥ 1000× the float32 bound
# (test_the_comparison_can_fail).
MATH_RTOL = 1e-12

SIGMA_SCHEDULERS = {  # diffusers module of each σ-based scheduler whose step upcasts to float32
    DPMSolverMultistepScheduler: scheduling_dpmsolver_multistep,
    EulerDiscreteScheduler: scheduling_euler_discrete,
    EulerAncestralDiscreteScheduler: scheduling_euler_ancestral_discrete,
}


# ----------------------------------------------------------------------------------------
# The network: a Gaussian-data denoiser plus a fixed random nonlinear perturbation
# ----------------------------------------------------------------------------------------


class Net:
    """out(x, t) = the exact prediction for data N(0, s²·I) at ᾱ_t + 0.2·tanh(x·W + c·t/T).

    The Gaussian part keeps the run's magnitudes those of a trained network (x̂0 of order s,
    ε̂ of order 1 at every t); the perturbation makes the map nonlinear and mixes the D
    coordinates. With s = 1.5 the x̂0 of a run exceed a clip of 1 often, so clip is exercised.
    ``variance`` adds the second [B, D] half of DDPM's learned variances: v ∈ (−1, 1)
    (learned_range) or a variance in (0, 0.04) (learned).
    """

    S2 = 1.5**2

    def __init__(self, prediction, alphas_cumprod, dtype=torch.float32, variance=None):
        g = torch.Generator().manual_seed(1234)
        self.w = (torch.randn(D, 2 * D, generator=g) / math.sqrt(D)).to(dtype)
        self.c = torch.randn(2 * D, generator=g).to(dtype)
        self.ac = np.asarray(alphas_cumprod, dtype=np.float64)
        self.prediction, self.dtype, self.variance = prediction, dtype, variance

    def __call__(self, x, t):
        ab = float(self.ac[int(t)])
        denom = ab * self.S2 + 1.0 - ab
        h = torch.tanh(x @ self.w + self.c * (int(t) / T))
        eps = math.sqrt(1.0 - ab) / denom * x
        x0 = math.sqrt(ab) * self.S2 / denom * x
        ideal = {"epsilon": eps, "sample": x0,
                 "v_prediction": math.sqrt(ab) * eps - math.sqrt(1.0 - ab) * x0}[self.prediction]
        out = ideal + 0.2 * h[:, :D]
        if self.variance == "learned_range":
            out = torch.cat([out, h[:, D:]], dim=1)
        elif self.variance == "learned":
            out = torch.cat([out, 0.02 * (1.0 + h[:, D:])], dim=1)
        return out


def numpy_model(net, inputs):
    """The reference's view of ``net`` (NumPy in, NumPy out), recording every input."""

    def model(x, t):
        inputs.append(x.copy())
        return net(torch.from_numpy(np.ascontiguousarray(x)), t).numpy()

    return model


def x_T_and_noise(calls, seed=0):
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal((B, D)).astype(np.float32)
    zs = [rng.standard_normal((B, D)).astype(np.float32) for _ in range(calls)]
    return x_T, zs


# ----------------------------------------------------------------------------------------
# Running a diffusers scheduler
# ----------------------------------------------------------------------------------------


class _TorchF64(types.ModuleType):
    """``torch`` as a scheduler module sees it during a float64 run: torch.float32 → float64,
    so ``sample.to(torch.float32)`` keeps float64 data (everything else is torch itself)."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def patched(module, **attrs):
    old = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def tables_to_float64(sch):
    """Cast the scheduler's scalar tables to float64 (after set_timesteps, which builds them)."""
    for name in ("alphas_cumprod", "sigmas", "one", "final_alpha_cumprod"):
        value = getattr(sch, name, None)
        if isinstance(value, torch.Tensor):
            setattr(sch, name, value.to(torch.float64))


def run_diffusers(sch, net, x_T, zs, dtype, ve=False, step_kwargs=None, noise_module=None,
                  f64_tables=True):
    """The standard diffusers sampling loop. Returns (network inputs, final VP sample, sch).

    ve: a σ-based (Euler/Heun) scheduler whose state is X = x·√(σ²+1); the network then sees
    scale_model_input(X) and the integer t nearest the scheduler's (fastddpm feeds integer t).
    noise_module: the scheduler module whose randn_tensor to replace by the injected noise of
    the current call. step_kwargs(k) gives extra step() arguments (variance_noise, eta).
    """
    timesteps = list(sch.timesteps)
    if f64_tables:
        tables_to_float64(sch)
    x = torch.from_numpy(x_T).to(dtype)
    if ve:
        x = x * (sch.sigmas[0] ** 2 + 1) ** 0.5
    current = {}

    def randn_tensor(shape, *args, **kwargs):
        return torch.from_numpy(current["z"]).to(dtype).reshape(shape)

    inputs = []
    with contextlib.ExitStack() as stack:
        if dtype == torch.float64:
            module = SIGMA_SCHEDULERS.get(type(sch))
            if module is not None:
                stack.enter_context(patched(module, torch=_TorchF64("torch")))
        if noise_module is not None:
            stack.enter_context(patched(noise_module, randn_tensor=randn_tensor))
        for k, ts in enumerate(timesteps):
            current["z"] = zs[k] if k < len(zs) else None
            xin = sch.scale_model_input(x, ts) if ve else x
            inputs.append(xin.numpy().copy())
            out = net(xin, int(round(float(ts))))
            x = sch.step(out, ts, x, **(step_kwargs(k) if step_kwargs else {})).prev_sample
    if ve:
        x = x / (sch.sigmas[-1] ** 2 + 1) ** 0.5
    return inputs, x.numpy(), sch


def sigma_grid(sch, heun=False):
    """(t, alpha_bar) of a σ-based scheduler: its timesteps (rounded to integers) and
    ᾱ = 1/(1+σ²) of its float32 sigmas (1.0 for a final σ of 0). Heun's tables repeat every
    inner point for its two calls: its grid is every other entry."""
    sigmas = sch.sigmas.to(torch.float64).numpy()
    ts = sch.timesteps.to(torch.float64).numpy()
    if heun:
        sigmas = np.concatenate([sigmas[:1], sigmas[1::2]])
        ts = np.concatenate([ts[:1], ts[1::2]])
    return np.round(ts).astype(np.int64), 1.0 / (1.0 + sigmas**2)


def call_magnitudes(name, alpha_bar, inputs):
    """The magnitude of each network call's step, as it reaches the next state:
    max(|x_k|, |X_k|·√ᾱ′) with X_k = x_k/√ᾱ_k the state in the VE variable and ᾱ′ where the
    step lands. x̂0 = (x − σε̂)/α and the Euler/Heun X and d = (X − x̂0)/ρ are formed at |X_k|,
    so their rounding is relative to it, and they enter x′ through a coefficient ≤ √ᾱ′
    (√ᾱ′·β/(1−ᾱ) for DDPM, √ᾱ′ for DDIM, α′(1 − e^{−h}) for DPM-Solver++, x′ = √ᾱ′·X′ for the VE
    samplers). Heun's second call forms d̃ = (X̃ − x̂0)/ρ′ and adds (ρ′ − ρ)/2·d̃: the rounding of
    that difference is amplified by |ρ′ − ρ|/(2ρ′) (up to 145/2 for a last step from ρ = 1.46 to
    0.01), in diffusers as in the reference, so that call's magnitude carries the factor."""
    x = np.abs(np.stack(inputs).astype(np.float64)).max(axis=(1, 2))
    if name == "heun":
        ab = np.concatenate([alpha_bar[:1], np.repeat(alpha_bar[1:-1], 2)])
        ab_next = np.concatenate([np.repeat(alpha_bar[1:-1], 2), alpha_bar[-1:]])
        rho = np.sqrt((1.0 - alpha_bar) / alpha_bar)
        factor = np.ones(len(ab))
        factor[1::2] = np.maximum(1.0, (rho[:-2] - rho[1:-1]) / (2.0 * rho[1:-1]))
    else:
        ab, ab_next, factor = alpha_bar[:-1], alpha_bar[1:], 1.0
    return np.maximum(x, x / np.sqrt(ab) * np.sqrt(ab_next)) * factor


def discrepancy(name, alpha_bar, ref_inputs, ref_final, d_inputs, d_final):
    """(max |reference − diffusers| over every network input and the final sample, the run's
    magnitude Σ_k call_magnitudes + max |x_0|)."""
    assert len(ref_inputs) == len(d_inputs) == R.network_calls(name, len(alpha_bar) - 1)
    ref_all = np.stack(ref_inputs + [ref_final]).astype(np.float64)
    d_all = np.stack(d_inputs + [d_final]).astype(np.float64)
    assert np.all(np.isfinite(ref_all))
    magnitude = call_magnitudes(name, alpha_bar, ref_inputs).sum() + np.abs(ref_final).max()
    return np.abs(ref_all - d_all).max(), magnitude


# ----------------------------------------------------------------------------------------
# Cases: (sampler, anchor scheduler, its options) → both runs
# ----------------------------------------------------------------------------------------

LINEAR = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


class Case:
    """One sampler configuration: ``build()`` makes a fresh scheduler with its timesteps set;
    the grid comes from it; ``options`` go to reference.sample_run."""

    def __init__(self, name, build, options=None, final_alpha=None, step_kwargs=None,
                 noise_module=None, variance=None, ve=False):
        self.name, self.build, self.options = name, build, options or {}
        self.step_kwargs, self.noise_module = step_kwargs, noise_module
        self.variance, self.ve = variance, ve
        sch = build()
        self.alphas_cumprod = sch.alphas_cumprod.to(torch.float64).numpy()
        if final_alpha is None:  # σ-based: the grid is its sigmas
            self.t, self.alpha_bar = sigma_grid(sch, heun=name == "heun")
        else:  # ᾱ-based (DDPM, DDIM): its timesteps and alphas_cumprod, then the final ᾱ
            self.t = sch.timesteps.numpy().astype(np.int64)
            self.alpha_bar = np.append(self.alphas_cumprod[self.t], final_alpha(sch))

    @property
    def calls(self):
        return R.network_calls(self.name, len(self.t))

    def run(self, prediction, clip, dtype, zs_override=None, f64_tables=True):
        """Both runs in ``dtype``: {ref_inputs, ref_final, d_inputs, d_final, scheduler, zs}."""
        net = Net(prediction, self.alphas_cumprod, dtype, self.variance)
        x_T, zs = x_T_and_noise(self.calls)
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        ref_inputs = []
        with np.errstate(all="raise"):  # no silent inf/NaN inside the reference
            ref_final = R.sample_run(
                self.name, numpy_model(net, ref_inputs), x_T.astype(np_dtype), self.t,
                self.alpha_bar, lambda k, shape: zs[k].astype(np_dtype), prediction, clip,
                **self.options)
        assert ref_final.dtype == np_dtype
        d_zs = zs if zs_override is None else zs_override
        step_kwargs = (lambda k: self.step_kwargs(k, d_zs, dtype)) if self.step_kwargs else None
        d_inputs, d_final, sch = run_diffusers(
            self.build(), net, x_T, d_zs, dtype, ve=self.ve, step_kwargs=step_kwargs,
            noise_module=self.noise_module, f64_tables=f64_tables)
        return dict(ref_inputs=ref_inputs, ref_final=ref_final, d_inputs=d_inputs,
                    d_final=d_final, scheduler=sch, zs=zs)


SEEN = {}  # sampler → largest (float64 error / magnitude, float32 error / (u · magnitude))


def assert_matches(case, prediction, clip=None, diffusers_final=None, zs_override=None):
    """The reference equals diffusers on ``case``: every network input and the final sample, in
    float64 (≤ MATH_RTOL · magnitude) and in float32 (≤ F32_ULPS · u · magnitude).
    diffusers_final(runs) replaces diffusers' final sample (unipc bh1's NaN, see its test)."""
    ratios = []
    for dtype, unit, bound in ((torch.float64, 1.0, MATH_RTOL), (torch.float32, U32, F32_ULPS)):
        runs = case.run(prediction, clip, dtype, zs_override=zs_override)
        d_final = runs["d_final"] if diffusers_final is None else diffusers_final(runs)
        err, magnitude = discrepancy(case.name, case.alpha_bar, runs["ref_inputs"],
                                     runs["ref_final"], runs["d_inputs"], d_final)
        ratios.append(err / (unit * magnitude))
        assert err <= bound * unit * magnitude, (
            f"{case.name} {dtype}: max |reference − diffusers| = {err:.3e} > "
            f"{bound} · {unit:.3g} · magnitude {magnitude:.3g}")
    old = SEEN.get(case.name, (0.0, 0.0))
    SEEN[case.name] = (max(old[0], ratios[0]), max(old[1], ratios[1]))


def _noise_kwarg(k, zs, dtype):
    return {"variance_noise": torch.from_numpy(zs[k]).to(dtype)}


def ddpm_case(prediction, clip, steps, variance="fixed_small", spacing="leading", timesteps=None):
    def build():
        sch = DDPMScheduler(**LINEAR, prediction_type=prediction, clip_sample=clip is not None,
                            clip_sample_range=clip or 1.0, variance_type=variance,
                            timestep_spacing=spacing)
        sch.set_timesteps(steps if timesteps is None else None, timesteps=timesteps)
        return sch
    learned = variance if variance.startswith("learned") else None
    return Case("ddpm", build, {"variance": variance}, final_alpha=lambda s: 1.0,
                noise_module=scheduling_ddpm, variance=learned)


def ddim_case(prediction, clip, steps, eta=0.0, clipped_eps=False, set_alpha_to_one=True,
              steps_offset=0):
    def build():
        sch = DDIMScheduler(**LINEAR, prediction_type=prediction, clip_sample=clip is not None,
                            clip_sample_range=clip or 1.0, set_alpha_to_one=set_alpha_to_one,
                            steps_offset=steps_offset, timestep_spacing="leading")
        sch.set_timesteps(steps)
        return sch

    def step_kwargs(k, zs, dtype):
        kw = {"eta": eta, "use_clipped_model_output": clipped_eps}
        return {**kw, **_noise_kwarg(k, zs, dtype)} if eta > 0 else kw
    return Case("ddim", build, {"eta": eta, "clipped_eps": clipped_eps},
                final_alpha=lambda s: float(s.final_alpha_cumprod), step_kwargs=step_kwargs)


def dpm_case(order, sde, prediction, steps, final="zero", algorithm="dpmsolver++",
             solver_type="midpoint", karras=False, spacing="linspace", lower_order_final=True,
             euler_at_final=False):
    kind = ("sde-" if sde else "") + algorithm

    def build():
        sch = DPMSolverMultistepScheduler(
            **LINEAR, solver_order=order, prediction_type=prediction, algorithm_type=kind,
            solver_type=solver_type, lower_order_final=lower_order_final,
            euler_at_final=euler_at_final, final_sigmas_type=final, use_karras_sigmas=karras,
            timestep_spacing=spacing)
        sch.set_timesteps(steps)
        return sch
    name = f"dpmpp{order}m" + ("-sde" if sde else "")
    options = {"algorithm": algorithm, "solver_type": solver_type,
               "lower_order_final": lower_order_final, "euler_at_final": euler_at_final,
               **({"d2_coefficient": "diffusers"} if (order, sde) == (3, True) else {})}
    return Case(name, build, options, step_kwargs=_noise_kwarg if sde else None)


def unipc_case(order, prediction, steps, solver_type="bh2", final="zero", karras=False,
               spacing="linspace", lower_order_final=True, disable_corrector=()):
    def build():
        sch = UniPCMultistepScheduler(
            **LINEAR, solver_order=order, prediction_type=prediction, solver_type=solver_type,
            lower_order_final=lower_order_final, disable_corrector=list(disable_corrector),
            final_sigmas_type=final, use_karras_sigmas=karras, timestep_spacing=spacing)
        sch.set_timesteps(steps)
        return sch
    return Case("unipc", build, {"order": order, "solver_type": solver_type,
                                 "lower_order_final": lower_order_final,
                                 "disable_corrector": tuple(disable_corrector)})


def deis_case(order, prediction, steps, spacing="linspace", lower_order_final=True):
    def build():
        sch = DEISMultistepScheduler(**LINEAR, solver_order=order, prediction_type=prediction,
                                     lower_order_final=lower_order_final, timestep_spacing=spacing)
        sch.set_timesteps(steps)
        return sch
    return Case("deis", build, {"order": order, "lower_order_final": lower_order_final})


def euler_case(prediction, steps, final="zero", karras=False, spacing="linspace"):
    def build():
        sch = EulerDiscreteScheduler(**LINEAR, prediction_type=prediction,
                                     final_sigmas_type=final, use_karras_sigmas=karras,
                                     timestep_spacing=spacing)
        sch.set_timesteps(steps)
        return sch
    return Case("euler", build, ve=True)


def euler_ancestral_case(prediction, steps, spacing="linspace"):
    def build():
        sch = EulerAncestralDiscreteScheduler(**LINEAR, prediction_type=prediction,
                                              timestep_spacing=spacing)
        sch.set_timesteps(steps)
        return sch
    return Case("euler-ancestral", build, ve=True,
                noise_module=scheduling_euler_ancestral_discrete)


def heun_case(prediction, clip, steps, spacing="linspace"):
    def build():
        sch = HeunDiscreteScheduler(**LINEAR, prediction_type=prediction,
                                    clip_sample=clip is not None, clip_sample_range=clip or 1.0,
                                    timestep_spacing=spacing)
        sch.set_timesteps(steps)
        return sch
    return Case("heun", build, ve=True)


# ----------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------

PREDICTIONS = ("epsilon", "v_prediction", "sample")
STEPS = (4, 7, 15)  # 4 and 7 < 15: diffusers lowers the last two orders; 15: it does not
CLIPS = (None, 1.0)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread: the network is a [3, 5] matmul; thread hand-off would dominate."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("variance", R.DDPM_VARIANCES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm(prediction, clip, steps, variance):
    # "leading": the last t is 0, where diffusers adds no noise either.
    assert_matches(ddpm_case(prediction, clip, steps, variance), prediction, clip)


def test_ddpm_custom_timesteps():
    case = ddpm_case("epsilon", 1.0, None, timesteps=[950, 700, 420, 333, 90, 12, 0])
    assert list(case.t) == [950, 700, 420, 333, 90, 12, 0]
    assert_matches(case, "epsilon", 1.0)


@pytest.mark.parametrize("variance", R.DDPM_VARIANCES)
def test_ddpm_last_step_without_noise_is_diffusers_with_zero_last_noise(variance):
    # "trailing" ends at t = T/N − 1 > 0, where diffusers still adds σ·z (``if t > 0``) and
    # fastddpm adds none: with a zero last noise the two runs are the same.
    case = ddpm_case("v_prediction", None, 7, variance, spacing="trailing")
    assert case.t[-1] > 0
    _, zs = x_T_and_noise(case.calls)
    assert_matches(case, "v_prediction", zs_override=zs[:-1] + [np.zeros_like(zs[-1])])


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_diffusers_last_noise_is_the_whole_difference(variance):
    # ... and with the noise, diffusers' final sample is the reference's plus σ_last·z_last:
    # σ² = max(0, 1e-20) for fixed_small (ᾱ′ = 1), β = 1 − ᾱ_t for fixed_large.
    case = ddpm_case("epsilon", None, 7, variance, spacing="trailing")
    runs = case.run("epsilon", None, torch.float64)
    a = case.alpha_bar[-2]
    sigma = 1e-10 if variance == "fixed_small" else math.sqrt(1.0 - a)
    diff = runs["d_final"] - runs["ref_final"]
    np.testing.assert_allclose(diff, sigma * runs["zs"][-1].astype(np.float64), rtol=1e-9, atol=1e-12)
    if variance == "fixed_large":
        assert np.abs(diff).max() > 0.1  # a real difference, not rounding


@pytest.mark.parametrize("final", ["one", "alpha_0"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim(prediction, clip, steps, eta, final):
    # final ᾱ_0: Stable Diffusion's set_alpha_to_one=False with steps_offset=1 (last t = 1).
    kw = {} if final == "one" else {"set_alpha_to_one": False, "steps_offset": 1}
    assert_matches(ddim_case(prediction, clip, steps, eta, **kw), prediction, clip)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_clipped_eps(prediction, steps, eta):
    case = ddim_case(prediction, 1.0, steps, eta, clipped_eps=True)
    assert_matches(case, prediction, 1.0)


def test_ddim_final_alpha_0_at_t_0_is_a_null_step():
    # set_alpha_to_one=False, last t = 0: the last step goes from ᾱ_0 to ᾱ_0 (β = 0).
    case = ddim_case("epsilon", None, 7, 0.5, set_alpha_to_one=False)
    assert case.t[-1] == 0 and case.alpha_bar[-1] == case.alpha_bar[-2]
    assert_matches(case, "epsilon")


DPM_KINDS = [(2, False), (3, False), (2, True), (3, True)]


@pytest.mark.parametrize("solver_type", R.DPM_SOLVER_TYPES)
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order,sde", DPM_KINDS, ids=["2m", "3m", "2m-sde", "3m-sde"])
def test_dpmpp(order, sde, prediction, steps, final, solver_type):
    case = dpm_case(order, sde, prediction, steps, final, solver_type=solver_type)
    assert_matches(case, prediction)


@pytest.mark.filterwarnings("ignore:`algorithm_types dpmsolver and sde-dpmsolver`:FutureWarning")
@pytest.mark.parametrize("solver_type", R.DPM_SOLVER_TYPES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order,sde", DPM_KINDS[:3], ids=["2m", "3m", "2m-sde"])
def test_dpmsolver_noise_prediction(order, sde, prediction, steps, solver_type):
    case = dpm_case(order, sde, prediction, steps, "sigma_min", algorithm="dpmsolver",
                    solver_type=solver_type)
    assert_matches(case, prediction)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpmpp2m_karras(prediction, steps, final):
    # diffusers rounds the network's t for DPM-Solver with karras (linear betas); the math uses
    # its karras σ, which the grid carries as ᾱ = 1/(1+σ²).
    case = dpm_case(2, False, prediction, steps, final, karras=True)
    assert not np.isin(case.alpha_bar[:-1], case.alphas_cumprod).all()  # really off the table
    assert_matches(case, prediction)


def test_dpmpp3m_karras_sigma_min_null_last_step():
    # diffusers' karras σ end at σ_min and "sigma_min" appends σ_min again: the last step goes
    # nowhere. Not lowered (15 steps), diffusers' third-order formula gives NaN there (r0/(r0+r1)
    # = ∞/∞); the reference takes the limit, the identity: its final sample is the last input.
    case = dpm_case(3, False, "epsilon", 15, "sigma_min", karras=True)
    assert case.alpha_bar[-1] == case.alpha_bar[-2]

    def identity(runs):
        assert np.isnan(runs["d_final"]).all()
        return runs["d_inputs"][-1]
    assert_matches(case, "epsilon", diffusers_final=identity)


@pytest.mark.parametrize("option", ["lower_order_final", "euler_at_final"])
@pytest.mark.parametrize("steps", [7, 15])
def test_dpmpp3m_final_order_options(option, steps):
    kw = {"lower_order_final": False} if option == "lower_order_final" else {"euler_at_final": True}
    assert_matches(dpm_case(3, False, "epsilon", steps, "sigma_min", **kw), "epsilon")


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("solver_type", R.UNIPC_SOLVER_TYPES)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc(order, prediction, steps, solver_type, final):
    case = unipc_case(order, prediction, steps, solver_type, final)
    if solver_type == "bh1" and final == "zero":
        # diffusers' last UniP step multiplies B(h) = −h = −∞ by its empty residual 0 and
        # returns NaN; the reference takes the limit, x̂0 at the last point, which is the
        # scheduler's last converted model output.
        def limit(runs):
            assert np.isnan(runs["d_final"]).all()
            return runs["scheduler"].model_outputs[-1].numpy()
        assert_matches(case, prediction, diffusers_final=limit)
    else:
        assert_matches(case, prediction)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_unipc_karras(prediction, steps, final):
    case = unipc_case(2, prediction, steps, "bh2", final, karras=True)
    assert_matches(case, prediction)


@pytest.mark.parametrize("disable", [(0,), (1, 3), (0, 1, 2, 3, 4, 5)])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_disable_corrector(order, disable):
    assert_matches(unipc_case(order, "epsilon", 7, disable_corrector=disable), "epsilon")


@pytest.mark.parametrize("solver_type", R.UNIPC_SOLVER_TYPES)
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_without_lower_order_final(order, solver_type):
    case = unipc_case(order, "epsilon", 7, solver_type, "sigma_min", lower_order_final=False)
    assert_matches(case, "epsilon")


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis(order, prediction, steps):
    assert_matches(deis_case(order, prediction, steps), prediction)


@pytest.mark.parametrize("order", [2, 3])
def test_deis_without_lower_order_final(order):
    assert_matches(deis_case(order, "epsilon", 7, lower_order_final=False), "epsilon")


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler(prediction, steps, final):
    assert_matches(euler_case(prediction, steps, final), prediction)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_euler_karras(prediction, steps, final):
    # diffusers feeds Euler's network the fractional t of its karras σ; fastddpm feeds the
    # nearest integer, and so does run_diffusers: the σ of the math stay diffusers' own.
    case = euler_case(prediction, steps, final, karras=True)
    assert_matches(case, prediction)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])  # diffusers: no "sample"
def test_euler_ancestral(prediction, steps, spacing):
    assert_matches(euler_ancestral_case(prediction, steps, spacing), prediction)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_heun(prediction, clip, steps):
    assert_matches(heun_case(prediction, clip, steps), prediction, clip)


@pytest.mark.parametrize("make", [
    lambda: ddpm_case("epsilon", None, 1), lambda: ddim_case("epsilon", None, 1, 1.0),
    lambda: dpm_case(3, True, "epsilon", 1), lambda: unipc_case(3, "epsilon", 1),
    lambda: deis_case(3, "epsilon", 1), lambda: euler_case("epsilon", 1),
    lambda: euler_ancestral_case("epsilon", 1), lambda: heun_case("epsilon", None, 1),
], ids=["ddpm", "ddim", "dpmpp3m-sde", "unipc", "deis", "euler", "euler-ancestral", "heun"])
def test_single_step_runs(make):
    assert_matches(make(), "epsilon")


# ---- properties with no diffusers anchor ------------------------------------------------


def _reference(name, case_t, alpha_bar, prediction="epsilon", **options):
    net = Net(prediction, np.linspace(0.9999, 4e-5, T))
    x_T, zs = x_T_and_noise(2 * len(case_t))
    return R.sample_run(name, numpy_model(net, []), x_T, case_t, alpha_bar,
                        lambda k, shape: zs[k], prediction, **options)


def test_euler_ancestral_eta_0_is_euler_and_eta_scales_the_noise():
    case = euler_case("epsilon", 7)
    x_euler = _reference("euler", case.t, case.alpha_bar)
    np.testing.assert_array_equal(_reference("euler-ancestral", case.t, case.alpha_bar, eta=0.0),
                                  x_euler)
    spread = [np.abs(_reference("euler-ancestral", case.t, case.alpha_bar, eta=e) - x_euler).max()
              for e in (0.25, 1.0)]
    assert 0 < spread[0] < spread[1]


def test_ddim_eta_0_draws_no_noise_and_ddpm_is_ddim_eta_1_fixed_small():
    # DDIM with η = 1 has σ² = β̃ (fixed_small) and the same mean as DDPM (Song et al. 2021,
    # with ε̂ = (x − √ᾱ·x̂0)/√(1−ᾱ)): two different formulas, equal in exact arithmetic, so
    # in float64 they agree to rounding (~1e-16 of the VE magnitude ≤ 400 here; 1e-11 bound).
    case = ddpm_case("epsilon", None, 7)
    net = Net("epsilon", case.alphas_cumprod, torch.float64)
    x_T, zs = x_T_and_noise(7)
    x_T, zs = x_T.astype(np.float64), [z.astype(np.float64) for z in zs]
    calls = []
    R.sample_run("ddim", numpy_model(net, []), x_T, case.t, case.alpha_bar,
                 lambda k, shape: calls.append(k) or zs[k], eta=0.0)
    assert calls == []
    ddpm = R.sample_run("ddpm", numpy_model(net, []), x_T, case.t, case.alpha_bar,
                        lambda k, shape: zs[k])
    ddim = R.sample_run("ddim", numpy_model(net, []), x_T, case.t, case.alpha_bar,
                        lambda k, shape: zs[k], eta=1.0)
    assert np.abs(ddpm).max() > 1
    np.testing.assert_allclose(ddim, ddpm, rtol=0, atol=1e-11)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_consistency_equals_openai_stochastic_iterative_sampler(prediction, final):
    # No diffusers scheduler: the anchor is openai/consistency_models' stochastic_iterative_sampler,
    # written in its variance-exploding variable X = x/√ᾱ with σ = √((1−ᾱ)/ᾱ): x0 = denoiser(X, σ);
    # X = x0 + √(σ′² − σ_end²)·z, the last denoised x0 the sample (σ_end = 0 at a clean end; with
    # final="sigma_min" the run ends re-noised to σ(t = 0)). The VP reference must agree up to rounding.
    alphas = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))
    t = np.array([999, 700, 400, 120, 30])
    ab = np.append(alphas[t], 1.0 if final == "zero" else alphas[0])
    net = Net(prediction, alphas, torch.float64)
    x_T, zs = x_T_and_noise(len(t))
    x_T, zs = x_T.astype(np.float64), [z.astype(np.float64) for z in zs]
    got = R.sample_run("consistency", numpy_model(net, []), x_T, t, ab, lambda k, shape: zs[k], prediction)

    def denoiser(X, i):  # the VP network's x̂0 at the VE point X (fed x = √ᾱ·X)
        x = np.sqrt(ab[i]) * X
        out = net(torch.from_numpy(x), int(t[i])).numpy()
        if prediction == "epsilon":
            return (x - np.sqrt(1 - ab[i]) * out) / np.sqrt(ab[i])
        return np.sqrt(ab[i]) * x - np.sqrt(1 - ab[i]) * out if prediction == "v_prediction" else out

    sig = np.sqrt((1 - ab) / ab)
    X = x_T / np.sqrt(ab[0])
    for i in range(len(t)):
        x0 = denoiser(X, i)
        X = x0 + np.sqrt(sig[i + 1] ** 2) * zs[i]  # σ_end = 0: the VP form carries the end point in ᾱ
    want = np.sqrt(ab[-1]) * X
    assert np.abs(want).max() > 0.5
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    one = R.sample_run("consistency", numpy_model(net, []), x_T, t[:1], np.array([ab[0], 1.0]),
                       lambda k, shape: zs[k], prediction)
    np.testing.assert_allclose(one, denoiser(x_T / np.sqrt(ab[0]), 0), rtol=0, atol=1e-12)  # one step: x̂0


@pytest.mark.parametrize("name", [n for n in R.SAMPLER_NAMES if n != "deis"])
def test_clip_bounds_x0_for_every_sampler(name):
    # No anchor clips for dpmpp*, unipc, euler and euler-ancestral; all of them end at σ = 0 on
    # x̂0 of the last call, so a network whose x̂0 is always 5 ends at the clip value 0.75.
    case = euler_case("sample", 7)
    x_T, zs = x_T_and_noise(2 * len(case.t))
    out = R.sample_run(name, lambda x, t: np.full_like(x, 5.0), x_T, case.t, case.alpha_bar,
                       lambda k, shape: zs[k], "sample", clip=0.75)
    np.testing.assert_allclose(out, 0.75, rtol=0, atol=4 * U32)


def test_the_comparison_can_fail():
    # A wrong option on the reference's side only (midpoint vs heun, one corrector dropped, an
    # order lower, the noise missing from diffusers) is ≥ 1000× the float32 tolerance.
    wrong = [
        (dpm_case(2, False, "epsilon", 7), {"solver_type": "heun"}, None),
        (unipc_case(3, "epsilon", 7), {"disable_corrector": (2,)}, None),
        (deis_case(3, "epsilon", 7), {"order": 2}, None),
        (dpm_case(3, True, "epsilon", 7), {}, [np.zeros((B, D), np.float32)] * 7),
    ]
    for case, options, zs in wrong:
        case.options.update(options)
        runs = case.run("epsilon", None, torch.float64, zs_override=zs)
        err, magnitude = discrepancy(case.name, case.alpha_bar, runs["ref_inputs"],
                                     runs["ref_final"], runs["d_inputs"], runs["d_final"])
        assert err > 1000 * F32_ULPS * U32 * magnitude, (case.name, options)


def test_stock_float32_tables_differ_by_diffusers_own_rounding():
    # diffusers with its own float32 tables vs the same scheduler with them in float64, both on
    # float32 data: the whole difference is diffusers' float32 coefficient arithmetic. For a
    # 1000-step DDPM it is ~1e-4 (β = 1 − ᾱ_t/ᾱ_p rounded to an absolute u, ~u/β relative):
    # far above F32_ULPS · u · magnitude, which is why the comparisons use float64 tables.
    case = ddpm_case("epsilon", None, 1000)
    stock = case.run("epsilon", None, torch.float32, f64_tables=False)
    f64 = case.run("epsilon", None, torch.float32)
    err_stock = np.abs(stock["d_final"] - stock["ref_final"]).max()
    err_f64 = np.abs(f64["d_final"] - f64["ref_final"]).max()
    assert err_f64 < 1e-6 < 1e-5 < err_stock


# ---- the interface ----------------------------------------------------------------------


def test_sample_run_rejects_bad_input():
    t = np.array([999, 500, 0])
    ab = np.array([0.01, 0.5, 0.999, 1.0])
    x = np.zeros((2, 3), np.float32)

    def model(x, t):
        return np.zeros_like(x)

    def noise(k, shape):
        return np.zeros(shape, np.float32)

    bad = [
        (("nope", model, x, t, ab, noise), {}, "sampler must be one of"),
        (("ddpm", model, x, t, ab, noise), {"prediction": "x0"}, "prediction must be one of"),
        (("ddpm", model, x, t, ab, noise), {"clip": 0.0}, "clip must be None or > 0"),
        (("ddpm", model, x, t, ab[:-1], noise), {}, r"alpha_bar must have N\+1"),
        (("ddpm", model, x, t, ab[::-1].copy(), noise), {}, "non-decreasing"),
        (("ddpm", model, x, t.astype(float), ab, noise), {}, "integer"),
        (("ddpm", model, x[0], t, ab, noise), {}, r"\[B, D\]"),
        (("ddpm", model, x, t, ab, noise), {"variance": "large"}, "variance must be one of"),
        (("ddpm", model, x, t, ab, noise), {"variance": "learned"}, "model output has shape"),
        (("ddpm", lambda x, t: np.full((2, 6), -1.0), x, t, ab, noise), {"variance": "learned"},
         "values < 0"),
        (("deis", model, x, t, ab, noise), {}, "final ᾱ < 1"),
        (("dpmpp2m", model, x, t, ab, noise), {"algorithm": "dpmsolver"}, "final ᾱ < 1"),
        (("dpmpp2m", model, x, t, ab, noise), {"solver_type": "bh2"}, "solver_type must be"),
        (("unipc", model, x, t, ab, noise), {"order": 4}, "order must be 1, 2 or 3"),
        (("unipc", model, x, t, ab, noise), {"lower_order_final": False}, "final ᾱ < 1"),
        (("ddim", model, x, t, ab, noise), {"eta": 3.0}, "too large"),
        (("ddim", model, x, t, ab, noise), {"eta": -0.5}, "eta must be"),
        (("euler-ancestral", model, x, t, ab, noise), {"eta": -1.0}, "eta must be"),
        (("dpmpp3m-sde", model, x, t, np.append(ab[:-1], 0.9999), noise),
         {"algorithm": "dpmsolver"}, "third-order SDE"),
    ]
    for args, kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            R.sample_run(*args, **kwargs)
    with pytest.raises(TypeError):
        R.sample_run("euler", model, x, t, ab, noise, eta=1.0)
