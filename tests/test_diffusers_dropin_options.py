"""The options saved diffusers pipelines carry, on the drop-in schedulers: each equals diffusers' own
scheduler step by step (both fed diffusers' trajectory and the same noise) and, where it matters,
for whole runs.

Oracles: diffusers' DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler /
UniPCMultistepScheduler / EulerAncestralDiscreteScheduler with the same config; noise injected on
both sides (``variance_noise=``, or diffusers' ``randn_tensor`` patched to return the step's noise).
Tolerance rtol 1e-4 / atol 1e-5 on samples of magnitude ≲ 3 (atol scaled by the sample's largest
value for the Euler family, whose X = x/α reaches ~150 at t = T − 1): diffusers keeps its tables
in float32, fastddpm rounds float64 coefficients once, so single steps differ by a few float32
ulps (observed ≤ 2e-6 relative).
"""
import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from fastddpm import diffusers as fd  # noqa: E402

from _diffusers_models import one_torch_thread, tiny_unet  # noqa: E402,F401 (one_torch_thread: an autouse fixture)

T = 100
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


class LearnedVarianceNet(torch.nn.Module):
    """The tiny UNet's output as the mean, and a variance channel in (−1, 1) (learned_range) or
    (0, 0.05) (learned): an output of twice the sample's channels, as diffusers splits it."""

    def __init__(self, unet, kind):
        super().__init__()
        self.unet, self.kind = unet, kind

    def forward(self, x, t):
        mean = self.unet(x, t).sample
        v = torch.tanh(mean.flip(1))
        return torch.cat([mean, v if self.kind == "learned_range" else 0.025 * (v + 1)], dim=1)


def _x(batch=2, seed=1, scale=1.0):
    return scale * torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _noises(n, shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _close(got, want, ve=False, err="", scale=None):
    """ve: atol relative to the largest magnitude in play (the step's input X reaches 1/√ᾱ_{T−1})."""
    big = max(float(want.abs().max()), 0.0 if scale is None else float(scale.abs().max()))
    atol = TOL["atol"] * (max(1.0, big) if ve else 1.0)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=TOL["rtol"], atol=atol, err_msg=err)


def lockstep(theirs, ours, net, steps, *, noise=None, step_kw=None, begin=0, x=None, patch=None, monkeypatch=None,
             ve=False, timesteps=None):
    """Step both schedulers from diffusers' trajectory and compare every prev_sample. ``noise``:
    'variance_noise' (both take it) or 'patch' (diffusers' randn_tensor returns it; ours gets
    variance_noise). Returns the last sample."""
    if timesteps is not None:
        theirs.set_timesteps(timesteps=timesteps)
        ours.set_timesteps(timesteps=timesteps)
    else:
        theirs.set_timesteps(steps)
        ours.set_timesteps(steps)
    assert np.array_equal(ours.timesteps.numpy(), theirs.timesteps.numpy())
    if begin:
        theirs.set_begin_index(begin)
        ours.set_begin_index(begin)
    x = _x() if x is None else x
    if ve:
        x = x * float(theirs.init_noise_sigma)
    zs = _noises(len(theirs.timesteps))
    module = importlib.import_module(type(theirs).__module__)
    with torch.no_grad():
        for k, t in enumerate(theirs.timesteps[begin:], start=begin):
            inp_t, inp_o = theirs.scale_model_input(x, t), ours.scale_model_input(x, t)
            _close(inp_o, inp_t, ve, f"scale_model_input at step {k}")
            m = net(inp_t, t)
            m = m.sample if hasattr(m, "sample") else m
            kw_t = dict(step_kw or {})
            kw_o = dict(step_kw or {})
            if noise == "variance_noise":
                kw_t["variance_noise"] = kw_o["variance_noise"] = zs[k]
            elif noise == "patch":
                monkeypatch.setattr(module, "randn_tensor", lambda *a, _z=zs[k], **kw: _z.to(kw.get("dtype")
                                                                                            or torch.float32))
                kw_o["variance_noise"] = zs[k]
            a = theirs.step(m, t, x, **kw_t).prev_sample
            b = ours.step(m, t, x, **kw_o).prev_sample
            _close(b, a, ve, f"step {k} (t = {float(t)})", scale=x)
            x = a
    return x


def pair(name, **config):
    theirs = getattr(diffusers, name)(num_train_timesteps=T, **config)
    ours = getattr(fd, "Fused" + name).from_config(theirs.config)
    return theirs, ours


