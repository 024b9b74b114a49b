"""engine="auto" / "onnx" on the CPU: which runtime evaluates a Pipeline's torch network (issue 26).

Runtimes (``RUNTIMES``):

- ``torch``: the module itself, eager, under ``inference_mode``;
- ``onnx``: onnxruntime's CPU provider on the engine's cached export — for the built-in nets
  their export form (:mod:`fastddpm.nets.fused`: the time modulation folded into the norm
  weights, t fixed to [1]), for any other module the plain export; the default session
  (intra-op threads = cores, spinning);
- ``onnx-nospin``: the same file and threads with intra-op spin-waiting off
  (``session.intra_op.allow_spinning = 0``), which halves the step time when other processes
  share the cores and costs ~0–20 % when they do not (docs/sampling.md, "ORT session variants");
- ``onnx-split`` (more than one usable core): one one-thread session per core, each on its own
  rows of the batch (:class:`fastddpm.runtime.split.SplitOnnxModel`): no barrier per node, so a
  core taken by another process slows only its share (9.0 ms median per call against 16–17 ms
  for two intra-op threads, default ResMLP at B = 8192, load 2.5–3).

``engine="onnx"`` takes ``onnx``. ``engine="auto"`` measures all of them at the batch the run
uses (rounded up to a power of two) with :func:`fastddpm.runtime.calibrate.choose`, once per
(model identity, machine, batch, library versions): the record lives in
``$FASTDDPM_CACHE/calibration`` next to the export cache (``…/onnx``), and
``$FASTDDPM_RUNTIME=torch|onnx|onnx-nospin|onnx-split`` overrides it. Without onnx/onnxruntime, or when
the export fails (a module the exporter cannot trace), the runtime is torch, as before.

The ONNX runtimes' samples differ from torch's by the float32 rounding of the network; their
resume identity is the model's plus ``:onnx-fused`` (export form) or ``:onnx`` (plain export),
so a bulk run is never resumed on a runtime that rounds differently. ``onnx``,
``onnx-nospin`` and ``onnx-split`` run the same graph, and onnxruntime computes each row alike
whatever the rows and threads around it: bit-identical outputs.
"""
from __future__ import annotations

import importlib.util
import math
import os
import warnings

import numpy as np

from ..runtime import OnnxModel
from ..runtime import calibrate
from ..sampling.options import SamplingOptions

RUNTIMES = ("torch", "onnx", "onnx-nospin", "onnx-split")
CALIBRATION_T = 500  # the timestep the calibration calls use (speed does not depend on it)
# An ONNX runtime must reproduce the module on the calibration batch to this × max(1, |output|):
# 100× the float32 tolerance the built-in nets keep (tests/test_net_runtimes.py; observed ≤ 1.5e-6).
CHECK_TOL = 1e-3


def calibration_dir() -> str:
    """``calibration/`` beside the ONNX export cache (``fastddpm.pipelines.engines.cache_dir``)."""
    from .engines import cache_dir

    return os.path.join(os.path.dirname(cache_dir()), "calibration")


def calibration_batch(pipeline, options: SamplingOptions, n: int | None) -> int:
    """The run's batch (``options.batch_size`` or the CPU default, at most n), rounded up to a
    power of two: the calibration's key and batch (bounded number of records per model)."""
    elements = int(np.prod(pipeline.sample_shape)) if pipeline.sample_shape else 1
    b = options.resolved_batch_size(elements, n if n is not None else 1 << 62, "cpu")
    return 1 << max(0, math.ceil(math.log2(max(1, b))))


def _session(pipeline, path: str, name: str) -> OnnxModel:
    """One OnnxModel per (pipeline, file, runtime), kept on the pipeline."""
    sessions = pipeline.__dict__.setdefault("_onnx_sessions", {})
    session = sessions.get((path, name))
    if session is None and name == "onnx-split":
        from ..runtime.split import SplitOnnxModel

        session = sessions[(path, name)] = SplitOnnxModel(path)
    if session is None:
        options = None
        if name == "onnx-nospin":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = sessions[(path, name)] = OnnxModel(path, ["CPUExecutionProvider"], session_options=options)
    if name == "onnx":
        pipeline._onnx_engine = session  # the attribute earlier code and tests read
    return session


def torch_tensor(array):
    import torch

    return torch.from_numpy(array)


