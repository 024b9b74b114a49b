"""The drop-in diffusers schedulers on the Triton kernels (what CUDA tensors use), on CPU tensors
under TRITON_INTERPRET=1 or on CUDA: each step equals the numba step of the same inputs."""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from fastddpm.diffusers import (FusedDDIMScheduler, FusedDDPMScheduler,  # noqa: E402
                                FusedDPMSolverMultistepScheduler, FusedEulerAncestralDiscreteScheduler,
                                FusedUniPCMultistepScheduler)

from _diffusers_models import one_torch_thread, tiny_unet  # noqa: E402,F401 (one_torch_thread: an autouse fixture)


@pytest.mark.parametrize("cls,config,kw", [
    (FusedDDPMScheduler, {}, {}), (FusedDDIMScheduler, {}, {"eta": 0.5}), (FusedDPMSolverMultistepScheduler, {}, {}),
    # the history ring (order 3), in-kernel SDE noise of stream k + 1, the state buffer (UniC), X = x/α
    (FusedDPMSolverMultistepScheduler, {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}, {}),
    (FusedUniPCMultistepScheduler, {"solver_order": 3}, {}), (FusedEulerAncestralDiscreteScheduler, {}, {}),
    # given noise (variance_noise) and thresholding (the torch-ops path on Triton)
    (FusedDDIMScheduler, {}, {"eta": 0.5, "variance_noise": "z"}),
    (FusedDDPMScheduler, {"thresholding": True, "dynamic_thresholding_ratio": 0.8, "sample_max_value": 1.5}, {})],
    ids=["ddpm", "ddim", "dpmpp2m", "dpmpp3m-sde", "unipc3", "euler-ancestral", "ddim-given-noise", "ddpm-thresholding"])
def test_triton_steps_equal_numba(device, cls, config, kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    outs = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(4)]
    z = torch.randn(2, 3, 4, 4, generator=g)
    runs = {}
    for backend, dev in (("numba", torch.device("cpu")), ("triton", device)):
        sched = cls(num_train_timesteps=50, prediction_type="v_prediction", **config)
        sched.backend, sched.noise_seed = backend, 11  # the same Philox noise on both
        sched.set_timesteps(4)
        y, ys = x.to(dev), []
        step_kw = {k: (z.to(dev) if v == "z" else v) for k, v in kw.items()}
        for t, m in zip(sched.timesteps, outs):
            y = sched.step(m.to(dev), t, y, **step_kw).prev_sample
            ys.append(y.cpu())
        runs[backend] = ys
    for k, (a, b) in enumerate(zip(runs["numba"], runs["triton"])):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"step {k}")


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp2m"])
def test_unet2dmodel_through_the_triton_loop(device, sampler):
    """A diffusers UNet2DModel as the network of fastddpm's torch loop with the Triton update (on
    CUDA with and without a CUDA graph): the samples equal the numba loop's from the same seed."""
    from fastddpm import Schedule, sample

    unet = tiny_unet()
    schedule = Schedule.linear(50)
    kw = dict(sampler=sampler, steps=4, seed=2, progress=False, clip=1.0)
    with torch.no_grad():
        want = np.asarray(sample(unet, schedule, 3, backend="numba", **kw))
        unet.to(device)
        graphs = [False, True] if device.type == "cuda" else [None]
        for cuda_graph in graphs:
            got = sample(unet, schedule, 3, backend="triton", device=device, cuda_graph=cuda_graph, **kw)
            np.testing.assert_allclose(got.cpu().numpy() if hasattr(got, "cpu") else got, want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"cuda_graph={cuda_graph}")
