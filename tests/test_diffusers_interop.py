"""diffusers interop: schedules both ways, UNet2DModel as a fastddpm model (equal to DDPMPipeline)."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

import fastddpm  # noqa: E402
from fastddpm import Schedule  # noqa: E402

from _diffusers_models import one_torch_thread, tiny_unet  # noqa: E402,F401 (one_torch_thread: an autouse fixture)


def test_core_does_not_import_diffusers():
    code = "import sys, fastddpm; import fastddpm.sampling; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_schedule_from_diffusers_matches_betas(beta_schedule):
    sched = DDPMScheduler(num_train_timesteps=200, beta_schedule=beta_schedule, beta_start=2e-4, beta_end=0.03)
    ours = Schedule.from_diffusers(sched)
    # diffusers builds betas in float32: ours must be the float64 values they round to
    np.testing.assert_allclose(sched.betas.numpy(), ours.betas, rtol=2e-6, atol=1e-9)
    again = Schedule.from_diffusers(DDPMScheduler.from_config(ours.to_diffusers_config()))
    assert again == ours
    np.testing.assert_array_equal(DDPMScheduler.from_config(ours.to_diffusers_config()).betas.numpy(),
                                  sched.betas.numpy())


def test_cosine_is_squaredcos_cap_v2():
    assert Schedule.from_diffusers({"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}) \
        == Schedule.cosine(1000)


def test_trained_betas_round_trip():
    betas = np.linspace(1e-3, 0.05, 50) ** 1.5
    sched = DDPMScheduler(num_train_timesteps=50, trained_betas=betas.tolist())
    ours = Schedule.from_diffusers(sched)
    np.testing.assert_allclose(ours.betas, betas, rtol=1e-7)
    assert Schedule.from_diffusers(ours.to_diffusers_config()) == ours


def test_sampling_defaults_carried_over():
    sched = DDPMScheduler(prediction_type="v_prediction", variance_type="fixed_large", clip_sample=True,
                          clip_sample_range=2.0, timestep_spacing="trailing")
    ours = Schedule.from_diffusers(sched.config)
    assert ours.sampling_defaults == {"prediction": "v_prediction", "variance": "fixed_large", "clip": 2.0,
                                      "spacing": "trailing"}
    back = DDPMScheduler.from_config(ours.to_diffusers_config())
    for key in ("prediction_type", "variance_type", "clip_sample", "clip_sample_range", "timestep_spacing"):
        assert back.config[key] == sched.config[key], key
    assert Schedule.from_diffusers(DDPMScheduler(clip_sample=False)).sampling_defaults["clip"] is None
    # DPM-Solver has no clip_sample setting and never clips (the DDPM/DDIM default True must not apply)
    from diffusers import DPMSolverMultistepScheduler

    assert Schedule.from_diffusers(DPMSolverMultistepScheduler()).sampling_defaults["clip"] is None
    assert Schedule.from_diffusers(DPMSolverMultistepScheduler().config).sampling_defaults["clip"] is None


@pytest.mark.parametrize("setting,value", [("rescale_betas_zero_snr", True), ("thresholding", True),
                                           ("timestep_spacing", "karras"), ("variance_type", "learned_range"),
                                           ("beta_schedule", "exp"), ("steps_offset", 1)])
def test_unsupported_settings_raise(setting, value):
    with pytest.raises(ValueError, match=setting):
        Schedule.from_diffusers({"num_train_timesteps": 100, setting: value})


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_unet_sample_equals_diffusers(sampler):
    """Deterministic samplers after x_T: fastddpm's x_T (its trajectory's first state) goes into
    diffusers' own scheduler loop; the final samples must agree to float32 tolerance."""
    from diffusers import DPMSolverMultistepScheduler

    unet = tiny_unet()
    config = {"num_train_timesteps": 100, "beta_schedule": "linear", "clip_sample": False}
    if sampler == "ddim":
        sched = DDIMScheduler.from_config(config)
    else:  # diffusers' DPM-Solver defaults to timestep_spacing="linspace": from_diffusers carries it
        sched = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                         lower_order_final=True)
    schedule = Schedule.from_diffusers(sched)
    steps, n = 5, 2
    ours, traj = fastddpm.sample(unet, schedule, n, sampler=sampler, steps=steps, seed=3, backend="torch",
                                 progress=False, return_trajectory=True, trajectory_steps="all",
                                 **schedule.sampling_defaults)
    x = torch.as_tensor(np.asarray(traj.x)[0])
    sched.set_timesteps(steps)
    assert [int(t) for t in sched.timesteps] == [int(t) for t in traj.timesteps[:-1]]
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    np.testing.assert_allclose(np.asarray(ours), x.numpy(), rtol=1e-4, atol=1e-5)


