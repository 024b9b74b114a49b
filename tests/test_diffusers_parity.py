"""ddpm_step / ddim_step / q_sample against diffusers on the same inputs and noise.

diffusers keeps its tables in float32, which alone is off by ~1e-4 near t = 1 for cosine; the
schedulers here get our float64 tables (after checking that their own float32 betas are ours
rounded) and float64 inputs, so the comparison tests the kernels, not diffusers' rounding:
- float64 kernels vs float64 diffusers: the same formulas in a different algebraic form,
  rtol = atol = 1e-10;
- float32 kernels vs float64 diffusers: ≤ 1e-6·M, M = the sum of the magnitudes of the terms
  (coefficient × operand) that make up the result — the float32 kernel rounds about ten times
  (coefficients and operations, 2⁻²⁴ ≈ 6e-8 each), so its error is below ~6e-7·M.
One batch holds every t from 0 to T−1 (per-sample t); diffusers steps one t at a time.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

import fastddpm  # noqa: E402
from fastddpm import Schedule  # noqa: E402

T = 1000
D = 6  # elements per sample
BETA_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = ["epsilon", "sample", "v_prediction"]


def _schedule(name):
    return Schedule.linear(T) if name == "linear" else Schedule.cosine(T)


def _use_float64_tables(sched, ours):
    np.testing.assert_allclose(sched.betas.numpy(), ours.betas, rtol=1e-6)  # same schedule, rounded
    sched.betas = torch.tensor(ours.betas)
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


def _data(batch, seed):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((batch, D)) for _ in range(3))  # x, model output, noise


def _x0_terms(ab, x, m, prediction):
    """|cx·x| + |cm·m| of x̂0 per element (float64)."""
    ab = ab[:, None]
    if prediction == "epsilon":
        return np.abs(x) / np.sqrt(ab) + np.sqrt(1 / ab - 1) * np.abs(m)
    if prediction == "v_prediction":
        return np.sqrt(ab) * np.abs(x) + np.sqrt(1 - ab) * np.abs(m)
    return np.abs(m)


def _compare(ours64, ours32, theirs, magnitude):
    np.testing.assert_allclose(ours64, theirs, rtol=1e-10, atol=1e-10)
    err = np.abs(ours32.astype(np.float64) - theirs)
    assert np.all(err <= 1e-6 * magnitude), float((err / magnitude).max())


def _ddpm_reference(name, prediction, variance, clip, timesteps, prev, x, m, z, monkeypatch):
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=BETA_SCHEDULE[name], prediction_type=prediction,
                          variance_type=variance, clip_sample=clip is not None, clip_sample_range=clip or 1.0)
    if prev is not None:
        sched.set_timesteps(timesteps=list(timesteps))
    _use_float64_tables(sched, _schedule(name))
    out = np.empty_like(x)
    for b, t in enumerate(timesteps):
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, _z=z[b:b + 1], **k: torch.from_numpy(_z))
        out[b] = sched.step(torch.from_numpy(m[b:b + 1]), int(t), torch.from_numpy(x[b:b + 1])).prev_sample.numpy()
    return out


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddpm_step_matches_diffusers(name, prediction, variance, clip, monkeypatch):
    ours = _schedule(name)
    timesteps = np.arange(T - 1, -1, -1)
    x, m, z = _data(T, seed=len(name) + 3 * len(prediction) + len(variance))
    theirs = _ddpm_reference(name, prediction, variance, clip, timesteps, None, x, m, z, monkeypatch)
    kw = dict(prediction=prediction, variance=variance, clip=clip)
    got64 = fastddpm.ddpm_step(ours, x, m, timesteps, noise=z, **kw)
    got32 = fastddpm.ddpm_step(ours, x.astype(np.float32), m.astype(np.float32), timesteps,
                               noise=z.astype(np.float32), **kw)
    _compare(got64, got32, theirs, _ddpm_magnitude(ours, timesteps, timesteps - 1, x, m, z, prediction, variance))


def _ddpm_magnitude(ours, t, prev, x, m, z, prediction, variance):
    ab_t = ours.alphas_cumprod[t]
    ab_p = np.where(prev >= 0, ours.alphas_cumprod[np.maximum(prev, 0)], 1.0)
    beta_c = 1 - ab_t / ab_p
    c1 = np.sqrt(ab_p) * beta_c / (1 - ab_t)
    c2 = np.sqrt(1 - beta_c) * (1 - ab_p) / (1 - ab_t)
    var = beta_c if variance == "fixed_large" else np.maximum((1 - ab_p) / (1 - ab_t) * beta_c, 1e-20)
    sigma = np.where(prev >= 0, np.sqrt(var), 0.0)
    return (c1[:, None] * _x0_terms(ab_t, x, m, prediction) + c2[:, None] * np.abs(x)
            + sigma[:, None] * np.abs(z))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm_respaced_matches_diffusers(prediction, monkeypatch):
    ours = _schedule("cosine")
    timesteps = np.array([999, 950, 800, 799, 600, 333, 100, 42, 7, 1, 0])
    prev = np.append(timesteps[1:], -1)
    x, m, z = _data(len(timesteps), seed=11)
    theirs = _ddpm_reference("cosine", prediction, "fixed_small", 1.0, timesteps, prev, x, m, z, monkeypatch)
    kw = dict(prev_t=prev, prediction=prediction, clip=1.0)
    got64 = fastddpm.ddpm_step(ours, x, m, timesteps, noise=z, **kw)
    got32 = fastddpm.ddpm_step(ours, *(a.astype(np.float32) for a in (x, m)), timesteps,
                               noise=z.astype(np.float32), **kw)
    _compare(got64, got32, theirs, _ddpm_magnitude(ours, timesteps, prev, x, m, z, prediction, "fixed_small"))


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip,num_inference_steps", [(None, T), (1.0, 50)])  # every t; clip respaced
def test_ddim_step_matches_diffusers(name, prediction, eta, clip, num_inference_steps):
    ours = _schedule(name)
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule=BETA_SCHEDULE[name], prediction_type=prediction,
                          clip_sample=clip is not None, clip_sample_range=clip or 1.0, set_alpha_to_one=True)
    sched.set_timesteps(num_inference_steps)
    _use_float64_tables(sched, ours)
    timesteps = sched.timesteps.numpy().astype(np.int64)
    prev = np.maximum(timesteps - T // num_inference_steps, -1)
    x, m, z = _data(len(timesteps), seed=len(name) + len(prediction) + int(10 * eta))
    theirs = np.empty_like(x)
    for b, t in enumerate(timesteps):
        theirs[b] = sched.step(torch.from_numpy(m[b:b + 1]), int(t), torch.from_numpy(x[b:b + 1]), eta=eta,
                               variance_noise=torch.from_numpy(z[b:b + 1])).prev_sample.numpy()
    kw = dict(prev_t=prev, eta=eta, prediction=prediction, clip=clip)
    got64 = fastddpm.ddim_step(ours, x, m, timesteps, noise=z, **kw)
    got32 = fastddpm.ddim_step(ours, x.astype(np.float32), m.astype(np.float32), timesteps,
                               noise=z.astype(np.float32), **kw)
    ab_t = ours.alphas_cumprod[timesteps]
    ab_p = np.where(prev >= 0, ours.alphas_cumprod[np.maximum(prev, 0)], 1.0)
    sigma = eta * np.sqrt((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p))
    x0_mag = _x0_terms(ab_t, x, m, prediction)
    eps_mag = np.abs(m) if prediction == "epsilon" else (np.abs(x) + np.sqrt(ab_t)[:, None] * x0_mag) / np.sqrt(1 - ab_t)[:, None]
    mag = (np.sqrt(ab_p)[:, None] * x0_mag + np.sqrt(np.maximum(1 - ab_p - sigma**2, 0))[:, None] * eps_mag
           + sigma[:, None] * np.abs(z))
    _compare(got64, got32, theirs, mag)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_matches_add_noise(name):
    ours = _schedule(name)
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=BETA_SCHEDULE[name])
    _use_float64_tables(sched, ours)
    timesteps = np.arange(T)
    x0, _, z = _data(T, seed=5)
    theirs = sched.add_noise(torch.from_numpy(x0), torch.from_numpy(z), torch.from_numpy(timesteps)).numpy()
    got64, _ = fastddpm.q_sample(ours, x0, timesteps, z)
    got32, _ = fastddpm.q_sample(ours, x0.astype(np.float32), timesteps, z.astype(np.float32))
    ab = ours.alphas_cumprod[timesteps][:, None]
    _compare(got64, got32, theirs, np.sqrt(ab) * np.abs(x0) + np.sqrt(1 - ab) * np.abs(z))
