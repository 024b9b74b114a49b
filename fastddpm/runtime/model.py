"""OnnxModel: an exported ε-network in an onnxruntime session, callable like the torch one.

No torch here (nor anything that imports it): this module runs where only NumPy, Numba and
onnxruntime are installed.
"""
from __future__ import annotations

import os

import numpy as np

from .metadata import OnnxMetadata, decode

INPUTS = {"x": "tensor(float)", "t": "tensor(int64)"}
LABELS = "labels"  # a conditional network's third input, int64 [B] (fastddpm.onnx_export.LABEL_INPUT)
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"sampling from an ONNX file needs onnxruntime ({exc}); install it with "
            "pip install 'fastddpm[onnx]' (or 'fastddpm[onnx-gpu]' for the CUDA provider)"
        ) from exc
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA execution provider when this onnxruntime build has it, with CPU as fallback."""
    available = _onnxruntime().get_available_providers()
    return [CUDA_EP, CPU_EP] if CUDA_EP in available else [CPU_EP]


def _check_providers(providers) -> list:
    if providers is None:
        return default_providers()
    if isinstance(providers, str):
        providers = [providers]
    available = _onnxruntime().get_available_providers()
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    missing = [p for p in names if p not in available]
    if not names or missing:
        raise ValueError(f"providers must be a non-empty list of available onnxruntime execution providers "
                         f"({', '.join(available)}); got {names!r}"
                         + ("" if CUDA_EP in available or CUDA_EP not in missing
                            else " — the CUDA provider needs pip install 'fastddpm[onnx-gpu]'"))
    return list(providers)


def _dim(d):
    """A static dimension as int, a symbolic or unknown one as None."""
    return d if isinstance(d, int) and d > 0 else None


class OnnxModel:
    """An ε-network exported by :func:`fastddpm.export_onnx`, run by onnxruntime.

    ``model(x, t)`` with x float32 [B, *sample_shape] and t int64 [B] (or one int / [1]: every
    sample at that t) returns the prediction as a float32 NumPy array [B, *sample_shape];
    ``array_api == "numpy"`` tells :func:`fastddpm.sample` so. A model exported with a fixed
    batch size N is run in chunks of N (the last one zero-padded), so any B works.

    ``shared_t``: the graph takes t of shape [1] for a whole batch (a fastddpm export of a net
    with ``accepts_shared_t``; see :mod:`fastddpm.nets.embedding`); a shared t is then passed
    as [1] and the time path runs once. :meth:`bind_batch` is the sampling loop's per-step call.

    Attributes read from the file's fastddpm metadata (``None`` when absent): ``schedule``,
    ``prediction``, ``normalization``, ``sample_shape``; ``metadata`` holds all of them.

    A conditional network (a graph with a third input ``labels`` int64 [B] and the label set in
    its metadata) has ``num_classes`` > 0 and ``null_label``, and is called ``model(x, t, labels)``
    (labels None: its "no label" class), as the sampling loop calls any conditional model.
    """

    array_api = "numpy"

    def __init__(self, path, providers=None, *, session_options=None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model {path!r} does not exist (export one with "
                                    "fastddpm export CKPT --out model.onnx)")
        ort = _onnxruntime()
        providers = _check_providers(providers)
        try:
            session = ort.InferenceSession(path, sess_options=session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, …)
            raise ValueError(f"{path!r} is not a loadable ONNX model: {exc}") from exc
        self.path = path
        self.session = session
        self.metadata: OnnxMetadata = decode(session.get_modelmeta().custom_metadata_map or {},
                                             source=repr(path))
        self._check_signature()

    # -- signature -----------------------------------------------------------------------

    def _check_signature(self) -> None:
        where = f"ONNX model {self.path!r}"
        inputs = {i.name: i for i in self.session.get_inputs()}
        conditional = LABELS in inputs
        want_inputs = dict(INPUTS, **({LABELS: "tensor(int64)"} if conditional else {}))
        if sorted(inputs) != sorted(want_inputs):
            raise ValueError(f"{where} has inputs {sorted(inputs)}; fastddpm needs exactly "
                             "'x' (float32 [B, ...]) and 't' (int64 [B]), and 'labels' (int64 [B]) for a conditional "
                             "network — export with fastddpm.export_onnx")
        labels = self.metadata.labels
        if conditional and labels is None:
            raise ValueError(f"{where} takes 'labels' but its metadata has no fastddpm.labels entry (the number of "
                             "classes and the 'no label' class); export it with fastddpm.export_onnx")
        if labels is not None and not conditional:
            raise ValueError(f"{where}: its metadata describes {labels.num_classes} classes but the graph has no "
                             "'labels' input; export it again with fastddpm.export_onnx")
        self.num_classes = labels.num_classes if labels is not None else 0
        self.null_label = labels.null_label if labels is not None else None
        self.label_counts = labels.counts if labels is not None else None
        for name, want in want_inputs.items():
            if inputs[name].type != want:
                raise TypeError(f"{where}: input {name!r} has type {inputs[name].type}, expected {want}")
        x_shape, t_shape = inputs["x"].shape, inputs["t"].shape
        if len(x_shape) < 2:
            raise ValueError(f"{where}: input 'x' has rank {len(x_shape)} (shape {x_shape}); expected [B, ...] "
                             "with at least one sample dimension")
        if len(t_shape) != 1:
            raise ValueError(f"{where}: input 't' has rank {len(t_shape)} (shape {t_shape}); expected [B]")
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise ValueError(f"{where} has {len(outputs)} outputs; expected one (the prediction)")
        out = outputs[0]
        if out.type != "tensor(float)":
            raise TypeError(f"{where}: output {out.name!r} has type {out.type}, expected tensor(float)")
        if len(out.shape) != len(x_shape):
            raise ValueError(f"{where}: output {out.name!r} has rank {len(out.shape)}, input 'x' rank {len(x_shape)}")

        static = tuple(_dim(d) for d in x_shape[1:])
        meta_shape = self.metadata.sample_shape
        if meta_shape is not None:
            if len(meta_shape) != len(static) or any(s is not None and s != m for s, m in zip(static, meta_shape)):
                raise ValueError(f"{where}: input 'x' has shape {x_shape} but its metadata says samples "
                                 f"of shape {list(meta_shape)}")
            self.sample_shape = tuple(meta_shape)
        elif all(s is not None for s in static):
            self.sample_shape = static
        else:
            self.sample_shape = None  # symbolic sample axes and no metadata: any shape is passed on
        self._x_rank = len(x_shape)
        self.fixed_batch = _dim(x_shape[0])
        self.output_name = out.name
        # t of shape [1] for a batch that shares t: only when the exporter said the graph
        # broadcasts it (fastddpm.shared_t) and the graph does not tie t's axis to x's batch axis
        # or fix it to another size; any other graph (a user's own) gets t [B], as before.
        t0 = t_shape[0]
        tied = isinstance(t0, str) and t0 == x_shape[0]
        fixed_other = isinstance(t0, int) and t0 > 1
        self.shared_t = bool(self.metadata.shared_t) and not tied and not fixed_other

    # -- metadata shortcuts --------------------------------------------------------------

    @property
    def schedule(self):
        return self.metadata.schedule

    @property
    def prediction(self):
        return self.metadata.prediction

    @property
    def normalization(self):
        return self.metadata.normalization

    @property
    def learn_sigma(self) -> bool:
        """Whether the network outputs a variance channel ([B, 2C, …]: prediction | v), as the
        fastddpm model record in the file says (a net trained with learn_sigma)."""
        model = self.metadata.model or {}
        kwargs = model.get("kwargs", model.get("config")) if isinstance(model, dict) else None
        return bool(isinstance(kwargs, dict) and kwargs.get("learn_sigma"))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def device(self) -> str:
        """"cuda" when the network runs on the CUDA execution provider, else "cpu"."""
        return "cuda" if self.providers and self.providers[0] == CUDA_EP else "cpu"

    def __repr__(self) -> str:
        return (f"OnnxModel({self.path!r}, providers={self.providers}, sample_shape={self.sample_shape}, "
                f"prediction={self.prediction!r}, schedule={self.schedule!r})")

    # -- call ------------------------------------------------------------------------------

    def check_inputs(self, x, t) -> tuple[np.ndarray, np.ndarray]:
        """x float32 [B, *sample_shape] C-contiguous and t int (broadcast) or int [B] → int64."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a NumPy array (OnnxModel.array_api == 'numpy'), got {type(x).__name__}")
        if x.dtype != np.float32:
            raise TypeError(f"x must be float32 (the ONNX input 'x' is tensor(float)), got {x.dtype}")
        if x.ndim != self._x_rank or (self.sample_shape is not None and x.shape[1:] != self.sample_shape):
            want = "[B, " + (", ".join(map(str, self.sample_shape)) if self.sample_shape else "...") + "]"
            raise ValueError(f"x must have shape {want} for this model, got {list(x.shape)}")
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        t = np.asarray(t)
        if t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
            raise TypeError(f"t must be an integer or an integer array [B], got dtype {t.dtype}")
        if t.ndim == 0 or (t.shape == (1,) and x.shape[0] != 1):  # one t for the whole batch
            shared = self.shared_t and self.fixed_batch is None
            t = np.full((1 if shared else x.shape[0],), t.reshape(()), dtype=np.int64)
        elif t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}] (or [1] / an int for one t), got {list(t.shape)}")
        return x, np.ascontiguousarray(t, dtype=np.int64)

    def check_labels(self, labels, rows: int):
        """int64 [rows] labels of a conditional network (None: its "no label" class); None for an
        unconditional one, which refuses labels."""
        if not self.num_classes:
            if labels is not None:
                raise ValueError(f"ONNX model {self.path!r} is unconditional (no 'labels' input); call it without labels")
            return None
        if labels is None:
            if self.null_label is None:
                raise ValueError(f"ONNX model {self.path!r} is conditional and has no 'no label' class: pass labels")
            return np.full(rows, self.null_label, dtype=np.int64)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if labels.shape != (rows,):
            raise ValueError(f"labels must have shape [B] = [{rows}], got {list(labels.shape)}")
        return labels

    def __call__(self, x, t, labels=None) -> np.ndarray:
        """The network's prediction for x [B, ...] at steps t [B] (float32 NumPy array); ``labels``
        int64 [B] for a conditional network."""
        x, t = self.check_inputs(x, t)
        y = self.check_labels(labels, x.shape[0])
        n = self.fixed_batch
        if n is None or x.shape[0] == n:
            return self._run(x, t, y)
        out = np.empty(self.output_shape(x), np.float32)
        if t.shape[0] != x.shape[0]:
            t = np.full((x.shape[0],), t[0], dtype=np.int64)
        for start in range(0, x.shape[0], n):
            xs, ts = x[start:start + n], t[start:start + n]
            ys = None if y is None else y[start:start + n]
            m = xs.shape[0]
            if m < n:  # pad the last chunk to the exported batch size
                xs = np.concatenate([xs, np.zeros((n - m, *xs.shape[1:]), np.float32)])
                ts = np.concatenate([ts, np.zeros(n - m, np.int64)])
                ys = None if ys is None else np.concatenate([ys, np.zeros(n - m, np.int64)])
            out[start:start + m] = self._run(xs, ts, ys)[:m]
        return out

    def bind_batch(self, x: np.ndarray, timesteps, labels=None):
        """The sampling loop's network for one batch buffer: ``net(k)`` → prediction at
        t = timesteps[k] for the current contents of x (float32 [B, *sample_shape], C-contiguous,
        updated in place between steps).

        Prepared once per batch: the checks, onnxruntime IO binding of x (read in place at every
        run), of a t buffer ([1] when ``shared_t``, else [B]) that a step only writes, and of one
        output buffer that every step reuses — no per-step allocation or conversion. Returns
        None (the loop then calls ``model(x, t)``) for a fixed-batch graph of another size or a
        session that is not on the CPU provider. ``labels``: a conditional network's int64 [B]
        (bound like x; None: its "no label" class).
        """
        x_checked, _ = self.check_inputs(x, 0)
        y = self.check_labels(labels, x.shape[0])
        if x_checked is not x or (self.fixed_batch is not None and x.shape[0] != self.fixed_batch) \
                or self.device != "cpu":
            return None
        ts = np.asarray(list(timesteps), dtype=np.int64)
        t_buf = np.empty(1 if self.shared_t else x.shape[0], dtype=np.int64)
        out = np.empty(self.output_shape(x), np.float32)
        binding = self.session.io_binding()
        binding.bind_cpu_input("x", x)
        binding.bind_cpu_input("t", t_buf)
        if y is not None:
            binding.bind_cpu_input(LABELS, y)
        binding.bind_output(self.output_name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        path = self.path
        # The C++ session's own run: the Python wrapper around it adds ~6 µs per call on the
        # 2-core EPYC (a WebGPU capture check); the public method where those names are absent.
        sess, raw = getattr(self.session, "_sess", None), getattr(binding, "_iobinding", None)
        if sess is not None and raw is not None and hasattr(sess, "run_with_iobinding"):
            run_c = sess.run_with_iobinding

            def run(_binding):
                run_c(raw, None)
        else:
            run = self.session.run_with_iobinding

        def net(k):
            t_buf[...] = ts[k]
            try:
                run(binding)
            except Exception as exc:  # onnxruntime's own pybind errors (shape mismatch, …)
                raise ValueError(f"ONNX model {path!r} failed on x of shape {list(x.shape)} at t={int(ts[k])}: "
                                 f"{exc}") from exc
            return out
        net.buffers = (x, t_buf, out, y)  # keep the bound memory alive with the closure
        return net

    def output_shape(self, x) -> tuple[int, ...]:
        """The output's shape for input x: x's, with twice the channels for a learned-variance net."""
        return (x.shape[0], 2 * x.shape[1], *x.shape[2:]) if self.learn_sigma else tuple(x.shape)

    def _run(self, x: np.ndarray, t: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        feeds = {"x": x, "t": t} if labels is None else {"x": x, "t": t, LABELS: labels}
        out = self.session.run([self.output_name], feeds)[0]
        if out.shape != self.output_shape(x):
            raise ValueError(f"ONNX model {self.path!r} returned shape {list(out.shape)} for x of shape "
                             f"{list(x.shape)}; the prediction must have the shape of x"
                             + (" with twice the channels (learn_sigma)" if self.learn_sigma else ""))
        return out
