"""Sample quality after default training (slow; CI runs it): butterfly, constant, gaussian (digits:
tests/test_quality_digits.py, its own module so that pytest-xdist runs it beside these).

The ancestral samples come from a plain 1000-step loop over fastddpm.ddpm_step (stream 0: x_T,
stream k: the k-th step's noise), independent of the sampling API; the fast samples from
fastddpm.sample with the default fast sampler (fastddpm.demo.FAST_SAMPLER: dpmpp2m-sde, 20 steps)
at its default spacing ("logsnr", kernels/samplers/dpmsolver.py DEFAULTS; what the demo uses).

Bounds: the issue-13 targets where every measured training seed meets them with room, else the
worst seed plus a stated margin. Measured: bench/quality_seeds.py, training seeds 0, 1, 2, the
same samples and references as here (docs/training.md, "Seed-to-seed spread"). Runtime: ~4 min
on one idle EPYC core (butterfly ~150 s of training, each 1-D model ~40 s + ~20 s of sampling);
measured 216 s in a serial `make test` at load 2.6.
"""
import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.data import load_dataset
from fastddpm.demo import FAST_SAMPLER
from fastddpm.metrics import sliced_wasserstein, support_quantiles
from fastddpm.training import train

pytestmark = pytest.mark.slow

TRAIN = {"progress": False, "num_threads": 1}  # everything else: the defaults (KIND_DEFAULTS)

# The default fast sampler, dpmpp2m-sde-20 (logsnr), on training seeds 0/1/2 (bench/quality_seeds.py,
# these samples and references; 2-core EPYC, 2026-12-06): p90 0.0413 / 0.0417 / 0.0421, p99 0.106 /
# 0.097 / 0.112, p99.9 0.206 / 0.217 / 0.200, samples beyond 0.5 data units 1 / 0 / 0 of 4000, SW over
# ddpm-1000's 0.787 / 0.861 / 0.783 (std 0.044). (dpmpp2m-20, the fast default before issue 23:
# p99.9 0.79 / 0.55 / 0.69, 12 / 5 / 7 beyond 0.5, SW 1.23 / 1.31 / 1.26 x ddpm-1000's.)
# Asserted: the targets themselves where every seed meets them with room — SW ≤ 1.10x ddpm-1000's
# (issue 13; worst seed 0.861, 5.7 seed stds below), p99.9 ≤ 0.30 (issue 23, "at 20 calls the
# default fast sampler's p99.9"; worst 0.217) — and at most 4 of 4000 samples beyond 0.5 (worst seed
# 1; dpmpp2m-20 put 5-12 there, so the bound catches a return of the ODE's stragglers).
FAST_BOUNDS_MEASURED_FOR = ("dpmpp2m-sde", 20)
BOUND_FAST_SW_VS_DDPM = 1.10
BOUND_FAST_P999 = 0.30
BOUND_FAST_FAR = 4 / 4000
# The 1-D models train 2,000 iterations (the default 5,000 adds ~1.5 min each for nothing the
# bounds can see): seeds 0/1/2 at 2,000 iterations, ddpm-1000, 5000 samples:
ONE_D_ITERS = 2000


def ddpm_sample(model, schedule, n, shape, prediction, seed=0):
    x = fastddpm.randn((n, *shape), seed=seed, stream=0, like=torch.empty(0))
    with torch.no_grad():
        for k, t in enumerate(range(schedule.num_steps - 1, -1, -1), start=1):
            x = fastddpm.ddpm_step(schedule, x, model(x, torch.full((n,), t, dtype=torch.int64)), t,
                                   prediction=prediction, seed=seed, stream=k)
    return x.numpy()


def _samples(result, n=5000):
    assert result.schedule.num_steps == 1000
    x = ddpm_sample(result.ema_model, result.schedule, n, result.dataset.sample_shape, result.prediction, seed=1)
    return result.dataset.normalization.denormalize(x)


def test_butterfly_default_recipe_meets_issue_13_targets():
    pytest.importorskip("ot")
    result = train("butterfly", **TRAIN)
    assert type(result.model).__name__ == "ResMLP" and result.prediction == "v_prediction"
    fresh_a = load_dataset("butterfly", 4000, seed=101).raw()
    fresh_b = load_dataset("butterfly", 4000, seed=202).raw()
    floor = sliced_wasserstein(fresh_b, fresh_a, n_projections=500, seed=0)

    ddpm = _samples(result, n=4000)
    q = support_quantiles(ddpm, "butterfly")
    sw_ddpm = sliced_wasserstein(ddpm, fresh_a, n_projections=500, seed=0)
    # The issue-13 targets p50 <= 0.02, p90 <= 0.05, SW <= 1.3x floor; seeds 0/1/2: p50 0.0083 /
    # 0.0084 / 0.0070, p90 0.0400 / 0.0397 / 0.0399 (seed std 0.00013), SW 1.11 / 1.07 / 1.10 (std 0.019).
    assert q["p50"] <= 0.02 and q["p90"] <= 0.05, q
    assert sw_ddpm <= 1.3 * floor, (sw_ddpm, floor)

    assert FAST_SAMPLER == FAST_BOUNDS_MEASURED_FOR, "a new default fast sampler: measure its bounds"
    sampler, steps = FAST_SAMPLER
    fast = fastddpm.sample(result.ema_model, result.schedule, 4000, sampler=sampler, steps=steps,
                           prediction=result.prediction, seed=1, progress=False)
    fast = result.dataset.normalization.denormalize(np.asarray(fast))
    qd = support_quantiles(fast, "butterfly")
    sw_fast = sliced_wasserstein(fast, fresh_a, n_projections=500, seed=0)
    assert qd["p90"] <= 0.07, qd  # the issue-13 target; seeds 0/1/2: 0.041 / 0.042 / 0.042
    assert qd["p99.9"] <= BOUND_FAST_P999 and qd["far"] <= BOUND_FAST_FAR, qd
    assert np.abs(fast).max() < 10.0  # the ε-prediction failure mode: samples hundreds of units out
    assert sw_fast <= BOUND_FAST_SW_VS_DDPM * sw_ddpm, (sw_fast, sw_ddpm)


def test_constant_model_learns_five():
    result = train("constant", iters=ONE_D_ITERS, **TRAIN)
    samples = _samples(result)
    assert abs(samples.mean() - 5.0) <= 0.005, samples.mean()  # target; seeds 0/1/2: 4.99999 / 5.00001 / 4.99999


def test_gaussian_model_learns_mean_and_std():
    result = train("gaussian", iters=ONE_D_ITERS, **TRAIN)
    samples = _samples(result)
    # target ±0.03 met with room: seeds 0/1/2 mean 2.9946 / 2.9993 / 2.9948, std 1.0104 / 1.0115 / 1.0120
    assert abs(samples.mean() - 3.0) <= 0.03, samples.mean()
    assert abs(samples.std() - 1.0) <= 0.03, samples.std()
