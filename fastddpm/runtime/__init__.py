"""Torch-free sampling from an exported ONNX ε-network.

``OnnxSampler(path).sample(n, seed=…)`` runs the network in an onnxruntime session (CUDA
execution provider when available, else CPU) and the update in fastddpm's fused kernels.
Nothing in this package imports torch: it works where only NumPy, Numba and onnxruntime are
installed. Export a network with :func:`fastddpm.export_onnx` or ``fastddpm export``.
"""
from .metadata import OnnxMetadata
from .model import OnnxModel, default_providers
from .sampler import OnnxSampler

__all__ = ["OnnxMetadata", "OnnxModel", "OnnxSampler", "default_providers"]