def test_pipeline_from_diffusers_dir(tmp_path):
    from diffusers import DDPMPipeline

    unet = tiny_unet()
    scheduler = DDPMScheduler(num_train_timesteps=20, clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    pipe = fastddpm.Pipeline.from_diffusers(tmp_path / "pipe")
    assert pipe.sample_shape == (3, 8, 8) and pipe.sampling_defaults["clip"] == 1.0
    got = pipe.sample(2, steps=4, sampler="ddim", seed=1, engine="torch", progress=False)
    ref = fastddpm.sample(unet, Schedule.from_diffusers(scheduler), 2, sampler="ddim", steps=4, seed=1,
                          clip=1.0, backend="torch", progress=False)
    np.testing.assert_allclose(got, (np.asarray(ref) + 1) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="hub"):
        fastddpm.Pipeline.from_diffusers("google/ddpm-cifar10-32")


def test_unet_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fastddpm.onnx_export import export_onnx
    from fastddpm.sampling.adapters import as_fastddpm_model

    model = as_fastddpm_model(tiny_unet())
    path = export_onnx(model, str(tmp_path / "unet.onnx"))
    session = ort.InferenceSession(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = np.array([5, 17], dtype=np.int64)
    got = session.run(None, dict(zip([i.name for i in session.get_inputs()], [x, t])))[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# the scheduler classes whose saved configs name each timestep_spacing (DPMSolverMultistepScheduler's
# default is "linspace"), and a sampler that uses it
SPACING_CONFIGS = [("leading", DDPMScheduler, {}, "ddim"), ("trailing", DDIMScheduler, {"timestep_spacing": "trailing"},
                                                            "ddim"),
                   ("linspace", diffusers.DPMSolverMultistepScheduler, {}, "dpmpp2m")]


@pytest.mark.parametrize("spacing,scheduler_cls,settings,sampler", SPACING_CONFIGS, ids=[c[0] for c in SPACING_CONFIGS])
def test_cli_sample_on_diffusers_dir_follows_its_spacing(tmp_path, spacing, scheduler_cls, settings, sampler):
    """``fastddpm sample DIR`` without --spacing uses the saved scheduler's timestep_spacing, as
    diffusers would (run in-process: a subprocess spends ~15 s importing diffusers)."""
    from diffusers import DDPMPipeline

    from fastddpm.cli import main

    scheduler = scheduler_cls(num_train_timesteps=20, **settings)
    assert scheduler.config.timestep_spacing == spacing
    DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(tmp_path / "p")
    pipe = fastddpm.Pipeline.from_diffusers(tmp_path / "p")
    assert pipe.sampling_defaults["spacing"] == spacing
    out = tmp_path / "s.npy"
    assert main(["sample", str(tmp_path / "p"), "--n", "3", "--steps", "3", "--sampler", sampler, "--engine", "torch",
                 "--out", str(out), "--quiet"]) == 0
    kw = dict(sampler=sampler, steps=3, engine="torch", progress=False)
    np.testing.assert_allclose(np.load(out), pipe.sample(3, spacing=spacing, **kw), rtol=1e-6, atol=1e-6)
    if spacing != "leading":  # the spacing changes the samples: leading would have been another file
        assert not np.allclose(np.load(out), pipe.sample(3, spacing="leading", **kw), rtol=1e-3, atol=1e-3)
    if scheduler.config.get("clip_sample"):  # and without --clip the scheduler's clip_sample applies
        assert pipe.sampling_defaults["clip"] == scheduler.config.clip_sample_range
        assert not np.allclose(np.load(out), pipe.sample(3, spacing=spacing, clip=None, **kw), rtol=1e-3, atol=1e-3)
    out.unlink()  # --spacing given: the user's, not the scheduler's
    assert main(["sample", str(tmp_path / "p"), "--n", "3", "--steps", "3", "--sampler", sampler, "--engine", "torch",
                 "--spacing", "leading", "--out", str(out), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(out), pipe.sample(3, spacing="leading", **kw), rtol=1e-6, atol=1e-6)


def test_onnx_engine_export_and_identity_on_a_diffusers_dir(tmp_path, monkeypatch):
    """As for a fastddpm checkpoint: engine="onnx" (the cached export, onnxruntime's CPU provider)
    equals engine="torch" to float32 rounding and is exported once per weights; ``fastddpm export
    DIR`` writes a file that samples as the directory does (the scheduler's clip/spacing go with
    it); the identity resume records compare is the files' content, not the directory's path."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import shutil

    from diffusers import DDPMPipeline

    from fastddpm.cli import main
    from fastddpm.pipelines import engines

    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    exports = []
    real_export = engines.export_onnx
    monkeypatch.setattr(engines, "export_onnx", lambda *a, **k: exports.append(a[1]) or real_export(*a, **k))
    # trailing + clip_sample: settings fastddpm's own defaults (leading, no clip) do not have
    scheduler = DDPMScheduler(num_train_timesteps=20, timestep_spacing="trailing", clip_sample=True)
    DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(tmp_path / "p")
    pipe = fastddpm.Pipeline.from_diffusers(tmp_path / "p")
    kw = dict(sampler="ddpm", steps=5, seed=1, progress=False)
    want = pipe.sample(4, engine="torch", **kw)
    got = pipe.sample(4, engine="onnx", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # observed ≤ 2e-7
    assert len(exports) == 1 and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    # another Pipeline on the same weights, engine="auto" (the CPU default): the cached file
    np.testing.assert_array_equal(fastddpm.Pipeline.from_diffusers(tmp_path / "p").sample(4, **kw), got)
    assert len(exports) == 1

    # fastddpm export DIR → fastddpm sample FILE: the scheduler's trailing spacing and clip come along
    onnx_file = tmp_path / "unet.onnx"
    assert main(["export", str(tmp_path / "p"), "--out", str(onnx_file), "--quiet"]) == 0
    from_file = fastddpm.OnnxSampler(onnx_file, providers=["CPUExecutionProvider"])
    assert from_file.sampling_defaults == pipe.sampling_defaults == {"variance": "fixed_small", "clip": 1.0,
                                                                     "spacing": "trailing"}
    out = tmp_path / "from_file.npy"
    assert main(["sample", str(onnx_file), "--n", "4", "--steps", "5", "--sampler", "ddpm", "--seed", "1",
                 "--out", str(out), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6)

    # identity: a copy elsewhere is the same model; new weights saved over it are another
    shutil.copytree(tmp_path / "p", tmp_path / "q")
    assert fastddpm.Pipeline.from_diffusers(tmp_path / "q").model_id == pipe.model_id
    DDPMPipeline(unet=tiny_unet(seed=1), scheduler=scheduler).save_pretrained(tmp_path / "q")
    assert fastddpm.Pipeline.from_diffusers(tmp_path / "q").model_id != pipe.model_id
