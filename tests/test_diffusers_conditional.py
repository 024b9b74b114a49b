"""diffusers and conditioning (issue 25): a class-conditional UNet2DModel (``num_class_embeds``) sampled by
fastddpm with labels and guidance, and the drop-in schedulers inside a class-conditional pipeline.

Oracle: diffusers' DiT pipeline loop written out (its __call__ needs a Transformer2DModel and a VAE):
``latent_model_input = cat([x, x])``, ``class_labels = cat([y, null])``, one UNet call, the
combination ``uncond + w·(cond − uncond)`` in torch, then the scheduler's step — with diffusers'
own DDPMScheduler / DPMSolverMultistepScheduler (noise injected: fastddpm's Philox noise of the
call) or with fastddpm's drop-in in its place. Tolerance as tests/test_diffusers_dropin.py
(rtol 1e-4, atol 1e-5 · max(1, |x|)): diffusers' float32 tables; the guided combination's two
orders of rounding add ≲ w·1e-7.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

import fastddpm  # noqa: E402
from fastddpm import Schedule  # noqa: E402
from fastddpm.diffusers import FusedDDPMScheduler, FusedDPMSolverMultistepScheduler  # noqa: E402
from fastddpm.kernels import reference as R  # noqa: E402

from _diffusers_models import one_torch_thread  # noqa: E402,F401 (an autouse fixture)

T = 100
N = 4
SEED = 3
LABELS = np.array([2, 0, 1, 2])
SHAPE = (3, 8, 8)


def class_unet(null=True):
    """A tiny class-conditional UNet2DModel: 3 classes + DiT's "no label" class (index 3) when ``null``."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=4 if null else 3).eval()
    with torch.no_grad():  # the class embedding and the output conv at a visible scale (a fresh one is ~0)
        unet.class_embedding.weight.normal_()
        for p in unet.conv_out.parameters():
            p.normal_(0, 0.2)
    if null:
        unet.null_label = 3
    return unet


def _noise(k):
    return torch.from_numpy(R.randn(N * 192, SEED, k + 1).reshape(N, *SHAPE))


def dit_loop(unet, sched, steps, w, monkeypatch, labels=LABELS):
    """diffusers' DiTPipeline.__call__'s loop on a UNet: batch doubled, guidance in torch, scheduler.step."""
    sched.set_timesteps(steps)
    call = [0]
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: _noise(call[0]))
    x = torch.from_numpy(R.randn(N * 192, SEED, 0).reshape(N, *SHAPE))
    y = torch.as_tensor(labels)
    y_null = torch.full_like(y, unet.null_label)
    with torch.no_grad():
        for k, t in enumerate(sched.timesteps):
            call[0] = k
            latent_model_input = torch.cat([x, x])
            class_labels = torch.cat([y, y_null])
            eps = unet(latent_model_input, torch.full((2 * N,), int(t)), class_labels=class_labels).sample
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + w * (cond_eps - uncond_eps)
            x = sched.step(half_eps, t, x).prev_sample
    return x.numpy()


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("sampler,cls", [("ddpm", DDPMScheduler), ("dpmpp2m", DPMSolverMultistepScheduler)])
def test_class_conditional_unet_guided_equals_dit_loop(sampler, cls, monkeypatch):
    unet = class_unet()
    sched = cls(num_train_timesteps=T, **({"algorithm_type": "dpmsolver++", "solver_order": 2}
                                          if sampler == "dpmpp2m" else {"clip_sample": False}))
    ref = dit_loop(unet, sched, 6, 3.0, monkeypatch)
    x, y = fastddpm.sample(unet, Schedule.linear(T), N, sampler=sampler, steps=6,
                           spacing="leading" if sampler == "ddpm" else "linspace", seed=SEED, labels=LABELS,
                           guidance=3.0, progress=False)
    np.testing.assert_array_equal(y, LABELS)
    _close(x, ref)


def test_dropin_schedulers_inside_a_class_conditional_pipeline(monkeypatch):
    """The DiT loop with fastddpm's FusedDDPMScheduler / FusedDPMSolverMultistepScheduler in place of
    diffusers' own: the same samples (the combination stays the pipeline's, the step is fused)."""
    unet = class_unet()
    for theirs, ours in ((DDPMScheduler(num_train_timesteps=T), FusedDDPMScheduler),
                         (DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="dpmsolver++",
                                                      solver_order=2), FusedDPMSolverMultistepScheduler)):
        ref = dit_loop(unet, theirs, 6, 2.5, monkeypatch)
        fused = ours.from_config(theirs.config)
        steps = 6
        fused.set_timesteps(steps)
        x = torch.from_numpy(R.randn(N * 192, SEED, 0).reshape(N, *SHAPE))
        y = torch.as_tensor(LABELS)
        with torch.no_grad():
            for k, t in enumerate(fused.timesteps):
                eps = unet(torch.cat([x, x]), torch.full((2 * N,), int(t)),
                           class_labels=torch.cat([y, torch.full_like(y, 3)])).sample
                cond_eps, uncond_eps = eps.chunk(2)
                kw = {"variance_noise": _noise(k)} if ours is FusedDDPMScheduler else {}
                x = fused.step(uncond_eps + 2.5 * (cond_eps - uncond_eps), t, x, **kw).prev_sample
        _close(x.numpy(), ref)


def test_unet_without_a_null_class():
    unet = class_unet(null=False)
    x, y = fastddpm.sample(unet, Schedule.linear(T), N, steps=3, labels=LABELS, progress=False)  # w = 1: fine
    assert x.shape == (N, *SHAPE)
    with pytest.raises(ValueError, match=r"labels is required: this conditional model \(3 classes\) has no 'no label'"):
        fastddpm.sample(unet, Schedule.linear(T), N, steps=3, progress=False)
    with pytest.raises(ValueError, match=r"guidance=2 needs the model's 'no label' class"):
        fastddpm.sample(unet, Schedule.linear(T), N, steps=3, labels=LABELS, guidance=2.0, progress=False)
