"""Sample quality after default training (slow; CI runs it): butterfly, constant, gaussian.

Sampling is a plain 1000-step ancestral loop over fastddpm.ddpm_step (stream 0: x_T, stream k:
the k-th step's noise), independent of the sampling API built elsewhere.
"""
import pytest
import torch

import fastddpm
from fastddpm.data import load_dataset
from fastddpm.metrics import sliced_wasserstein, support_quantiles
from fastddpm.training import RESMLP_RECIPE, train

# The issue-13 recipe (ResMLP, fresh data, warm-up + cosine); not the default yet (training.py).
RECIPE = {**RESMLP_RECIPE, "data": "auto", "progress": False, "num_threads": 1}

pytestmark = pytest.mark.slow


def ddpm_sample(model, schedule, n, shape, seed=0):
    x = fastddpm.randn((n, *shape), seed=seed, stream=0, like=torch.empty(0))
    with torch.no_grad():
        for k, t in enumerate(range(schedule.num_steps - 1, -1, -1), start=1):
            x = fastddpm.ddpm_step(schedule, x, model(x, torch.full((n,), t, dtype=torch.int64)), t,
                                   seed=seed, stream=k)
    return x.numpy()


def _samples(result, n=5000):
    assert result.schedule.num_steps == 1000
    x = ddpm_sample(result.ema_model, result.schedule, n, result.dataset.sample_shape, seed=1)
    return result.dataset.normalization.denormalize(x)


def test_butterfly_resmlp_recipe_is_crisp():
    # The ResMLP recipe (fresh data, warm-up + cosine) at half its 16,000
    # iterations to fit CI. Measured (bench/train_recipe_sweep.py, one seed, 4000 ddpm-1000
    # samples, 2-core EPYC): 8,000 iterations p50 0.0155, p90 0.0585, SW ratio 1.43; 16,000:
    # 0.0086 / 0.041 / 0.88. Bounds: ~1.4–1.6× the 8,000-iteration numbers, a margin from two
    # budgets, not from repeated seeds (not yet measured).
    pytest.importorskip("ot")
    result = train("butterfly", **{**RECIPE, "iters": 8000})
    samples = _samples(result, n=4000)
    q = support_quantiles(samples, "butterfly")
    assert q["p50"] <= 0.025 and q["p90"] <= 0.08, q
    fresh_a = load_dataset("butterfly", 4000, seed=101).raw()
    fresh_b = load_dataset("butterfly", 4000, seed=202).raw()
    sw_model = sliced_wasserstein(samples, fresh_a, n_projections=500, seed=0)
    sw_fresh = sliced_wasserstein(fresh_b, fresh_a, n_projections=500, seed=0)
    assert sw_model <= 2.0 * sw_fresh, (sw_model, sw_fresh)


def test_constant_model_learns_five():
    # 4000 iterations (a quarter of the default): measured mean 5.000008, std 0.0003.
    result = train("constant", **{**RECIPE, "iters": 4000})
    samples = _samples(result)
    assert abs(samples.mean() - 5.0) <= 0.005, samples.mean()


def test_gaussian_model_learns_mean_and_std():
    # 4000 iterations: measured mean 3.029, std 1.031 (the issue's ±0.03 is met only at the edge
    # here; the bound stays the earlier ±0.05).
    result = train("gaussian", **{**RECIPE, "iters": 4000})
    samples = _samples(result)
    assert abs(samples.mean() - 3.0) <= 0.05, samples.mean()
    assert abs(samples.std() - 1.0) <= 0.05, samples.std()
