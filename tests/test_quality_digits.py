"""Digits after default image training (slow; CI runs it): the default recipe (UNet 16·(1, 2),
6,000 × 64, cosine lr, ε-prediction) must give recognisable digits.

Its own module so that pytest-xdist (``make test``: ``--dist loadfile``) runs it on one worker while
the others run the rest: it is the longest test (serial ``make test`` at load 2.6 on the 2-core EPYC:
467 s, ~350 s of it training on one thread). The 2000 ancestral samples run through ONNX Runtime on
one thread — the engine ``Pipeline.sample`` picks on the CPU — rather than torch eager: ddpm-250 at
batch 2000 measured 94 s there against 385 s for torch on one thread (load 2.2); the two agree to
float32 rounding, and the bounds below are statistical.
"""
import numpy as np
import pytest

import fastddpm
from fastddpm.training import train

pytestmark = pytest.mark.slow

TRAIN = {"progress": False, "num_threads": 1}  # everything else: the defaults (KIND_DEFAULTS)


def _onnx_one_thread(result, path):
    """The trained EMA net as an onnxruntime model on one intra-op thread (None without onnxruntime)."""
    try:
        import onnxruntime as ort

        from fastddpm.runtime import OnnxModel
    except ImportError:
        return None
    fastddpm.export_onnx(result.ema_model, path, sample_shape=tuple(result.dataset.sample_shape),
                         schedule=result.schedule, prediction=result.prediction)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return OnnxModel(path, ["CPUExecutionProvider"], session_options=options)


def test_digits_default_recipe_recognisable(tmp_path):
    """Digits with the default image recipe (UNet 16·(1, 2), 6,000 × 64, cosine lr; ~6 min on one
    core), 2000 ancestral samples (ddpm-250) scored by fastddpm.metrics.digit_scores.

    Training seeds 0 / 1 / 2 (bench/digits_sweep.py, docs/training.md "Digits"): ddpm-250 share
    ≥ 0.9 confident 0.939 (n = 1000) / 0.946 / 0.943, max class-share deviation 0.024 (n = 1000) /
    0.014 / 0.012, Fréchet 0.070 / 0.018 / 0.020 (real-vs-real floor 0.047). The issue-13 targets
    (≥ 0.90, ≤ 0.03) are asserted as they are: the worst seed is 5 binomial stds (0.0053 at
    n = 2000) above 0.90, and 0.03 is 2.5 stds of one class share above the worst deviation.
    (dpmpp2m-20 is at the edge, 0.888-0.908: docs/training.md.)
    """
    pytest.importorskip("sklearn")
    from fastddpm.metrics import digit_scores

    result = train("digits", **TRAIN)
    assert type(result.model).__name__ == "UNet" and result.prediction == "epsilon"
    model = _onnx_one_thread(result, tmp_path / "digits.onnx") or result.ema_model
    x = fastddpm.sample(model, result.schedule, 2000, sampler="ddpm", steps=250,
                        sample_shape=result.dataset.sample_shape, prediction=result.prediction, seed=1,
                        batch_size=2000, progress=False)
    s = digit_scores(result.dataset.normalization.denormalize(np.asarray(x)))
    assert s["confident"] >= 0.90, s
    assert s["class_hist_max_dev"] <= 0.03, s
    assert s["frechet"] <= 0.15, s  # worst seed 0.070 plus the same again
