"""Torch-free ONNX Runtime pieces: the exported ε-network as a NumPy-API model, its metadata.

:class:`OnnxModel` runs an exported network in an onnxruntime session (CUDA execution provider
when available, else CPU); :mod:`.metadata` reads and writes the fastddpm keys of the file;
:mod:`.cuda` binds a CUDA session to torch buffers. Nothing here imports torch or anything of
fastddpm above the core (schedule, data): the sampling side imports this package
(``fastddpm.Pipeline(OnnxModel(path))``, ``fastddpm.OnnxSampler(path)``), never the reverse.
Export a network with :func:`fastddpm.export_onnx` or ``fastddpm export``.
"""
from .metadata import OnnxMetadata
from .model import OnnxModel, default_providers

__all__ = ["OnnxMetadata", "OnnxModel", "default_providers"]
