"""SplitOnnxModel: one single-threaded onnxruntime session per core, each on its own rows of the batch.

onnxruntime's intra-op thread pool splits every node of the graph across the cores and meets at
a barrier after each (the default ResMLP has ~40 nodes per call). When another process holds a
core, every barrier waits for the descheduled thread: on the shared 2-core EPYC (load 2.5–3)
the export form of the default ResMLP at B = 8192 took 16–17 ms per call (median) with two
intra-op threads, against 9.0 ms with the batch split in two halves, each run start to end by
its own one-thread session (bench/net_throughput.py; one thread alone: 8.8 ms). The halves
need no synchronisation but the one at the end of the call.

Outputs are bit-identical to one session on the whole batch: onnxruntime computes every row
the same way whatever the number of rows around it (tests/test_net_runtimes.py). No torch here.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .model import CPU_EP, OnnxModel, _onnxruntime

MIN_ROWS_PER_PART = 64  # below this a part's run is mostly fixed cost: fewer parts


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class SplitOnnxModel:
    """``parts`` one-thread CPU sessions of the ONNX file ``path`` (default: the usable cores),
    called like :class:`OnnxModel`; each call splits the batch rows into contiguous shares and
    runs them concurrently (onnxruntime releases the GIL while it runs)."""

    array_api = "numpy"

    def __init__(self, path, parts: int | None = None):
        if parts is None:
            parts = usable_cores()
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise ValueError(f"parts must be an integer >= 1 (sessions, one per core), got {parts!r}")
        ort = _onnxruntime()
        models = []
        for _ in range(parts):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            models.append(OnnxModel(path, [CPU_EP], session_options=options))
        self.models = models
        first = models[0]
        self.path, self.metadata, self.sample_shape = first.path, first.metadata, first.sample_shape
        self.shared_t, self.fixed_batch, self.output_name = first.shared_t, first.fixed_batch, first.output_name
        self.num_classes, self.null_label, self.label_counts = first.num_classes, first.null_label, first.label_counts
        self._pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="fastddpm-ort") if parts > 1 else None

    device = "cpu"
    providers = property(lambda self: self.models[0].providers)
    schedule = property(lambda self: self.models[0].schedule)
    prediction = property(lambda self: self.models[0].prediction)
    normalization = property(lambda self: self.models[0].normalization)
    learn_sigma = property(lambda self: self.models[0].learn_sigma)

    def __repr__(self) -> str:
        return f"SplitOnnxModel({self.path!r}, parts={len(self.models)})"

    def _ranges(self, rows: int) -> list[tuple[int, int]]:
        parts = max(1, min(len(self.models), rows // MIN_ROWS_PER_PART))
        if self.fixed_batch is not None:
            parts = 1
        bounds = [rows * i // parts for i in range(parts + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def __call__(self, x, t, labels=None) -> np.ndarray:
        x, t = self.models[0].check_inputs(x, t)
        y = self.models[0].check_labels(labels, x.shape[0])
        ranges = self._ranges(x.shape[0])
        if len(ranges) == 1:
            return self.models[0](x, t, y)
        per_row = t.shape[0] == x.shape[0] and x.shape[0] != 1
        futures = [self._pool.submit(m, x[a:b], t[a:b] if per_row else t, None if y is None else y[a:b])
                   for m, (a, b) in zip(self.models[1:], ranges[1:])]
        a, b = ranges[0]
        parts = [self.models[0](x[a:b], t[a:b] if per_row else t, None if y is None else y[a:b])]
        return np.concatenate(parts + [f.result() for f in futures])

    def bind_batch(self, x: np.ndarray, timesteps, labels=None):
        """The sampling loop's per-step call (see :meth:`OnnxModel.bind_batch`): each session
        is bound to its rows of x once per batch; a step runs them concurrently and gathers the
        shares into one output buffer."""
        ranges = self._ranges(x.shape[0])
        timesteps = list(timesteps)
        y = self.models[0].check_labels(labels, x.shape[0])
        nets = [m.bind_batch(x[a:b], timesteps) if y is None else m.bind_batch(x[a:b], timesteps, labels=y[a:b])
                for m, (a, b) in zip(self.models, ranges)]
        if any(n is None for n in nets):
            return None
        if len(nets) == 1:
            return nets[0]
        out = np.empty(self.models[0].output_shape(x), np.float32)  # twice the channels with learn_sigma
        pool, first, rest = self._pool, nets[0], list(zip(nets[1:], ranges[1:]))
        a0, b0 = ranges[0]

        def net(k):
            futures = [(pool.submit(n, k), a, b) for n, a, b in ((n, a, b) for n, (a, b) in rest)]
            out[a0:b0] = first(k)
            for f, a, b in futures:
                out[a:b] = f.result()
            return out
        net.buffers = (x, out, nets)
        return net
