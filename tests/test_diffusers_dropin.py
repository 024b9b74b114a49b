"""The drop-in schedulers (fastddpm.diffusers.Fused*) against diffusers' own, inside DDPMPipeline too.

Oracles: diffusers' DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler stepped on the
same inputs with the same noise (injected: ``variance_noise=`` on both sides, or diffusers'
``randn_tensor`` patched to return fastddpm's Philox noise of that step), and fastddpm.sample
for the seed → noise mapping. Tolerance rtol 1e-4 / atol 1e-5 as in test_diffusers_interop:
diffusers keeps its tables in float32 (observed differences ≤ 2.4e-6 here).
A tiny UNet2DModel built locally; no downloads.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: E402
from diffusers.pipelines.ddpm import pipeline_ddpm  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

import fastddpm  # noqa: E402
from fastddpm import Schedule  # noqa: E402
from fastddpm.diffusers import (FusedDDIMScheduler, FusedDDPMScheduler,  # noqa: E402
                                FusedDPMSolverMultistepScheduler)

from _diffusers_models import one_torch_thread, tiny_unet  # noqa: E402,F401 (one_torch_thread: an autouse fixture)

T = 100
TOL = dict(rtol=1e-4, atol=1e-5)
PAIRS = [(FusedDDPMScheduler, DDPMScheduler), (FusedDDIMScheduler, DDIMScheduler),
         (FusedDPMSolverMultistepScheduler, DPMSolverMultistepScheduler)]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _x_T(batch=2, seed=1):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _lockstep(theirs, ours, unet, steps, kw_theirs=None, kw_ours=None, begin=0):
    """Step both schedulers from the same x at every step (diffusers' trajectory) and compare
    each prev_sample. kw_*(k, x) give the step's extra arguments."""
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    if begin:
        theirs.set_begin_index(begin)
        ours.set_begin_index(begin)
    x = _x_T()
    with torch.no_grad():
        for k, t in enumerate(theirs.timesteps[begin:], start=begin):
            m = unet(x, t).sample
            a = theirs.step(m, t, x, **(kw_theirs(k, x) if kw_theirs else {})).prev_sample
            b = ours.step(m, t, x, **(kw_ours(k, x) if kw_ours else {})).prev_sample
            np.testing.assert_allclose(b.numpy(), a.numpy(), **TOL, err_msg=f"step {k} (t = {int(t)})")
            x = a
    return x


def _noises(steps, shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


@pytest.mark.parametrize("prediction,spacing,variance,clip", [
    ("epsilon", "leading", "fixed_small", True), ("v_prediction", "trailing", "fixed_small", False),
    ("sample", "linspace", "fixed_large", True)])
def test_ddpm_equals_diffusers_step_by_step_with_injected_noise(unet, monkeypatch, prediction, spacing, variance,
                                                                 clip):
    theirs = DDPMScheduler(num_train_timesteps=T, prediction_type=prediction, timestep_spacing=spacing,
                           variance_type=variance, clip_sample=clip)
    ours = FusedDDPMScheduler.from_config(theirs.config)
    steps = 10
    z = _noises(steps)

    def theirs_kw(k, x):  # DDPMScheduler.step draws randn_tensor(...): make it return z[k]
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, _z=z[k], **kw: _z)
        return {}

    _lockstep(theirs, ours, unet, steps, theirs_kw, lambda k, x: {"variance_noise": z[k]})


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("spacing", ["leading", "linspace"])  # linspace: the target t − T//n is not visited
def test_ddim_equals_diffusers_step_by_step(unet, eta, spacing):
    theirs = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, clip_sample=True)
    ours = FusedDDIMScheduler.from_config(theirs.config)
    steps = 8
    z = _noises(steps)
    kw = lambda k, x: {"eta": eta, "variance_noise": z[k] if eta else None}  # noqa: E731
    _lockstep(theirs, ours, unet, steps, kw, kw)