# ----------------------------------------------------------------------------------------
# DDPM
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
    dict(thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=3.0, prediction_type="v_prediction"),
    dict(timestep_spacing="leading", steps_offset=1),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(variance_type="fixed_small_log"),
], ids=["thresholding", "thresholding-v", "steps_offset", "zero_snr-v", "fixed_small_log"])
def test_ddpm_options_equal_diffusers(unet, monkeypatch, config):
    theirs, ours = pair("DDPMScheduler", **config)
    lockstep(theirs, ours, unet, 10, noise="patch", monkeypatch=monkeypatch)


@pytest.mark.parametrize("kind", ["learned", "learned_range"])
def test_ddpm_learned_variance_equals_diffusers(unet, monkeypatch, kind):
    """The variance half of a 2×-channel output sets σ: learned σ = √v, learned_range
    exp(½(frac·log β + (1 − frac)·log β̃)), frac = (v + 1)/2."""
    theirs, ours = pair("DDPMScheduler", variance_type=kind, clip_sample=False)
    lockstep(theirs, ours, LearnedVarianceNet(unet, kind), 8, noise="patch", monkeypatch=monkeypatch)


def test_ddpm_custom_timesteps_and_get_variance(unet, monkeypatch):
    theirs, ours = pair("DDPMScheduler")
    lockstep(theirs, ours, unet, None, noise="patch", monkeypatch=monkeypatch, timesteps=[90, 61, 60, 33, 7, 0])
    for t in (90, 60, 7, 0):
        assert int(ours.previous_timestep(t)) == int(theirs.previous_timestep(t))
        # rtol 1e-3: diffusers forms 1 − ᾱ in float32, and 1 − ᾱ_0 = 1e-4 carries ~6e-4 relative rounding
        # (one float32 ulp of ᾱ_0 ≈ 6e-8); ours is float64 (observed 1.7e-4 at t = 7)
        np.testing.assert_allclose(float(ours._get_variance(t)), float(theirs._get_variance(t)), rtol=1e-3, atol=1e-12)


def test_ddpm_zero_snr_epsilon_refuses_the_first_step():
    """ᾱ_{T−1} = 0: no x̂0 from ε there. diffusers returns inf/NaN; the drop-in raises, naming the
    setting — and still steps everywhere else."""
    ours = fd.FusedDDPMScheduler(num_train_timesteps=T, rescale_betas_zero_snr=True)
    x = _x()
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        ours.step(x, T - 1, x)
    assert torch.isfinite(ours.step(x, 50, x).prev_sample).all()


# ----------------------------------------------------------------------------------------
# DDIM
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,eta,clipped", [
    (dict(set_alpha_to_one=False, beta_start=0.01), 0.0, False),
    (dict(set_alpha_to_one=False), 0.6, False),
    (dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0), 0.0, True),
    (dict(clip_sample=True), 0.5, True),
    (dict(timestep_spacing="leading", steps_offset=1), 0.0, False),
    (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"), 0.3, False),
], ids=["no_alpha_to_one", "no_alpha_to_one-eta", "thresholding-clipped_eps", "clip-clipped_eps", "steps_offset",
        "zero_snr-v"])
def test_ddim_options_equal_diffusers(unet, config, eta, clipped):
    theirs, ours = pair("DDIMScheduler", **config)
    lockstep(theirs, ours, unet, 7, noise="variance_noise" if eta else None,
             step_kw=dict(eta=eta, use_clipped_model_output=clipped))


def test_ddim_steps_at_any_timestep_and_get_variance():
    """diffusers' DDIM steps from any t to t − T//n (not only the set timesteps)."""
    theirs, ours = pair("DDIMScheduler", clip_sample=False)
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    x, m, z = _x(seed=2), _x(seed=3), _x(seed=4)
    for t in (95, 33, 4):
        a = theirs.step(m, t, x, eta=0.8, variance_noise=z).prev_sample
        b = ours.step(m, t, x, eta=0.8, variance_noise=z).prev_sample
        _close(b, a, err=f"t = {t}")
    for t, p in ((42, 40), (9, -1), (0, 0)):  # rtol: as in the DDPM test (diffusers' float32 1 − ᾱ)
        np.testing.assert_allclose(float(ours._get_variance(t, p)), float(theirs._get_variance(t, p)), rtol=1e-3,
                                   atol=1e-12)


# ----------------------------------------------------------------------------------------
# DPM-Solver
# ----------------------------------------------------------------------------------------

