"""The engine's ONNX export of a built-in net: its export form (fastddpm.nets.fused), t fixed to [1].

Used by the ONNX Runtime engine's export cache (fastddpm.pipelines.engines.cached_export), not by
``fastddpm export``: a file for others keeps the plain graph, which takes a per-sample t. Here
every call shares t (the sampling loop passes t of shape [1]), so the export form folds the
time modulation into the normalisation weights; its ``t`` input is fixed to shape [1], so a
per-sample t [B] is refused by onnxruntime ("invalid dimensions") rather than misread.
"""
from __future__ import annotations

import os

from ._io import write_bytes
from .onnx_export import export_onnx

FORM_VERSION = 1  # part of the export cache key: bump when an export form changes


def fused_form(module):
    """The export form of a built-in net, or None (any other module: export it as it is)."""
    from .nets.fused import export_form

    return export_form(module)


def export_fused(module, path, *, sample_shape, schedule=None, prediction=None, normalization=None) -> str:
    """Write the export form of ``module`` (a built-in net) to ``path``; returns the path.

    Raises ValueError when ``module`` has no export form (fastddpm.nets.fused.FORMS).
    """
    import onnx

    form = fused_form(module)
    if form is None:
        raise ValueError(f"{type(module).__name__} has no export form; export_fused takes one of the built-in nets "
                         "(fastddpm.nets.fused.FORMS) — use fastddpm.export_onnx for any other module")
    path = os.fspath(path)
    export_onnx(form, path, sample_shape=sample_shape, schedule=schedule, prediction=prediction,
                normalization=normalization)
    proto = onnx.load(path)
    for inp in proto.graph.input:
        if inp.name == "t":
            dim = inp.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = 1
    onnx.checker.check_model(proto, full_check=True)
    write_bytes(path, proto.SerializeToString(), crash="onnx")
    return path