@pytest.mark.parametrize("prediction,spacing,steps,begin", [
    ("epsilon", "linspace", 6, 0), ("v_prediction", "trailing", 16, 0), ("epsilon", "leading", 8, 3)])
def test_dpmpp2m_equals_diffusers_step_by_step(unet, prediction, spacing, steps, begin):
    theirs = DPMSolverMultistepScheduler(num_train_timesteps=T, prediction_type=prediction, timestep_spacing=spacing)
    ours = FusedDPMSolverMultistepScheduler.from_config(theirs.config)
    assert ours.clip is None  # DPM-Solver never clips
    _lockstep(theirs, ours, unet, steps, begin=begin)  # begin > 0: a run that starts mid-schedule (img2img)


def _injected_philox(monkeypatch, module, seed, first_stream):
    """Make diffusers' ``module.randn_tensor`` return fastddpm's Philox noise: call j gets
    stream first_stream + j (offset 0, the whole batch), the noise fastddpm draws in-kernel."""
    calls = [first_stream]

    def fake(shape, generator=None, device=None, dtype=None, **kw):
        out = fastddpm.randn(tuple(shape), seed=seed, stream=calls[0], like=torch.empty(0), dtype=dtype)
        calls[0] += 1
        return out

    monkeypatch.setattr(module, "randn_tensor", fake)


@pytest.mark.parametrize("steps", [20, 7])  # 20 = every training step (prev = t − 1)
def test_ddpm_pipeline_runs_unchanged_with_the_fused_scheduler(unet, monkeypatch, steps):
    """DDPMPipeline(unet, scheduler=FusedDDPMScheduler.from_config(...)) runs as is and equals the
    diffusers pipeline whose noise is fastddpm's Philox noise of the same seed and step.
    (T = 20: over a 100-step chain the float32 differences of single steps, ≤ 2.4e-6, grow to
    3e-5 — the step-by-step tests above bound the steps themselves.)"""
    pipe = _quiet(DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20)))
    fused = _quiet(DDPMPipeline(unet=unet, scheduler=FusedDDPMScheduler.from_config(pipe.scheduler.config)))
    fused.scheduler.noise_seed = 7
    got = fused(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                output_type="np").images
    _injected_philox(monkeypatch, scheduling_ddpm, seed=7, first_stream=1)  # step k: stream k + 1
    want = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                output_type="np").images
    assert got.shape == want.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("fused_cls,theirs_cls", PAIRS[1:], ids=["ddim", "dpmpp2m"])
def test_deterministic_drop_ins_inside_ddpm_pipeline_equal_diffusers(unet, fused_cls, theirs_cls):
    """The DDIM (η = 0) and DPM-Solver++ drop-ins inside an unchanged DDPMPipeline equal the same
    pipeline with diffusers' own scheduler: both draw x_T from the same generator and add no noise."""
    theirs = theirs_cls.from_config({"num_train_timesteps": T, "clip_sample": False})
    pipe = _quiet(DDPMPipeline(unet=unet, scheduler=theirs))
    fused = _quiet(DDPMPipeline(unet=unet, scheduler=fused_cls.from_config(pipe.scheduler.config)))
    run = dict(batch_size=2, num_inference_steps=6, output_type="np")
    got = fused(generator=torch.Generator().manual_seed(0), **run).images
    want = pipe(generator=torch.Generator().manual_seed(0), **run).images
    assert got.shape == want.shape == (2, 8, 8, 3)
    assert ((want > 0) & (want < 1)).mean() > 0.3  # not all clamped away (observed 52 % / 42 %)
    np.testing.assert_allclose(got, want, **TOL)  # observed ≤ 2.4e-7; 5 steps instead of 6: 1e-2