def select(pipeline, engine: str, options: SamplingOptions, n: int | None = None, export=None):
    """(network, identity, options) for a torch network sampled on the CPU in float32.

    ``export(pipeline) -> path`` is the engine's export cache (engines.cached_export).
    """
    model = pipeline.model
    torch_choice = (model, pipeline.model_id, options)
    if engine == "auto" and (importlib.util.find_spec("onnxruntime") is None
                             or importlib.util.find_spec("onnx") is None):
        pipeline.runtime_choice = calibrate.Choice("torch", "only")
        return torch_choice
    try:
        path = export(pipeline)
    except Exception as exc:
        if engine == "onnx":
            raise
        warnings.warn(f"sampling with torch: exporting {type(model).__name__} to ONNX for the faster CPU path "
                      f"failed ({type(exc).__name__}: {exc}); pass engine='torch' to skip the attempt",
                      RuntimeWarning, stacklevel=4)
        pipeline.runtime_choice = calibrate.Choice("torch", "only")
        return torch_choice
    from ..onnx_fused import fused_form

    onnx_id = pipeline.model_id + (":onnx-fused" if fused_form(model) is not None else ":onnx")
    if engine == "onnx":
        pipeline.runtime_choice = calibrate.Choice("onnx", "only")
        return _session(pipeline, path, "onnx"), onnx_id, options

    batch = calibration_batch(pipeline, options, n)
    shape = (batch, *pipeline.sample_shape)

    x_cal = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    # A conditional net is measured (and checked) with labels, as the run will call it: one per row,
    # cycling through the classes (the speed does not depend on them).
    classes = getattr(model, "num_classes", 0) or 0
    y_cal = (np.arange(batch, dtype=np.int64) % classes) if classes else None
    y_args = (torch_tensor(y_cal),) if classes else ()
    reference = []

    def torch_out():
        """The torch module's output on the calibration batch (computed once)."""
        import torch

        if not reference:
            with torch.inference_mode():
                out = model(torch.from_numpy(x_cal.copy()), torch.full((1,), CALIBRATION_T, dtype=torch.int64)
                            .expand(batch), *y_args)
            reference.append(out.detach().float().numpy().copy())
        return reference[0]

    def torch_run():
        import torch

        x = torch.from_numpy(x_cal.copy())
        t = torch.full((1,), CALIBRATION_T, dtype=torch.int64).expand(batch)

        def run():
            with torch.inference_mode():
                model(x, t, *y_args)
        return run

    def onnx_run(name):
        def make():
            x = x_cal.copy()
            session = _session(pipeline, path, name)
            net = session.bind_batch(x, [CALIBRATION_T]) if y_cal is None else \
                session.bind_batch(x, [CALIBRATION_T], labels=y_cal)
            if net is None:  # cannot happen for a CPU session on a dynamic-batch file; measured the plain way
                net = (lambda k: session(x, CALIBRATION_T, y_cal))
            # A traced export can bake in a branch the module takes differently at this batch (a
            # user's module, say): a runtime that does not reproduce the module is not a candidate.
            want = torch_out()
            err = float(np.abs(net(0) - want).max())
            if not err <= CHECK_TOL * max(1.0, float(np.abs(want).max())):
                raise calibrate.CandidateRejected(
                    f"its output differs from the torch module's by {err:.3g} on the calibration batch "
                    f"(allowed {CHECK_TOL:g} × max(1, |output|)); the export of {type(model).__name__} does not "
                    "reproduce it (data- or shape-dependent Python control flow?)")
            return lambda: net(0)
        return make

    import torch

    from ..runtime.split import usable_cores

    candidates = {"torch": torch_run, "onnx": onnx_run("onnx"), "onnx-nospin": onnx_run("onnx-nospin")}
    if usable_cores() > 1:  # with one core it is the one-thread session
        candidates["onnx-split"] = onnx_run("onnx-split")
    choice = calibrate.choose(
        candidates, model_id=pipeline.model_id, batch_shape=shape, directory=calibration_dir(),
        extra={"model": type(model).__qualname__, "export": os.path.basename(path),
               "torch_threads": torch.get_num_threads()})
    pipeline.runtime_choice = choice
    if choice.name == "torch":
        return torch_choice
    return _session(pipeline, path, choice.name), onnx_id, options
