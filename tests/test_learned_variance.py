"""Learned variances (Nichol & Dhariwal 2021): learn_sigma nets, the L_vlb term against its closed
form, the hybrid loss's stop-gradient, and the checkpoint sampling with learned_range everywhere."""
import math

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.nets import ResMLP, UNet
from fastddpm.training import VLB_WEIGHT, train, vlb_terms

SMALL = dict(net_kwargs={"width": 32, "depth": 2, "fourier_features": 4}, batch_size=64, progress=False)


def test_learn_sigma_nets_output_twice_the_channels():
    x, t = torch.randn(3, 2), torch.tensor([1, 5, 9])
    assert ResMLP(dim=2, width=16, depth=1, learn_sigma=True)(x, t).shape == (3, 4)
    assert "learn_sigma" not in ResMLP(dim=2, width=16, depth=1).config  # fixed-variance configs unchanged
    img = torch.randn(2, 1, 8, 8)
    assert UNet(base_channels=8, learn_sigma=True)(img, torch.tensor([3, 4])).shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match="learn_sigma must be True or False"):
        ResMLP(learn_sigma="yes")


def _posterior(schedule, t):
    b = schedule.betas[t]
    ab, ab_prev = schedule.alphas_cumprod[t], (schedule.alphas_cumprod[t - 1] if t > 0 else 1.0)
    c1 = b * math.sqrt(ab_prev) / (1 - ab)
    c2 = (1 - ab_prev) * math.sqrt(1 - b) / (1 - ab)
    tilde = b * (1 - ab_prev) / (1 - ab)
    return c1, c2, tilde, b


def test_vlb_terms_equal_the_gaussian_kl_and_decoder_in_closed_form():
    s = fastddpm.Schedule.linear(100)
    torch.manual_seed(0)
    t = torch.tensor([0, 1, 30, 99])
    x0, x_t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    eps_hat, v = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) * 2 - 1
    got = vlb_terms(s, x0, x_t, t, eps_hat, v, "epsilon")
    for i, ti in enumerate(t.tolist()):
        c1, c2, tilde, b = _posterior(s, ti)
        ab = s.alphas_cumprod[ti]
        x0_hat = (x_t[i].numpy() - math.sqrt(1 - ab) * eps_hat[i].numpy()) / math.sqrt(ab)
        mu_q, mu_p = c1 * x0[i].numpy() + c2 * x_t[i].numpy(), c1 * x0_hat + c2 * x_t[i].numpy()
        log_q = math.log(tilde) if ti > 0 else math.log(_posterior(s, 1)[2])  # the clipped log β̃
        frac = (v[i].numpy() + 1) / 2
        log_p = frac * math.log(b) + (1 - frac) * log_q
        if ti == 0:  # −log N(x0; μ_p, e^log_p), in bits
            want = 0.5 * (math.log(2 * math.pi) + log_p + (x0[i].numpy() - mu_p) ** 2 / np.exp(log_p))
        else:  # KL(N(μ_q, e^log_q) ‖ N(μ_p, e^log_p))
            want = 0.5 * (-1 + log_p - log_q + np.exp(log_q - log_p) + (mu_q - mu_p) ** 2 / np.exp(log_p))
        np.testing.assert_allclose(got[i].item(), want.mean() / math.log(2), rtol=1e-9)
    # images: the discretised decoder at t = 0 is a probability of a bin, so ≥ 0 bits and finite at the edges
    img = torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64)
    bits = vlb_terms(s, img, img, torch.tensor([0]), torch.zeros_like(img), torch.zeros_like(img), "sample",
                     discrete=True)
    assert torch.isfinite(bits).all() and bits.item() >= 0


def test_hybrid_loss_trains_v_through_the_vlb_only():
    """The prediction half gets L_simple's gradient exactly (the mean is held fixed in L_vlb)."""
    s = fastddpm.Schedule.linear(50)
    x0, x_t, t = torch.randn(5, 2), torch.randn(5, 2), torch.tensor([0, 3, 10, 25, 49])
    out = torch.randn(5, 4, requires_grad=True)
    target = torch.randn(5, 2)
    mean, v = out[:, :2], out[:, 2:]
    simple = ((mean - target) ** 2).mean()
    hybrid = simple + VLB_WEIGHT * 50 * vlb_terms(s, x0, x_t, t, mean.detach(), v, "epsilon").mean()
    g_hybrid, = torch.autograd.grad(hybrid, out, retain_graph=True)
    g_simple, = torch.autograd.grad(simple, out)
    torch.testing.assert_close(g_hybrid[:, :2], g_simple[:, :2])
    assert g_hybrid[:, 2:].abs().sum() > 0 and g_simple[:, 2:].abs().sum() == 0


