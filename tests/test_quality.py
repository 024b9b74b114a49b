"""Sample quality after default training (slow; CI runs it): butterfly, constant, gaussian.

Sampling is a plain 1000-step ancestral loop over fastddpm.ddpm_step (stream 0: x_T, stream k:
the k-th step's noise), independent of the sampling API built elsewhere.
"""
import pytest
import torch

import fastddpm
from fastddpm.data import load_dataset
from fastddpm.metrics import sliced_wasserstein
from fastddpm.training import train

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


def test_butterfly_default_training_matches_fresh_data():
    pytest.importorskip("ot")
    result = train("butterfly", progress=False, num_threads=1)  # the defaults of `fastddpm train`
    samples = _samples(result)
    fresh_a = load_dataset("butterfly", 5000, seed=101).raw()
    fresh_b = load_dataset("butterfly", 5000, seed=202).raw()
    sw_model = sliced_wasserstein(samples, fresh_a, n_projections=500, seed=0)
    sw_fresh = sliced_wasserstein(fresh_b, fresh_a, n_projections=500, seed=0)
    assert sw_model <= 2.0 * sw_fresh, (sw_model, sw_fresh)


def test_constant_model_learns_five():
    result = train("constant", progress=False, num_threads=1)  # defaults: 4000 × 256
    samples = _samples(result)
    assert abs(samples.mean() - 5.0) <= 0.01, samples.mean()


def test_gaussian_model_learns_mean_and_std():
    result = train("gaussian", progress=False, num_threads=1)
    samples = _samples(result)
    assert abs(samples.mean() - 3.0) <= 0.05, samples.mean()
    assert abs(samples.std() - 1.0) <= 0.05, samples.std()
