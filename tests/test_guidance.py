"""Classifier-free guidance fused into the update kernel (issue 25), against three independent statements.

1. diffusers' DiT pipeline loop on the same network, x_T, noise and labels: the batch doubled
   ([x, x] with labels [y, no label]), the combination u + w·(c − u) (and ``rescale_noise_cfg``)
   in torch ops after the network, then diffusers' own scheduler step — for ddpm, dpmpp2m and
   unipc (and the rescale, and ddim with η).
2. kernels/reference.py's ``guided_model`` (two separate network calls, the formula in NumPy)
   driving ``reference.sample_run`` for every sampler, learned-range variance and an interval.
3. The fused kernel call by call against ``apply_row`` on the guided output computed in NumPy.

Tolerances: the same float32-rounding bounds as tests/test_sampler_anchors.py (whole runs rtol
1e-4 / atol 3e-5·max|x|): fastddpm forms c + (w − 1)·(c − u) where diffusers forms
u + w·(c − u), equal up to one rounding of a term of size w·|c − u| ≲ 3·2 here, i.e. ~1e-6 per
call, well inside the run tolerance. Single kernel calls: 1 ulp of the result (4e-7 at |x| ≲ 3).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import coefficients as KC
from fastddpm.kernels import reference as R
from fastddpm.kernels.numba.update import guide_scales, update
from fastddpm.sampling import make_plan

diffusers = pytest.importorskip("diffusers")

from test_sampler_anchors import D, N, SCHEDULE, SEED, T, _close, _scheduler, _x_T, diffusers_run  # noqa: E402

K = 4  # classes; label K is "no label"
LABELS = np.array([0, 3, 1, 2, 2, 0, 1, 3, 0, 1, 2])  # one per sample (N = 11)


class CondNet(torch.nn.Module):
    """out = tanh(W·x + sin(3t/T + b) + E[label]): a fixed smooth conditional network with a "no label"
    class (row K of E); ``channels`` × the input's width (2: a learned-range variance channel)."""

    num_classes, null_label = K, K

    def __init__(self, channels: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = torch.nn.Parameter(0.4 * torch.randn(D * channels, D, generator=g), requires_grad=False)
        self.b = torch.nn.Parameter(torch.randn(D * channels, generator=g), requires_grad=False)
        self.E = torch.nn.Parameter(torch.randn(K + 1, D * channels, generator=g), requires_grad=False)
        self.sample_shape = (D,)
        self.rows = []  # rows of every call (to see which calls were doubled)

    def forward(self, x, t, labels):
        self.rows.append(int(x.shape[0]))
        t = t.to(torch.float32).reshape(-1, 1)
        return torch.tanh(x @ self.W.T + torch.sin(3.0 * t / T + self.b) + self.E[labels])


NET = CondNet()


class DiTStyle(torch.nn.Module):
    """diffusers' DiTPipeline around ``net``: latent_model_input = cat([x, x]), class labels
    cat([y, null]), one network call, then ``uncond + w·(cond − uncond)`` in torch ops
    (and ``rescale_noise_cfg`` when asked, as the Stable Diffusion pipelines apply it)."""

    def __init__(self, net, labels, w, rescale=0.0):
        super().__init__()
        self.net, self.w, self.rescale = net, w, rescale
        self.labels = torch.as_tensor(labels)

    def forward(self, x, t):
        xx, tt = torch.cat([x, x]), torch.cat([t, t])
        yy = torch.cat([self.labels, torch.full_like(self.labels, self.net.null_label)])
        out = self.net(xx, tt, yy)
        cond, uncond = torch.split(out, len(out) // 2, dim=0)
        guided = uncond + self.w * (cond - uncond)
        if self.rescale:
            from diffusers.guiders.guider_utils import rescale_noise_cfg

            guided = rescale_noise_cfg(guided, cond, guidance_rescale=self.rescale)
        return guided


def ours(name, steps, spacing, w, rescale=0.0, net=NET, backend="numba", batch_size=4, **kw):
    x, y = fastddpm.sample(net, SCHEDULE, N, sampler=name, steps=steps, spacing=spacing, seed=SEED,
                           batch_size=batch_size, backend=backend, progress=False, labels=LABELS, guidance=w,
                           guidance_rescale=rescale, **kw)
    np.testing.assert_array_equal(y, LABELS)
    return x


# ----------------------------------------------------------------------------------------
# 1. diffusers' DiT-style loop
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,spacing,steps", [("ddpm", "leading", 8), ("dpmpp2m", "linspace", 8),
                                                ("unipc", "linspace", 8)])