def test_a_learned_variance_checkpoint_samples_everywhere(tmp_path, monkeypatch):
    r = train("butterfly", tmp_path / "ls", iters=30, learn_sigma=True, **SMALL)
    ck = fastddpm.load(r.checkpoint)
    assert ck.sampling == {"variance": "learned_range"} and ck.config["train"]["learn_sigma"] is True
    assert ck.model.learn_sigma and ck.config["model"]["kwargs"]["learn_sigma"] is True
    pipe = fastddpm.Pipeline.from_checkpoint(r.checkpoint)
    got = pipe.sample(64, steps=20, seed=2, progress=False, engine="torch")  # ddpm with learned_range
    want = fastddpm.sample(ck.model, ck.schedule, 64, steps=20, variance="learned_range", prediction=ck.prediction,
                           seed=2, progress=False)
    np.testing.assert_array_equal(got, ck.normalization.denormalize(want))
    fixed = pipe.sample(64, steps=20, seed=2, progress=False, engine="torch", variance="fixed_small")
    assert np.abs(fixed - got).max() > 1e-3  # the variance channel is read
    np.testing.assert_allclose(pipe.sample(64, steps=20, seed=2, progress=False, engine="onnx"), got, rtol=0,
                               atol=1e-4)
    monkeypatch.setenv("FASTDDPM_RUNTIME", "onnx-split")  # a session per core (256 rows: 2 parts): its output too
    wide = pipe.sample(256, steps=20, seed=2, progress=False, engine="torch")
    np.testing.assert_allclose(fastddpm.Pipeline.from_checkpoint(r.checkpoint).sample(
        256, steps=20, seed=2, progress=False, batch_size=256), wide, rtol=0, atol=1e-4)
    monkeypatch.setenv("FASTDDPM_RUNTIME", "onnx")

    class MeanHalf(torch.nn.Module):  # what a sampler that does not read v gets: the prediction half
        def __init__(self, net):
            super().__init__()
            self.net, self.sample_shape = net, (2,)

        def forward(self, x, t):
            return self.net(x, t)[:, :2]

    for kw in ({"sampler": "dpmpp2m", "steps": 8}, {"sampler": "ddim", "steps": 8}):
        got = pipe.sample(64, seed=2, progress=False, engine="torch", **kw)
        want = fastddpm.sample(MeanHalf(ck.model), ck.schedule, 64, prediction=ck.prediction, seed=2,
                               progress=False, **kw)
        np.testing.assert_array_equal(got, ck.normalization.denormalize(want))
        np.testing.assert_allclose(pipe.sample(64, seed=2, progress=False, engine="onnx", **kw), got, rtol=0,
                                   atol=1e-4)


def test_learn_sigma_resumes_and_refuses_nets_without_a_variance_output(tmp_path):
    full = train("butterfly", iters=20, learn_sigma=True, lr_schedule="constant", **SMALL)
    train("butterfly", tmp_path / "half", iters=10, learn_sigma=True, lr_schedule="constant", **SMALL)
    resumed = train("butterfly", tmp_path / "half", iters=20, learn_sigma=True, lr_schedule="constant",
                    resume=True, **SMALL)
    assert resumed.losses == full.losses
    with pytest.raises(ValueError, match="settings differ.*learn_sigma"):
        train("butterfly", tmp_path / "half", iters=30, lr_schedule="constant", resume=True, **SMALL)
    with pytest.raises(ValueError, match="learn_sigma needs net='ResMLP' or 'UNet'"):
        train("butterfly", iters=2, net="MLP", learn_sigma=True, progress=False)


def test_a_conditional_learned_variance_model_samples_with_guidance(tmp_path):
    """learn_sigma and labels together (issues 24 and 25): the guided update reads the variance
    channel where the sampler does (ddpm, learned_range) and gets the prediction half elsewhere —
    the same samples as the net cut to its prediction half, labels and guidance unchanged."""
    r = train("8gaussians", tmp_path / "cls", iters=20, learn_sigma=True, conditional=True, **SMALL)
    ck = fastddpm.load(r.checkpoint)
    assert ck.model.learn_sigma and ck.model.num_classes == 8 and ck.labels is not None
    assert ck.sampling == {"variance": "learned_range"}
    pipe = fastddpm.Pipeline.from_checkpoint(r.checkpoint)
    labels = np.arange(64) % 8
    kw = dict(seed=2, progress=False, labels=labels, guidance=2.0)
    got = pipe.sample(64, steps=20, engine="torch", **kw)
    x = got[0] if isinstance(got, tuple) else got
    assert np.isfinite(x).all()
    fixed = pipe.sample(64, steps=20, engine="torch", variance="fixed_small", **kw)
    assert np.abs((fixed[0] if isinstance(fixed, tuple) else fixed) - x).max() > 1e-3  # v is read

    class MeanHalf(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.sample_shape = net, (2,)
            self.num_classes, self.null_label = net.num_classes, net.null_label

        def forward(self, x, t, labels=None):
            return self.net(x, t, labels)[:, :2]

    half = MeanHalf(ck.model)
    half.label_counts = getattr(ck.model, "label_counts", None)
    got = pipe.sample(64, sampler="dpmpp2m", steps=8, engine="torch", **kw)
    want = fastddpm.sample(half, ck.schedule, 64, sampler="dpmpp2m", steps=8, prediction=ck.prediction, **kw)
    got = got[0] if isinstance(got, tuple) else got
    want = want[0] if isinstance(want, tuple) else want
    np.testing.assert_array_equal(got, ck.normalization.denormalize(np.asarray(want)))
    onnx = pipe.sample(64, sampler="dpmpp2m", steps=8, engine="onnx", **kw)
    np.testing.assert_allclose(onnx[0] if isinstance(onnx, tuple) else onnx, got, rtol=0, atol=1e-4)
