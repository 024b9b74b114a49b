"""Which runtime runs a Pipeline's network: torch, or onnxruntime (a cached export on the CPU).

bench/onnx_vs_torch.py (docs/onnx.md): on the 2-core EPYC, onnxruntime runs the butterfly MLP
and the digits UNet 1.25–5× faster per call than torch eager at equal thread counts, and whole
DDPM loops 4–11× faster on the loaded machine; so ``Pipeline.sample(engine="auto")`` on the CPU
exports a torch network once (cached on disk by its weights) and — since issue 26 — measures
torch and the onnxruntime sessions once per model, machine and batch and runs the fastest
(:mod:`fastddpm.pipelines.autoengine`, :mod:`fastddpm.runtime.calibrate`).

A Pipeline on an ONNX file (``Pipeline(OnnxModel(...))``, ``OnnxSampler``) runs the session
itself; on onnxruntime's CUDA provider with torch and Triton importable, through the IO-binding
module of :mod:`fastddpm.runtime.cuda`, so x_t stays on the GPU.

The export cache is safe for concurrent processes: an entry is exported under its lock
(``NAME.onnx.lock``; the others wait for it) into a temp file renamed over the entry
(``fastddpm._io.atomic_open``), so a reader sees no file or a complete one. Every use checks the
entry against the SHA-256 recorded beside it at export; a damaged entry (truncated, edited, a
disk error) is exported again with a one-line :class:`OnnxCacheRepaired` warning instead of failing
every later run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings

from .. import __version__
from .._io import OutputLock, sha256_file, write_text
from ..onnx_export import DEFAULT_OPSET, export_onnx
from ..onnx_fused import FORM_VERSION, export_fused
from ..runtime import OnnxModel
from ..runtime.cuda import cuda_iobinding_available, torch_module
from ..sampling.models import model_identity
from ..sampling.options import SamplingOptions

ENGINES = ("auto", "torch", "onnx")


def cache_dir() -> str:
    """$FASTDDPM_CACHE, else $XDG_CACHE_HOME/fastddpm, else ~/.cache/fastddpm (+ /onnx)."""
    root = os.environ.get("FASTDDPM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastddpm")
    return os.path.join(root, "onnx")


def _export_key(pipeline) -> str:
    """Digest of everything the exported file depends on (the weights included: no stale hits)."""
    module, torch = pipeline.model, sys.modules["torch"]
    norm = pipeline.normalization
    settings = [__version__, torch.__version__, DEFAULT_OPSET, type(module).__qualname__,
                list(pipeline.sample_shape), None if pipeline.schedule is None else pipeline.schedule.to_config(),
                pipeline.prediction, norm.to_config() if hasattr(norm, "to_config") else norm,
                getattr(module, "config", None),
                # issue 26: built-in nets are cached in their export form (fastddpm/onnx_fused.py)
                fused_form_version(module)]
    if getattr(module, "num_classes", 0):  # issue 25: a conditional net's export takes a labels input
        settings.append({"labels_input": 1, "num_classes": module.num_classes, "null_label": module.null_label})
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(model_identity(module).encode())
    return h.hexdigest()[:24]


class OnnxCacheRepaired(RuntimeWarning):
    """A damaged file in the ONNX export cache was found and exported again."""


# Seconds a process waits for another one exporting the same network into the cache (an export of
# the default nets takes 1-3 s on the 2-core EPYC; a digits UNet ~5 s on a loaded machine).
EXPORT_LOCK_WAIT = 300.0


def _digest_path(path: str) -> str:
    return path + ".sha256"


def _cache_state(path: str) -> str:
    """'ok' (the file matches the SHA-256 recorded when it was exported), 'missing', or what is
    wrong with it ('damaged: …'). A cache entry written before digests were recorded is checked by
    loading it with onnx (and gets its digest recorded when it loads)."""
    if not os.path.exists(path):
        return "missing"
    digest_file = _digest_path(path)
    try:
        with open(digest_file) as f:
            recorded = f.read().split()[0]
    except (OSError, IndexError):
        recorded = None
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"damaged: unreadable ({exc})"
    if recorded is not None:
        return "ok" if actual == recorded else "damaged: its SHA-256 differs from the one recorded at export"
    try:
        import onnx

        onnx.checker.check_model(onnx.load(path))
    except Exception as exc:  # noqa: BLE001 - any failure to load means the entry cannot be used
        return f"damaged: not a loadable ONNX model ({type(exc).__name__})"
    write_text(digest_file, actual + "\n")
    return "ok"


def cached_export(pipeline, directory: str | None = None) -> str:
    """Path of the ONNX export of a Pipeline's (or Checkpoint's) torch network, exported on first use.

    The cache holds derived data, so it is verified on every use: each entry has the SHA-256 of its
    bytes beside it (``NAME.onnx.sha256``); a missing, truncated or edited entry is exported again
    under the entry's lock (``NAME.onnx.lock``: concurrent processes export it once, the others wait
    for that export), and a damaged one says so in one line (an :class:`OnnxCacheRepaired` warning).
    """
    directory = directory or cache_dir()
    path = os.path.join(directory, f"{type(pipeline.model).__name__}-{_export_key(pipeline)}.onnx")
    if _cache_state(path) == "ok":
        return path
    os.makedirs(directory, exist_ok=True)
    with OutputLock(path, "exporting into the ONNX cache", wait=EXPORT_LOCK_WAIT):
        state = _cache_state(path)  # again, under the lock: another process may have just exported it
        if state == "ok":
            return path
        if state != "missing":
            warnings.warn(f"ONNX export cache: {path} is {state}; exported it again", OnnxCacheRepaired,
                          stacklevel=3)
        # issue 26: a built-in net is exported in its export form (fastddpm/onnx_fused.py), others as they are
        export = export_fused if fused_form_version(pipeline.model) else export_onnx
        export(pipeline.model, path, sample_shape=tuple(pipeline.sample_shape), schedule=pipeline.schedule,
               prediction=pipeline.prediction, normalization=pipeline.normalization)
        write_text(_digest_path(path), sha256_file(path) + "\n")
    return path


def fused_form_version(module):
    """onnx_fused.FORM_VERSION for a built-in net exported in its export form, else None (any other
    module, and a conditional built-in net: its per-sample label embedding does not fold)."""
    from ..nets.fused import export_form

    return FORM_VERSION if export_form(module) is not None else None


def choose(pipeline, engine: str, options: SamplingOptions, n: int | None = None):
    """(network to call, its identity, the options to run it with) for ``Pipeline.sample``.

    engine: "torch" → the torch module; "onnx" → the cached export on onnxruntime's CPU provider
    (an error if that cannot be done); "auto" → when the sampling runs on the CPU in float32,
    onnx and onnxruntime are installed and the export works, the fastest of torch and the
    onnxruntime sessions as measured at this run's batch ``n`` allows (cached per model, machine
    and batch; fastddpm.pipelines.autoengine.py), torch otherwise (with a warning when the export
    failed). A Pipeline on an ONNX file always runs its session.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}; got {engine!r}")
    model = pipeline.model
    if isinstance(model, OnnxModel):
        return _onnx_file(pipeline, options)
    torch = sys.modules.get("torch")
    if engine == "torch" or torch is None or not isinstance(model, torch.nn.Module):
        return model, pipeline.model_id, options
    device = options.device
    on_cpu = (device is None or torch.device(device).type == "cpu") and options.backend in ("auto", "numba", "numpy")
    on_cpu = on_cpu and all(p.device.type == "cpu" for p in model.parameters())
    if not on_cpu or str(options.dtype).replace("torch.", "") != "float32":
        if engine == "onnx":
            raise ValueError("engine='onnx' samples in float32 on the CPU (onnxruntime's CPU provider with the Numba "
                             "update); for a GPU export the net (fastddpm export) and use fastddpm.OnnxSampler with "
                             "onnxruntime-gpu, or use engine='torch'")
        return model, pipeline.model_id, options
    # -- issue 26 hook: torch, or which onnxruntime session; "auto" measures once per model, machine
    # and batch and caches the choice (fastddpm.pipelines.autoengine.py, fastddpm/runtime/calibrate.py)
    from .autoengine import select

    return select(pipeline, engine, options, n, export=cached_export)


def _onnx_file(pipeline, options: SamplingOptions):
    """A Pipeline on an ONNX file: the session, or on CUDA its IO-binding torch module."""
    model = pipeline.model
    if options.backend in ("auto", "triton") and wants_cuda(options.device):
        cuda = getattr(pipeline, "_cuda", False)
        if cuda is False:  # decided once per pipeline
            cuda = pipeline._cuda = torch_module(model) if cuda_iobinding_available(model) else None
        if cuda is not None:
            device = str(next(iter(cuda.buffers())).device)
            # an onnxruntime run cannot be captured in a torch CUDA graph
            return cuda, pipeline.model_id, options.replace(device=device, cuda_graph=False)
    return model, pipeline.model_id, options


def wants_cuda(device) -> bool:
    """device=None (use CUDA when it can run), "cuda", "cuda:i" or a torch.device of type cuda."""
    if device is None:
        return True
    kind = getattr(device, "type", None)
    return (kind if kind is not None else str(device).split(":", 1)[0]) == "cuda"