@pytest.mark.parametrize("w", [4.0, -0.5])
def test_guided_run_equals_dit_loop(name, spacing, steps, w, monkeypatch):
    ref = diffusers_run(name, _scheduler(name, "epsilon", spacing), steps, monkeypatch,
                        model=DiTStyle(NET, LABELS, w))
    _close(ours(name, steps, spacing, w), ref)
    _close(ours(name, steps, spacing, w, backend="numpy"), ref)


@pytest.mark.parametrize("name,spacing", [("ddpm", "leading"), ("dpmpp2m", "linspace")])
def test_guidance_rescale_equals_rescale_noise_cfg(name, spacing, monkeypatch):
    """One deliberate difference: a sample whose guided output has σ = 0 at some call (here: the
    untrained net's tanh saturated to ±1 in all three elements, c = u) gets factor 1 where
    ``rescale_noise_cfg`` divides 0 by 0 and returns NaN for the whole sample (dpmpp2m: 1 of 11).
    Every other sample agrees; ours has no NaN."""
    ref = diffusers_run(name, _scheduler(name, "epsilon", spacing), 8, monkeypatch,
                        model=DiTStyle(NET, LABELS, 5.0, rescale=0.7))
    finite = np.isfinite(ref).all(axis=1)
    assert finite.sum() >= N - 1
    for backend in ("numba", "numpy"):
        got = ours(name, 8, spacing, 5.0, rescale=0.7, backend=backend)
        assert np.isfinite(got).all()
        _close(got[finite], ref[finite])


def test_guided_ddim_eta_and_v_prediction(monkeypatch):
    sched = _scheduler("ddim", "v_prediction", "leading")
    step = sched.step
    sched.step = lambda m, t, x, **kw: step(m, t, x, eta=0.6, **kw)
    ref = diffusers_run("ddim", sched, 8, monkeypatch, model=DiTStyle(NET, LABELS, 2.5))
    _close(ours("ddim", 8, "leading", 2.5, eta=0.6, prediction="v_prediction"), ref)


@pytest.mark.parametrize("w,rows", [(1.0, "B"), (0.0, "B"), (3.0, "2B")])
def test_w1_and_w0_skip_the_unneeded_half(w, rows):
    """w = 1: the conditional output only, w = 0: the unconditional one — one network call over B
    rows, and the result is the conditional / no-label run; other w: one call over 2B rows."""
    net = CondNet()
    x = ours("dpmpp2m", 6, "linspace", w, net=net, batch_size=N)
    assert set(net.rows) == {N if rows == "B" else 2 * N} and len(net.rows) == 6
    if w == 1.0:
        plain = R.sample_run("dpmpp2m", _fixed_labels(net, LABELS), _x_T(), *_grid("dpmpp2m", 6, "linspace"),
                             _reference_noise)
        _close(x, plain)
    if w == 0.0:  # the unconditional output is the model's run without labels ("no label")
        x0 = fastddpm.sample(net, SCHEDULE, N, sampler="dpmpp2m", steps=6, spacing="linspace", seed=SEED,
                             progress=False, batch_size=N)
        np.testing.assert_array_equal(x, x0)


# ----------------------------------------------------------------------------------------
# 2. kernels/reference.py: the guided network from the formula, every sampler
# ----------------------------------------------------------------------------------------


def _grid(name, steps, spacing, **kw):
    plan = make_plan(SCHEDULE, name, steps, spacing, **kw)
    return plan.grid.t, plan.grid.alpha_bar


def _reference_noise(k, shape):
    return R.randn(int(np.prod(shape)), SEED, k + 1).reshape(shape)


def _numpy_net(net):
    def f(x, t, labels):
        with torch.no_grad():
            tt = torch.full((x.shape[0],), int(t), dtype=torch.int64)
            return net(torch.from_numpy(x), tt, torch.as_tensor(labels)).numpy()
    return f


def _fixed_labels(net, labels):
    f = _numpy_net(net)
    return lambda x, t: f(x, t, labels)


SAMPLERS = {"ddpm": ({}, "leading", 7), "ddim": ({"eta": 0.5}, "leading", 7), "dpmpp2m": ({}, "logsnr", 7),
            "dpmpp3m": ({}, "logsnr", 7), "dpmpp2m-sde": ({}, "logsnr", 7), "unipc": ({"order": 3}, "logsnr", 7),
            "deis": ({}, "logsnr", 7), "euler": ({}, "karras", 7), "euler-ancestral": ({}, "karras", 7),
            "heun": ({}, "karras", 5)}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_guided_equals_reference(name):
    options, spacing, steps = SAMPLERS[name]
    t, ab = _grid(name, steps, spacing, **options)
    model = R.guided_model(_numpy_net(NET), LABELS, K, 3.0, rescale=0.5)
    ref = R.sample_run(name, model, _x_T(), t, ab, _reference_noise, **options)
    got = ours(name, steps, spacing, 3.0, rescale=0.5, **options)
    _close(got, ref)