DPM_CASES = {
    "2m-sigma_min": dict(final_sigmas_type="sigma_min"),
    "3m": dict(solver_order=3),
    "3m-sigma_min-no_lof": dict(solver_order=3, final_sigmas_type="sigma_min", lower_order_final=False),
    "1": dict(solver_order=1),
    "2m-heun-euler_at_final": dict(solver_type="heun", euler_at_final=True),
    "dpmsolver-2": dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
    "dpmsolver-3-v": dict(algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min",
                          prediction_type="v_prediction"),
    "2m-thresholding-sample": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5,
                                   prediction_type="sample"),
    "dpmsolver-thresholding": dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", thresholding=True,
                                   dynamic_thresholding_ratio=0.9, sample_max_value=1.2),
    "karras-v": dict(use_karras_sigmas=True, prediction_type="v_prediction"),
    "exponential": dict(use_exponential_sigmas=True, final_sigmas_type="sigma_min"),
    "beta": dict(use_beta_sigmas=True),
    "lu": dict(use_lu_lambdas=True),
    "lambda_min_clipped": dict(lambda_min_clipped=-3.0, beta_schedule="squaredcos_cap_v2"),
    "zero_snr-v-trailing": dict(rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                timestep_spacing="trailing"),
    "leading-offset": dict(timestep_spacing="leading", steps_offset=1),
}


@pytest.mark.parametrize("case", list(DPM_CASES))
def test_dpm_options_equal_diffusers(unet, case):
    theirs, ours = pair("DPMSolverMultistepScheduler", **DPM_CASES[case])
    lockstep(theirs, ours, unet, 8)