def test_generator_seeds_the_run_once_and_matches_fastddpm_sample(unet):
    """The docstring's mapping: one uint32 from the generator at the first noisy step, then step k
    adds Philox(seed, stream k + 1) — the noise fastddpm.sample(seed=...) uses; x_T here is
    fastddpm's too (stream 0), so the two runs must agree."""
    sched = FusedDDPMScheduler(num_train_timesteps=T, clip_sample=True)
    steps = 6
    g = torch.Generator().manual_seed(123)
    seed = int(torch.randint(0, 2**32, (1,), generator=torch.Generator().manual_seed(123), dtype=torch.int64))

    def run(generator, noise_seed=None):
        sched.noise_seed = noise_seed
        sched.set_timesteps(steps)
        x = fastddpm.randn((3, 3, 8, 8), seed=seed, stream=0, like=torch.empty(0))
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x, generator=generator).prev_sample
        return x

    ours = run(g)
    assert torch.equal(g.get_state(), _advanced_once(123))  # exactly one draw from the generator
    assert torch.equal(run(None, noise_seed=seed), ours)
    ref = fastddpm.sample(unet, Schedule.from_diffusers(sched), 3, sampler="ddpm", steps=steps, seed=seed, clip=1.0,
                          batch_size=3, progress=False)
    np.testing.assert_allclose(ours.numpy(), np.asarray(ref), rtol=1e-5, atol=1e-6)
    assert not torch.equal(run(torch.Generator().manual_seed(124)), ours)


def _advanced_once(seed):
    g = torch.Generator().manual_seed(seed)
    torch.randint(0, 2**32, (1,), generator=g, dtype=torch.int64)
    return g.get_state()


