"""Every sampler through the Triton loop (the one generic kernel, table rows, ring slots and call
index read from device memory) against kernels/reference.py; CPU tensors under TRITON_INTERPRET=1,
CUDA when present.

The same cases as tests/test_sampler_kernels.py: the reference's whole run on the plan's grid
with x_T of stream 0 and the noise of call k from stream k + 1. Triton draws its normals in
float32 lanes (≤ 2e-6 from the reference's, docs/core.md), so runs that add noise agree to
a few 1e-6 on samples of magnitude ≲ 5: rtol 1e-5 / atol 2e-5.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.sampling import SAMPLERS, make_plan

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_sampler_kernels import CASES, SCHEDULE, SEED, Toy, reference_run  # noqa: E402

pytestmark = pytest.mark.triton


class TorchToy(torch.nn.Module):
    """The NumPy Toy network as a torch module (same arithmetic in float32)."""

    def __init__(self, toy: Toy):
        super().__init__()
        self.toy = toy
        self.sample_shape = toy.sample_shape

    def forward(self, x, t):
        out = self.toy(x.detach().cpu().numpy(), t.detach().cpu().numpy())
        return torch.from_numpy(out).to(x.device)


@pytest.mark.parametrize("name,steps,options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("shape,n,batch", [((3,), 9, 4), ((7,), 5, 5)])
def test_triton_loop_equals_reference(device, name, steps, options, shape, n, batch):
    toy = Toy(shape)
    plan = make_plan(SCHEDULE, name, steps, **options)
    ref = reference_run(name, toy, n, shape, plan, **options)
    got = fastddpm.sample(TorchToy(toy).to(device), SCHEDULE, n, sampler=name, steps=steps, seed=SEED,
                          batch_size=batch, device=device, backend="triton", progress=False, **options)
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("variance", ["learned_range"])
def test_triton_variance_channel_equals_reference(device, variance):
    shape, n = (3,), 6
    toy = Toy(shape, channels=2)
    plan = make_plan(SCHEDULE, "ddpm", 5, variance=variance)
    ref = reference_run("ddpm", toy, n, shape, plan, variance=variance)
    got = fastddpm.sample(TorchToy(toy).to(device), SCHEDULE, n, sampler="ddpm", steps=5, variance=variance,
                          seed=SEED, batch_size=4, device=device, backend="triton", progress=False)
    np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=1e-5, atol=2e-5)


def test_every_sampler_has_a_triton_case():
    assert {c[0] for c in CASES} == set(SAMPLERS)


@pytest.mark.parametrize("name", ["dpmpp3m", "unipc", "heun"])
def test_triton_equals_numba_with_clip_and_v(device, name):
    toy = Toy((4,))
    kw = dict(sampler=name, steps=6, seed=SEED, prediction="v_prediction", clip=0.8, progress=False)
    a = fastddpm.sample(toy, SCHEDULE, 7, backend="numba", batch_size=3, **kw)
    b = fastddpm.sample(TorchToy(toy).to(device), SCHEDULE, 7, device=device, backend="triton", batch_size=7, **kw)
    np.testing.assert_allclose(b.cpu().numpy(), a, rtol=1e-5, atol=2e-6)