@pytest.mark.parametrize("config", [
    dict(algorithm_type="sde-dpmsolver++"), dict(algorithm_type="sde-dpmsolver++", solver_order=3),
    dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min")], ids=["sde++2", "sde++3", "sde-2"])
def test_dpm_sde_equals_diffusers_with_injected_noise(unet, config):
    theirs, ours = pair("DPMSolverMultistepScheduler", **config)
    lockstep(theirs, ours, unet, 8, noise="variance_noise")


@pytest.mark.parametrize("order,begin", [(3, 4), (2, 2)])
def test_dpm_run_started_mid_schedule_warms_up_again(unet, order, begin):
    """img2img: a run from set_begin_index(b) takes first-, then second-order steps again (its
    history starts empty), with the last steps' lowering of the whole schedule (20 steps ≥ 15)."""
    theirs, ours = pair("DPMSolverMultistepScheduler", solver_order=order)
    lockstep(theirs, ours, unet, 20, begin=begin)


def test_dpm_learned_range_uses_the_mean_half(unet):
    theirs, ours = pair("DPMSolverMultistepScheduler", variance_type="learned_range")
    lockstep(theirs, ours, LearnedVarianceNet(unet, "learned_range"), 6)


def test_dpm_custom_timesteps_equal_spaced_run(unet):
    theirs, ours = pair("DPMSolverMultistepScheduler", final_sigmas_type="sigma_min")
    lockstep(theirs, ours, unet, None, timesteps=[99, 80, 52, 30, 11, 2])


# ----------------------------------------------------------------------------------------
# UniPC
# ----------------------------------------------------------------------------------------

UNIPC_CASES = {
    "bh2-2": dict(), "bh1-1-sigma_min": dict(solver_order=1, solver_type="bh1", final_sigmas_type="sigma_min"),
    "bh1-3-sigma_min": dict(solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min"),
    "bh2-3-no_lof-sigma_min": dict(solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min"),
    "disable_corrector": dict(disable_corrector=[0, 3]),
    "thresholding-sample": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5,
                                prediction_type="sample"),
    "karras-v": dict(use_karras_sigmas=True, prediction_type="v_prediction"),
    "exponential-sigma_min": dict(use_exponential_sigmas=True, final_sigmas_type="sigma_min"),
    "zero_snr-v-trailing": dict(rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                timestep_spacing="trailing"),
    "leading-offset": dict(timestep_spacing="leading", steps_offset=1),
}


@pytest.mark.parametrize("case", list(UNIPC_CASES))
def test_unipc_equals_diffusers(unet, case):
    theirs, ours = pair("UniPCMultistepScheduler", **UNIPC_CASES[case])
    lockstep(theirs, ours, unet, 8)


def test_unipc_bh1_ending_at_zero_returns_x0_where_diffusers_returns_nan(unet):
    """The one documented difference (docs/sampling.md): bh1's B(h) = −h is −∞ at σ = 0 and
    diffusers multiplies it by an empty residual (NaN); the limit of the step is x̂0."""
    theirs, ours = pair("UniPCMultistepScheduler", solver_order=2, solver_type="bh1")
    for s in (theirs, ours):
        s.set_timesteps(4)
    x = _x()
    with torch.no_grad():
        for k, t in enumerate(theirs.timesteps):
            m = unet(x, t).sample
            a, b = theirs.step(m, t, x).prev_sample, ours.step(m, t, x).prev_sample
            if k < 3:
                _close(b, a, err=f"step {k}")
            else:
                assert torch.isnan(a).all() and torch.isfinite(b).all()
                ab = float(ours.alphas_cumprod[int(t)])
                _close(b, (x - (1 - ab) ** 0.5 * m) / ab ** 0.5, err="the last step is x̂0")
            x = a


def test_unipc_run_started_mid_schedule(unet):
    theirs, ours = pair("UniPCMultistepScheduler", solver_order=3)
    lockstep(theirs, ours, unet, 12, begin=5)


# ----------------------------------------------------------------------------------------
# Euler ancestral
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    dict(), dict(prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(timestep_spacing="leading", steps_offset=1),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")],
    ids=["linspace", "v-trailing", "leading-offset", "zero_snr-v"])
def test_euler_ancestral_equals_diffusers_with_injected_noise(unet, monkeypatch, config):
    """X = x/α is the pipeline's variable: scale_model_input, init_noise_sigma and every step agree."""
    theirs, ours = pair("EulerAncestralDiscreteScheduler", **config)
    assert float(ours.init_noise_sigma) == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6)
    lockstep(theirs, ours, unet, 8, noise="patch", monkeypatch=monkeypatch, ve=True)


# ----------------------------------------------------------------------------------------
# Whole runs inside an unchanged pipeline
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,config", [
    ("UniPCMultistepScheduler", dict(solver_order=3)),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, final_sigmas_type="sigma_min")),
    ("DDIMScheduler", dict(set_alpha_to_one=False, clip_sample=False, steps_offset=1)),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction")),
], ids=["unipc3", "dpmpp3m-sigma_min", "ddim-no_alpha_to_one", "dpmpp2m-karras"])
def test_deterministic_drop_ins_inside_ddpm_pipeline(unet, name, config):
    """DDPMPipeline(unet, scheduler=Fused….from_config(…)) runs unchanged and equals the same
    pipeline with diffusers' scheduler (both draw x_T from the same generator; no noise after)."""
    theirs = getattr(diffusers, name)(num_train_timesteps=T, **config)
    if name == "UniPCMultistepScheduler":  # diffusers' UniPC.step takes no generator, which DDPMPipeline passes
        theirs = _TakesGenerator.from_config(theirs.config)
    runs = {}
    for key, sched in (("theirs", theirs), ("ours", getattr(fd, "Fused" + name).from_config(theirs.config))):
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        runs[key] = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=7,
                         output_type="np").images
    assert ((runs["theirs"] > 0) & (runs["theirs"] < 1)).mean() > 0.3  # not clamped away
    np.testing.assert_allclose(runs["ours"], runs["theirs"], **TOL)


class _TakesGenerator(diffusers.UniPCMultistepScheduler):
    def step(self, *args, generator=None, **kwargs):
        return super().step(*args, **kwargs)


def test_euler_ancestral_inside_ddpm_pipeline_with_philox_noise(unet, monkeypatch):
    """DDPMPipeline runs the Euler-ancestral drop-in unchanged (as it runs diffusers' own: without
    scale_model_input or init_noise_sigma, which DDPMPipeline never calls) and equals diffusers'
    scheduler whose randn_tensor returns the drop-in's Philox noise of the run's seed, stream k + 1."""
    import fastddpm
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as mod

    theirs, ours = pair("EulerAncestralDiscreteScheduler")
    ours.noise_seed = 7
    calls = [1]

    def philox(shape, generator=None, device=None, dtype=None, **kw):
        calls[0] += 1
        return fastddpm.randn(tuple(shape), seed=7, stream=calls[0] - 1, like=torch.empty(0), dtype=dtype)

    runs = {}
    for key, sched in (("ours", ours), ("theirs", theirs)):
        if key == "theirs":
            monkeypatch.setattr(mod, "randn_tensor", philox)
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        runs[key] = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6,
                         output_type="np").images
    np.testing.assert_allclose(runs["ours"], runs["theirs"], **TOL)


