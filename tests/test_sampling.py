"""Samplers against independent oracles: diffusers' schedulers (same model, same noise) and the
closed form of a Gaussian target."""
import numpy as np
import pytest

import fastddpm
from fastddpm.sampling import make_plan, sample

from _sampling_models import GaussianEps, tiny_mlp

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

T = 1000
N = 64
SEED = 123


@pytest.fixture(scope="module")
def schedule():
    return fastddpm.Schedule.linear(T)


@pytest.fixture(scope="module")
def mlp():
    return tiny_mlp()


def _noise(k, n=N, dim=2, seed=SEED):
    return torch.from_numpy(fastddpm.randn((n, dim), seed=seed, stream=k))


def _kwargs(schedule, **extra):
    return dict(num_train_timesteps=T, trained_betas=schedule.betas.tolist(), **extra)


def _diffusers_loop(sched, model, steps, step_kwargs=None, noise_arg=None, n=N):
    sched.set_timesteps(steps)
    x = _noise(0, n)
    with torch.inference_mode():
        for k, t in enumerate(sched.timesteps):
            m = model(x, t.expand(n))
            kw = dict(step_kwargs or {})
            if noise_arg:
                kw[noise_arg] = _noise(k + 1, n)
            x = sched.step(m, t, x, **kw).prev_sample
    return x.numpy()


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_loop_matches_diffusers(schedule, mlp, spacing, eta):
    sched = diffusers.DDIMScheduler(**_kwargs(schedule, clip_sample=False, set_alpha_to_one=True,
                                              timestep_spacing=spacing))
    ref = _diffusers_loop(sched, mlp, 10, dict(eta=eta), "variance_noise" if eta else None)
    ours = sample(mlp, schedule, N, sampler="ddim", steps=10, spacing=spacing, eta=eta, seed=SEED,
                  sample_shape=(2,), progress=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_ddim_step_prediction_and_clip_match_diffusers(schedule, prediction):
    sched = diffusers.DDIMScheduler(**_kwargs(schedule, clip_sample=True, clip_sample_range=1.0,
                                              set_alpha_to_one=True, prediction_type=prediction))
    sched.set_timesteps(20)
    x = _noise(0, 256)
    m = _noise(7, 256) * 0.8
    t = sched.timesteps[3]
    ref = sched.step(m, t, x, eta=0.5, variance_noise=_noise(4, 256)).prev_sample.numpy()
    plan = make_plan(schedule, "ddim", 20, eta=0.5, prediction=prediction, clip=1.0)
    # Loop position 3 draws its noise from stream 4, as in the loop above.
    from fastddpm.sampling.steppers import HostStepper

    out = np.empty_like(x.numpy())
    step = HostStepper(plan, "numba", SEED, np.float32).begin(out, 0)  # (draws x_T into out: replaced next)
    out[...] = x.numpy()
    step(3, m.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("steps,spacing", [(10, "leading"), (25, "linspace")])
def test_ddpm_respaced_loop_matches_diffusers(schedule, mlp, monkeypatch, steps, spacing):
    """diffusers' DDPMScheduler with num_inference_steps is improved-diffusion respacing."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod

    sched = diffusers.DDPMScheduler(**_kwargs(schedule, clip_sample=False, variance_type="fixed_small",
                                              timestep_spacing=spacing))
    calls = iter(range(1, steps + 1))
    monkeypatch.setattr(ddpm_mod, "randn_tensor", lambda shape, **kw: _noise(next(calls)))
    ref = _diffusers_loop(sched, mlp, steps)
    ours = sample(mlp, schedule, N, sampler="ddpm", steps=steps, spacing=spacing, seed=SEED,
                  sample_shape=(2,), progress=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=5e-5)


def _dpm_scheduler(schedule, spacing="linspace", prediction="epsilon"):
    return diffusers.DPMSolverMultistepScheduler(**_kwargs(
        schedule, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing=spacing,
        prediction_type=prediction))


@pytest.mark.parametrize("steps,spacing", [(10, "linspace"), (20, "leading"), (20, "trailing"), (2, "linspace"),
                                           (1, "linspace")])
def test_dpmpp2m_loop_matches_diffusers(schedule, mlp, steps, spacing):
    ref = _diffusers_loop(_dpm_scheduler(schedule, spacing), mlp, steps)
    ours = sample(mlp, schedule, N, sampler="dpmpp2m", steps=steps, spacing=spacing, seed=SEED,
                  sample_shape=(2,), progress=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("sampler,steps,std", [
    ("ddpm", None, [0.5, 1.5, 0.1]),
    ("ddim", 1000, [0.5, 1.5, 0.1]),
    # Few-step solvers end with x̂0 = E[x0 | x_t] from t ≈ 50, which shrinks a std of 0.1 to
    # 0.05 (exactly, for this target), so they are checked on wider targets only.
    ("dpmpp2m", 20, [0.5, 1.5, 1.0]),
])
def test_gaussian_target_closed_form(schedule, sampler, steps, std):
    """With the exact ε of N(mu, s²) data, samples have mean mu and std s (n = 4000)."""
    mu, s = np.array([2.0, -1.0, 0.0]), np.array(std)
    model = GaussianEps(schedule, mu, s)
    x = sample(model, schedule, 4000, sampler=sampler, steps=steps, seed=7, batch_size=4000,
               progress=False).astype(np.float64)
    # Standard errors: s/√n for the mean (≤ 0.024), ≈ s/√(2n) for the std (≤ 0.017): ~3σ bounds.
    np.testing.assert_allclose(x.mean(0), mu, atol=0.07)
    np.testing.assert_allclose(x.std(0), s, rtol=0.05, atol=0.01)
    assert model.calls == (T if steps is None else steps)
