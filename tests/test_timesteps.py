"""Respaced timesteps against diffusers' set_timesteps (DDPM, DDIM, DPM-Solver++) and improved-diffusion."""
import numpy as np
import pytest

from fastddpm.sampling import step_pairs, timesteps

diffusers = pytest.importorskip("diffusers")

CASES = [(1000, 1), (1000, 10), (1000, 20), (1000, 50), (1000, 250), (1000, 999), (1000, 1000),
         (100, 7), (100, 33), (50, 3), (10, 10), (1, 1)]


@pytest.mark.parametrize("T,steps", CASES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("cls", ["DDPMScheduler", "DDIMScheduler"])
def test_matches_diffusers_ddpm_ddim(T, steps, spacing, cls):
    sched = getattr(diffusers, cls)(num_train_timesteps=T, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(timesteps(T, steps, spacing), sched.timesteps.numpy())


@pytest.mark.parametrize("T,steps", [c for c in CASES if c[1] < c[0]])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_matches_diffusers_dpmsolver(T, steps, spacing):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    np.testing.assert_array_equal(timesteps(T, steps, spacing, convention="dpmsolver"), sched.timesteps.numpy())


def test_steps_offset_as_diffusers():
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)
    sched.set_timesteps(50)
    np.testing.assert_array_equal(timesteps(1000, 50, "leading", steps_offset=1), sched.timesteps.numpy())


def _space_timesteps(num_timesteps, section_counts):
    """improved-diffusion respace.space_timesteps (openai/improved-diffusion, MIT), the oracle."""
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize("T,steps", [(1000, 250), (1000, 100), (1000, 50), (4000, 100), (100, 7), (1000, 1000)])
def test_linspace_is_improved_diffusion_respacing(T, steps):
    ours = timesteps(T, steps, "linspace")
    assert sorted(ours.tolist()) == sorted(_space_timesteps(T, [steps]))


def test_pairs_and_custom_list():
    t, prev = step_pairs(timesteps(1000, None, [999, 500, 20]))
    assert t.tolist() == [999, 500, 20] and prev.tolist() == [500, 20, -1]
    assert timesteps(1000).tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("bad,exc", [
    (dict(steps=0), ValueError), (dict(steps=1001), ValueError), (dict(steps=2.5), TypeError),
    (dict(spacing="cosine"), ValueError), (dict(spacing=[5, 5]), ValueError), (dict(spacing=[1000]), ValueError),
    (dict(spacing=[3, 7]), ValueError), (dict(spacing=[1.5]), TypeError),
])
def test_bad_input(bad, exc):
    kwargs = dict(steps=10, spacing="leading")
    kwargs.update(bad)
    if not isinstance(kwargs["spacing"], str):
        kwargs["steps"] = None
    with pytest.raises(exc, match="steps|spacing|timesteps"):
        timesteps(1000, **kwargs)


@pytest.mark.parametrize("T,steps", [(1000, 10), (1000, 20), (1000, 30), (100, 7), (50, 3)])
def test_logsnr_matches_diffusers_lu_lambdas(T, steps):
    # diffusers' use_lu_lambdas (uniform in log σ = −λ) rounds the same interpolated t; compared
    # where diffusers' own timesteps are distinct (for many steps it repeats t = 0, 1, ...).
    from fastddpm.sampling.timesteps import logsnr_timesteps

    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, use_lu_lambdas=True)
    sched.set_timesteps(steps)
    theirs = sched.timesteps.numpy()
    assert np.all(np.diff(theirs) < 0)
    np.testing.assert_array_equal(logsnr_timesteps(sched.alphas_cumprod.double().numpy(), steps), theirs)


@pytest.mark.parametrize("steps", [1, 2, 50, 100, 500, 1000])
def test_logsnr_distinct_and_spans(steps):
    import fastddpm
    from fastddpm.sampling.timesteps import logsnr_timesteps

    ts = logsnr_timesteps(fastddpm.Schedule.create("linear", 1000).alphas_cumprod, steps)
    assert ts.dtype == np.int64 and ts.size == steps and ts[0] == 999 and np.all(np.diff(ts) < 0)
    assert steps == 1 or ts[-1] == 0
    if steps == 1000:
        np.testing.assert_array_equal(ts, np.arange(999, -1, -1))


def test_logsnr_needs_the_schedule_and_sample_accepts_it():
    import torch

    import fastddpm
    from fastddpm.sampling.timesteps import logsnr_timesteps

    with pytest.raises(ValueError, match="alphas_cumprod"):
        timesteps(1000, 20, "logsnr")
    sched = fastddpm.Schedule.create("linear", 100)
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, t):
            return self.lin(x) * (1.0 + t[:, None] / 100.0)

    torch.manual_seed(0)
    model = Net()
    a = fastddpm.sample(model, sched, 8, sampler="dpmpp2m", spacing="logsnr", sample_shape=(2,), seed=3,
                        progress=False, return_trajectory=True, trajectory_steps="all")
    b = fastddpm.sample(model, sched, 8, sampler="dpmpp2m", spacing=logsnr_timesteps(sched.alphas_cumprod, 20).tolist(),
                        sample_shape=(2,), seed=3, progress=False)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b))
    assert list(a[1].timesteps[:-1]) == logsnr_timesteps(sched.alphas_cumprod, 20).tolist()


def test_default_spacing_per_sampler():
    """spacing=None (the default of every entry point) is the sampler's own default (``DEFAULTS`` in
    its module): ddpm and ddim leading (diffusers' default), the DPM-Solver family, unipc and deis
    uniform log-SNR, the Euler family karras (docs/sampling.md, "Quality vs network calls")."""
    import fastddpm
    from fastddpm.kernels import samplers
    from fastddpm.sampling import SamplingOptions, make_plan
    from fastddpm.sampling.timesteps import logsnr_timesteps

    assert SamplingOptions().spacing is None
    want = {"ddpm": "leading", "ddim": "leading", "euler": "karras", "euler-ancestral": "karras", "heun": "karras",
            **dict.fromkeys(("dpmpp2m", "dpmpp3m", "dpmpp2m-sde", "dpmpp3m-sde", "unipc", "deis"), "logsnr")}
    assert {name: samplers.defaults(name)["spacing"] for name in samplers.NAMES} == want
    s = fastddpm.Schedule.linear(1000)
    np.testing.assert_array_equal(make_plan(s, "ddpm", 250).t, timesteps(1000, 250, "leading"))
    np.testing.assert_array_equal(make_plan(s, "ddim").t, timesteps(1000, 50, "leading"))
    np.testing.assert_array_equal(make_plan(s, "dpmpp2m").t, logsnr_timesteps(s.alphas_cumprod, 20))
    np.testing.assert_array_equal(make_plan(s, "dpmpp2m", 10).t, logsnr_timesteps(s.alphas_cumprod, 10))
    eps = lambda x, t: 0.5 * x  # noqa: E731 (any deterministic model)
    eps.array_api, eps.sample_shape = "numpy", (2,)
    kw = dict(sampler="dpmpp2m", steps=7, seed=3, progress=False)
    np.testing.assert_array_equal(fastddpm.sample(eps, s, 5, **kw), fastddpm.sample(eps, s, 5, spacing="logsnr", **kw))
    with pytest.raises(ValueError, match="sampler"):
        make_plan(s, "euler-maruyama")