def test_euler_ancestral_whole_run_equals_diffusers(unet, monkeypatch):
    """A whole Euler-ancestral run (the loop of diffusers' pipelines for it: x_T·init_noise_sigma,
    scale_model_input, step) with the same injected noise, from the same x_T."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as mod

    theirs, ours = pair("EulerAncestralDiscreteScheduler")
    zs = _noises(9)
    out = {}
    for key, sched in (("theirs", theirs), ("ours", ours)):
        sched.set_timesteps(9)
        x = _x() * sched.init_noise_sigma
        with torch.no_grad():
            for k, t in enumerate(sched.timesteps):
                m = unet(sched.scale_model_input(x, t), t).sample
                monkeypatch.setattr(mod, "randn_tensor", lambda *a, _z=zs[k], **kw: _z)
                x = sched.step(m, t, x, **({"variance_noise": zs[k]} if key == "ours" else {})).prev_sample
        out[key] = x
    np.testing.assert_allclose(out["ours"].numpy(), out["theirs"].numpy(), rtol=1e-4, atol=3e-5)


# ----------------------------------------------------------------------------------------
# Backends, dtypes, errors
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,config", [
    ("DDPMScheduler", dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, algorithm_type="sde-dpmsolver++")),
    ("UniPCMultistepScheduler", dict(solver_order=3)),
    ("EulerAncestralDiscreteScheduler", dict()),
    ("DDPMScheduler", dict(variance_type="learned_range")),
])
def test_numpy_backend_equals_numba(unet, name, config):
    """backend="numpy" (kernels.coefficients.apply_row, the reference noise) equals the fused Numba
    kernel on the same run, noise drawn from the same seed (stream k + 1)."""
    outs = {}
    net = LearnedVarianceNet(unet, "learned_range") if config.get("variance_type") else unet
    for backend in ("numba", "numpy"):
        sched = getattr(fd, "Fused" + name)(num_train_timesteps=T, **config)
        sched.backend, sched.noise_seed = backend, 3
        sched.set_timesteps(6)
        x = _x() * float(getattr(sched, "init_noise_sigma", 1.0))
        with torch.no_grad():
            for t in sched.timesteps:
                m = net(sched.scale_model_input(x, t), t)
                x = sched.step(m.sample if hasattr(m, "sample") else m, t, x).prev_sample
        outs[backend] = x
    np.testing.assert_allclose(outs["numpy"].numpy(), outs["numba"].numpy(), rtol=1e-5, atol=1e-5)


def test_float16_samples_step_in_float32_and_come_back_in_float16(unet):
    theirs, ours = pair("UniPCMultistepScheduler", thresholding=True, dynamic_thresholding_ratio=0.0)
    ours.set_timesteps(5)
    x = _x().half()
    with torch.no_grad():
        for t in ours.timesteps:
            x = ours.step(unet(x.float(), t).sample.half(), t, x).prev_sample
    assert x.dtype == torch.float16 and torch.isfinite(x).all()


@pytest.mark.parametrize("cls,setting,value", [
    ("FusedDDPMScheduler", "variance_type", "other"), ("FusedDDPMScheduler", "beta_schedule", "exp"),
    ("FusedDPMSolverMultistepScheduler", "use_flow_sigmas", True),
    ("FusedDPMSolverMultistepScheduler", "algorithm_type", "unknown"),
    ("FusedDPMSolverMultistepScheduler", "prediction_type", "flow_prediction"),
    ("FusedUniPCMultistepScheduler", "predict_x0", False), ("FusedUniPCMultistepScheduler", "solver_order", 4)])
def test_unsupported_settings_raise_naming_them(cls, setting, value):
    with pytest.raises(ValueError, match=setting):
        getattr(fd, cls)(num_train_timesteps=T, **{setting: value})


def test_repeated_timesteps_and_noise_going_up_are_refused():
    dpm = fd.FusedDPMSolverMultistepScheduler(num_train_timesteps=25)
    with pytest.raises(ValueError, match="timestep_spacing"):
        dpm.set_timesteps(25)  # linspace of 26 points over 25 steps repeats one
    with pytest.raises(ValueError, match="final_sigmas_type"):
        fd.FusedDPMSolverMultistepScheduler(algorithm_type="dpmsolver")
