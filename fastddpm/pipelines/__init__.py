"""The pipeline floor, above :mod:`fastddpm.sampling`: :class:`Pipeline` / :class:`OnnxSampler` (a
loaded network ready to sample, in data space), the engine choice and ONNX export cache
(:mod:`.engines`), the one loader of checkpoints, ONNX files and diffusers directories
(:mod:`.loader`), and streaming (:meth:`Pipeline.stream`, :class:`SampleDataset`).

Imports run one way: this package imports :mod:`fastddpm.sampling`, never the reverse
(tests/test_layering.py). ``fastddpm.Pipeline`` and ``fastddpm.OnnxSampler`` are these classes.
"""
from .loader import KINDS, kind, load
from .pipeline import LabelledBatch, OnnxSampler, Pipeline, SampleBatch


def __getattr__(name):
    if name == "SampleDataset":  # imports torch: on first use, so that the ONNX path stays torch-free
        from .dataset import SampleDataset

        return SampleDataset
    raise AttributeError(f"module 'fastddpm.pipelines' has no attribute {name!r}")


__all__ = ["Pipeline", "OnnxSampler", "SampleBatch", "LabelledBatch", "SampleDataset", "load", "kind", "KINDS"]