def test_guidance_interval_equals_reference():
    """Guidance at the calls with 200 ≤ t ≤ 700 only (the conditional output elsewhere): the run
    doubles exactly those calls."""
    net = CondNet()
    t, ab = _grid("dpmpp2m", 8, "linspace")
    ref = R.sample_run("dpmpp2m", R.guided_model(_numpy_net(NET), LABELS, K, 4.0, interval=(200, 700)), _x_T(),
                       t, ab, _reference_noise)
    got = ours("dpmpp2m", 8, "linspace", 4.0, guidance_interval=(200, 700), net=net, batch_size=N)
    _close(got, ref)
    assert net.rows == [2 * N if 200 <= int(v) <= 700 else N for v in t]


def test_guided_learned_range_variance_equals_reference():
    """A network with a variance channel: the mean half is guided, the variance is the
    conditional rows' (what DiT's pipeline keeps: the step runs on the conditional half)."""
    net = CondNet(channels=2)
    t, ab = _grid("ddpm", 7, "leading")
    ref = R.sample_run("ddpm", R.guided_model(_numpy_net(net), LABELS, K, 3.0, variance=True), _x_T(), t, ab,
                       _reference_noise, variance="learned_range")
    for backend in ("numba", "numpy"):
        got = ours("ddpm", 7, "leading", 3.0, net=net, variance="learned_range", backend=backend)
        _close(got, ref)


# ----------------------------------------------------------------------------------------
# 3. One kernel call
# ----------------------------------------------------------------------------------------


def _row():
    rng = np.random.default_rng(3)
    row = np.zeros((1, KC.NUM_COLUMNS))
    for name in ("cx", "cm", "yx", "y0", "ym", "yz", "vg", "vb"):
        row[0, KC.COL[name]] = rng.uniform(-1, 1)
    return row


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,Dm", [(3, 5), (2, 4099), (70, 1)])  # ragged, a sample spanning chunks, D = 1
@pytest.mark.parametrize("rescale", [0.0, 0.8])
def test_fused_guided_call_equals_apply_row(dtype, B, Dm, rescale):
    rng = np.random.default_rng(0)
    n = B * Dm
    coef = _row().astype(dtype)
    x = rng.standard_normal(n).astype(dtype)
    m = rng.standard_normal(2 * n).astype(dtype)
    z = rng.standard_normal(n).astype(dtype)
    w = 3.5
    c, u = m[:n], m[n:]
    g = c + dtype(w - 1) * (c - u)
    r = np.ones(B)
    if rescale:
        r = guide_scales(m, B, Dm, w, rescale)
        sc = c.reshape(B, Dm).astype(np.float64).std(axis=1, ddof=1) if Dm > 1 else None
        sg = g.reshape(B, Dm).astype(np.float64).std(axis=1, ddof=1) if Dm > 1 else None
        want = rescale * sc / sg + 1 - rescale if Dm > 1 else np.ones(B)
        np.testing.assert_allclose(r, want, rtol=4 * np.finfo(dtype).eps)  # the factor rounded once
        g = g * np.repeat(r, Dm).astype(dtype)
    want, _, _ = KC.apply_row(coef[0], x, g, z=z)
    mirror = np.zeros(n, dtype)
    got = x.copy()
    update(got, m, coef, np.array([0]), guidance=w, rescale=r.astype(dtype) if rescale else None, noise=z,
           mirror=mirror, per_sample=Dm)
    tol = 2 * np.finfo(dtype).eps * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    np.testing.assert_array_equal(mirror, got)


def test_w1_in_the_kernel_is_exactly_the_conditional_output():
    """c + (w − 1)·(c − u) at w = 1 is c bit for bit: calls outside a guidance interval on the
    device path (every call doubled there) step exactly as the conditional output."""
    rng = np.random.default_rng(1)
    coef = _row().astype(np.float32)
    x, m = rng.standard_normal(40).astype(np.float32), rng.standard_normal(80).astype(np.float32)
    a, b = x.copy(), x.copy()
    update(a, m, coef, np.array([0]), guidance=1.0, per_sample=4)
    update(b, m[:40].copy(), coef, np.array([0]), per_sample=4)
    np.testing.assert_array_equal(a, b)