def test_a_list_of_generators_gives_each_sample_its_own_noise(unet):
    """One generator per sample: sample b depends on its own generator only, not on its batch."""
    sched = FusedDDIMScheduler(num_train_timesteps=T, clip_sample=False)

    def run(x, generators):
        sched.set_timesteps(5)
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x, eta=1.0, generator=generators).prev_sample
        return x

    x = _x_T(batch=3)
    both = run(x, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = run(x[2:].clone(), [torch.Generator().manual_seed(3)])
    np.testing.assert_allclose(both[2:].numpy(), alone.numpy(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(both[0], both[1])
    with pytest.raises(ValueError, match="one per sample"):
        run(x, [torch.Generator()])


@pytest.mark.parametrize("fused,theirs", PAIRS)
def test_config_round_trip(tmp_path, fused, theirs):
    d = theirs(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=1e-3, beta_end=0.03,
               prediction_type="v_prediction", timestep_spacing="trailing")
    f = fused.from_config(d.config)
    assert _settings(f) == _settings(d)
    assert Schedule.from_diffusers(f) == Schedule.from_diffusers(d)
    f.save_config(tmp_path / "fused")
    assert _settings(theirs.from_pretrained(tmp_path / "fused")) == _settings(d)  # diffusers reads ours
    d.save_config(tmp_path / "theirs")
    assert _settings(fused.from_pretrained(tmp_path / "theirs")) == _settings(d)  # and we read diffusers'


def _settings(scheduler):
    """The config without diffusers' bookkeeping keys (_class_name, _diffusers_version, …)."""
    return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}


def test_add_noise_and_scale_model_input_equal_diffusers():
    x0, z = _x_T(4, seed=2), _x_T(4, seed=3)
    t = torch.tensor([0, 17, 50, 99])
    for fused, theirs in PAIRS:
        # DPM-Solver's add_noise looks t up in its inference timesteps: trailing with T steps has all
        d = theirs(num_train_timesteps=T, timestep_spacing="trailing")
        f = fused.from_config(d.config)
        if theirs is DPMSolverMultistepScheduler:
            d.set_timesteps(T)
            f.set_timesteps(T)
        np.testing.assert_allclose(f.add_noise(x0, z, t).numpy(), d.add_noise(x0, z, t).numpy(), **TOL)
        assert f.scale_model_input(x0, 3) is x0 and f.init_noise_sigma == 1.0 and f.order == 1 and len(f) == T


# (thresholding, learned variances, steps_offset, set_alpha_to_one=False, rescale_betas_zero_snr, solver
# order 3, the SDE and noise-prediction algorithms, Karras sigmas, heun, sigma_min are supported since
# issue 23: tests/test_diffusers_dropin_options.py compares each with diffusers)
@pytest.mark.parametrize("fused,setting,value", [
    (FusedDDPMScheduler, "variance_type", "other"), (FusedDDIMScheduler, "beta_schedule", "exp"),
    (FusedDDIMScheduler, "timestep_spacing", "karras"), (FusedDPMSolverMultistepScheduler, "solver_order", 4),
    (FusedDPMSolverMultistepScheduler, "use_flow_sigmas", True),
    (FusedDPMSolverMultistepScheduler, "use_dynamic_shifting", True),
    (FusedDPMSolverMultistepScheduler, "solver_type", "other"),
    (FusedDPMSolverMultistepScheduler, "final_sigmas_type", "sigma_max")])
def test_unsupported_settings_raise_naming_them(fused, setting, value):
    with pytest.raises(ValueError, match=setting):
        fused(num_train_timesteps=T, **{setting: value})


def test_bad_calls_raise_clear_errors(unet):
    x = _x_T()
    ddim = FusedDDIMScheduler(num_train_timesteps=T)
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim.step(x, 10, x)
    ddim.set_timesteps(5)
    with pytest.raises(ValueError, match="not both"):
        ddim.step(x, 80, x, eta=1.0, generator=torch.Generator(), variance_noise=x)
    ddpm = FusedDDPMScheduler(num_train_timesteps=T)
    ddpm.set_timesteps(5)
    with pytest.raises(ValueError, match="timestep 13 is not one"):
        ddpm.step(x, 13, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        ddpm.set_timesteps(T + 1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddpm.set_timesteps(timesteps=[10, 20])
    dpm = FusedDPMSolverMultistepScheduler(num_train_timesteps=T)
    dpm.set_timesteps(3)
    dpm.step(x, dpm.timesteps[0], x)
    with pytest.raises(ValueError, match="within a run"):
        dpm.step(x[:1], dpm.timesteps[1], x[:1])


def test_pipeline_with_fused_scheduler_saves_and_loads(tmp_path, unet):
    """save_pretrained records the fused class; diffusers loads it back (via fastddpm's lazy
    attribute) and fastddpm's Pipeline.from_diffusers reads the same directory."""
    pipe = DDPMPipeline(unet=unet, scheduler=FusedDDIMScheduler(num_train_timesteps=T, clip_sample=False))
    pipe.save_pretrained(tmp_path / "p")
    again = _quiet(DDPMPipeline.from_pretrained(tmp_path / "p"))
    assert type(again.scheduler) is FusedDDIMScheduler and _settings(again.scheduler) == _settings(pipe.scheduler)
    assert fastddpm.Pipeline.from_diffusers(tmp_path / "p").sampling_defaults["clip"] is None


def test_fastddpm_ddpm_on_a_saved_dir_equals_ddpm_pipeline_with_the_same_noise(tmp_path, unet, monkeypatch):
    """fastddpm's own stochastic DDPM sampler on a saved DDPMPipeline directory equals the
    pipeline when x_T and every step's noise are fastddpm's Philox noise (x_T: stream 0;
    step k: stream k + 1)."""
    scheduler = DDPMScheduler(num_train_timesteps=T, clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "p")
    ours = fastddpm.Pipeline.from_diffusers(tmp_path / "p").sample(3, sampler="ddpm", steps=10, seed=9, batch_size=3,
                                                                   engine="torch", progress=False)
    _injected_philox(monkeypatch, pipeline_ddpm, seed=9, first_stream=0)
    _injected_philox(monkeypatch, scheduling_ddpm, seed=9, first_stream=1)
    want = _quiet(DDPMPipeline.from_pretrained(tmp_path / "p"))(batch_size=3, num_inference_steps=10, output_type="pt").images
    # DDPMPipeline clamps (x + 1) / 2 to [0, 1]; fastddpm does not
    np.testing.assert_allclose(np.clip(np.asarray(ours), 0, 1), want.numpy(), **TOL)
