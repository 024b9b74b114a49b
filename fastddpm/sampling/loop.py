"""``fastddpm.sample``: the sampling loop over batches, on the host (NumPy/Numba) or in torch.

Reproducibility contract (DESIGN.md "Noise"): sample s starts from x_T = randn(seed, stream 0,
global offset s·D) and step k (1 … K in loop order) adds noise from stream k at the same global
offsets, so sample s does not depend on the batch size, backend, thread count or shard.

Paths:
- host (default on CPU): x lives in a NumPy buffer; torch modules see it through one
  ``torch.from_numpy`` view per batch under one ``torch.inference_mode`` per batch, an ONNX
  Runtime model through IO binding on it; the update is one fused Numba kernel in place
  (``backend="numpy"``: the reference). Per step: network call, guard, kernel — everything
  else (validation, coefficient rows, kernel choice, adapters) is resolved per run or batch.
- torch (CUDA, or ``backend="torch"`` on any device): tensors all the way, per-step
  coefficients from a device table, no ``.item()`` inside a batch; on CUDA the network and the
  update of one step are captured in a CUDA graph and replayed (``cuda_graph``).
"""
from __future__ import annotations

import numbers
import sys
from dataclasses import dataclass

import numpy as np

from ..backends import BackendUnavailableError, kernels
from ..schedule import Schedule
from .guard import finite_check, nonfinite_error
from .models import check_output, host_model, model_device, model_kind
from .plan import make_plan
from .steppers import HostStepper, TorchStepper, numba_randn

LOOP_BACKENDS = ("auto", "numpy", "numba", "torch", "triton")

# Default CPU batch: the number of elements (B·D) per batch. `bench/throughput.py --sections
# batch` on the 2-core EPYC (butterfly MLP, loaded machine): 4096 samples (8192 elements) gave
# 365k sample-steps/s, 8192 → 346k, 16384 → 320k, 32768 → 265k, 1024 → 319k (docs/sampling.md).
DEFAULT_CPU_BATCH_ELEMENTS = 2**13
# On a GPU one batch should fill the device: up to 2^26 elements (256 MiB of float32) at a time.
DEFAULT_GPU_BATCH_ELEMENTS = 2**26


def default_batch_size(sample_elements: int, device_type: str) -> int:
    """Samples per batch when batch_size=None: a cache-sized batch on CPU, a device-filling one on CUDA."""
    elements = DEFAULT_GPU_BATCH_ELEMENTS if device_type == "cuda" else DEFAULT_CPU_BATCH_ELEMENTS
    return max(1, elements // sample_elements)


@dataclass
class Trajectory:
    """x at chosen loop positions: ``positions`` [P] in [0, K] (0 = x_T, K = the final sample),
    ``timesteps`` [P] (the step the state is fed to the network at; −1 for the final sample),
    ``x`` [P, n, …]."""

    positions: list
    timesteps: list
    x: object


def _check_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {low}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return int(value)


def _np_dtype(dtype):
    name = getattr(dtype, "name", None) if not isinstance(dtype, str) else dtype
    if name is None and "torch" in sys.modules and isinstance(dtype, sys.modules["torch"].dtype):
        name = str(dtype).replace("torch.", "")
    try:
        dt = np.dtype(name if name is not None else dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def trajectory_positions(num_steps: int, trajectory_steps) -> list:
    """Default: 11 evenly spaced positions from 0 (x_T) to K (the sample); "all": every one."""
    if trajectory_steps is None:
        return sorted({int(v) for v in np.linspace(0, num_steps, min(num_steps + 1, 11)).round()})
    if isinstance(trajectory_steps, str):
        if trajectory_steps != "all":
            raise ValueError(f"trajectory_steps must be a list of loop positions in [0, {num_steps}] or 'all'")
        return list(range(num_steps + 1))
    pos = sorted({int(v) for v in trajectory_steps})
    if not pos or pos[0] < 0 or pos[-1] > num_steps:
        raise ValueError(f"trajectory_steps must be loop positions in [0, K = {num_steps}] "
                         f"(0 = x_T, K = the final sample); got {list(trajectory_steps)}")
    return pos


class SamplingRun:
    """A validated sampling request; ``run_batch(s0, s1)`` produces samples s0 … s1−1."""

    def __init__(self, model, schedule, n, *, sampler, steps, spacing, eta, prediction, variance, clip,
                 seed, batch_size, device, backend, dtype, progress, check_finite, sample_shape,
                 cuda_graph, start=0):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastddpm.Schedule, got {type(schedule).__name__}")
        self.n = _check_int(n, "n")
        # Global index of this run's first sample: sample s of the run is sample start + s of the
        # whole request (its noise sits at global offset (start + s)·D), so shards of one request
        # run as separate runs (fastddpm.distributed).
        self.start = _check_int(start, "start", 0)
        self.kind = model_kind(model)
        if backend not in LOOP_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, LOOP_BACKENDS))}; got {backend!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        self.seed = int(seed)
        self.plan = make_plan(schedule, sampler, steps, spacing, eta=eta, prediction=prediction,
                              variance=variance, clip=clip)
        self.schedule, self.model = schedule, model
        shape = sample_shape if sample_shape is not None else getattr(model, "sample_shape", None)
        if shape is None:
            raise ValueError("sample_shape is required (the shape of one sample, e.g. (2,) or (1, 28, 28)) "
                             "unless the model has a sample_shape attribute")
        self.shape = tuple(_check_int(s, "sample_shape entries") for s in (
            (shape,) if isinstance(shape, numbers.Integral) else shape))
        self.D = int(np.prod(self.shape, dtype=np.int64))
        self.dtype = _np_dtype(dtype)
        self.check_finite = bool(check_finite)
        self.progress = progress

        self.device = self._device(device)
        self.on_torch = self.device is not None and (self.device.type != "cpu" or backend == "torch")
        if self.on_torch:
            if self.kind != "torch":
                raise ValueError(f"backend={backend!r}/device={device!r} needs a torch model; "
                                 "an array_api='numpy' model runs on the host (backend 'numba' or 'numpy')")
            if backend in ("numpy", "numba"):
                raise ValueError(f"backend={backend!r} runs on the CPU but the model is on {self.device}; "
                                 "use backend='auto'")
            import torch

            self.torch_dtype = getattr(torch, self.dtype.name)
            self.noise_backend = "auto" if backend in ("auto", "torch") else backend
            self.stepper = TorchStepper(self.plan, self.device, self.torch_dtype, self.seed, self.noise_backend)
            self.cuda_graph = (self.device.type == "cuda") if cuda_graph is None else bool(cuda_graph)
            if self.cuda_graph and self.device.type != "cuda":
                raise ValueError("cuda_graph=True needs a CUDA device")
        else:
            if backend == "triton":
                raise BackendUnavailableError("backend='triton' needs a CUDA device (device='cuda' and a model on it)")
            self.kernel_backend = "numpy" if backend == "numpy" else "numba"
            if self.kernel_backend == "numba":
                try:
                    import numba  # noqa: F401
                except ImportError as exc:  # pragma: no cover
                    raise BackendUnavailableError(f"backend='numba' is not installed ({exc}); pip install numba "
                                                  "or use backend='numpy'") from exc
            self.stepper = HostStepper(self.plan, schedule, self.kernel_backend, self.seed)
            self.timesteps = self.plan.t.tolist()
            self.network = host_model(model, self.kind, self.dtype, self.timesteps)
            self.cuda_graph = False
        if batch_size is None:
            batch_size = default_batch_size(self.D, self.device.type if self.on_torch else "cpu")
        self.batch_size = min(_check_int(batch_size, "batch_size"), self.n)
        self._graphs = {}
        self.model_id = None  # identifies the weights in a bulk progress record (set by Pipeline)

    def _device(self, device):
        """None for the host path with a NumPy model; a torch.device otherwise."""
        if self.kind == "numpy":
            if device is not None and str(device) != "cpu":
                raise ValueError(f"an array_api='numpy' model runs on the CPU; got device={device!r}")
            return None
        import torch

        where = model_device(self.model)
        dev = where if device is None else torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev != where and where.type != dev.type:
            raise ValueError(f"the model is on {where} but device={device!r}; move it with model.to({str(dev)!r})")
        return dev

    # -- progress ---------------------------------------------------------------------------

    def progress_bar(self, total_samples: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total_samples * self.plan.num_steps, unit="sample-step", unit_scale=True,
                    desc=f"{self.plan.sampler}-{self.plan.num_steps}", leave=False)

    # -- one batch --------------------------------------------------------------------------

    def run_batch(self, s0: int, s1: int, out=None, traj=None, pbar=None):
        """Samples s0 … s1−1 as [s1−s0, …] (into ``out`` when given: a host array or a tensor).

        ``traj``: (positions, array [P, n, …]) to fill rows s0:s1 at those loop positions.
        """
        if self.on_torch:
            return self._torch_batch(s0, s1, out, traj, pbar)
        return self._host_batch(s0, s1, out, traj, pbar)

    def _host_batch(self, s0, s1, x, traj, pbar):
        # Per batch: buffers, the network binding and the guard; the per-step path below is the
        # network call, the guard's one dot product and the fused kernel, nothing else.
        K = self.plan.num_steps
        B, offset = s1 - s0, (self.start + s0) * self.D
        if x is None:
            x = np.empty((B,) + self.shape, dtype=self.dtype)
        flat = x.reshape(-1)
        if self.kernel_backend == "numba":
            numba_randn(flat, self.seed, 0, offset)
        else:
            flat[:] = kernels("numpy").randn(flat.size, self.seed, 0, offset)
        self.stepper.reset(x)
        record = _recorder(traj, s0, s1)
        record(0, x)
        hooks = traj is not None or pbar is not None
        step, shape, ts = self.stepper.step, x.shape, self.timesteps
        with (_inference_mode() if self.kind == "torch" else _null()):
            net = self.network.bind(x)
            finite = finite_check(x) if self.check_finite else None
            for k in range(K):
                m = net(k)
                if m.shape != shape:
                    check_output(m, x, k, ts[k], K)
                if finite is not None and not finite(m):
                    raise nonfinite_error(k, ts[k], K, self.start + s0, self.start + s1 - 1)
                step(k, x, m, x, offset)
                if hooks:
                    record(k + 1, x)
                    if pbar is not None:
                        pbar.update(B)
        return x

    def _torch_batch(self, s0, s1, out, traj, pbar):
        import torch

        from ..ops import randn

        plan, K, st = self.plan, self.plan.num_steps, self.stepper
        B, offset = s1 - s0, (self.start + s0) * self.D
        # Graphs replay on fixed buffers: full batches run in the captured graph, a smaller last
        # batch runs eagerly.
        graph = self._graph(B) if self.cuda_graph and B == self.batch_size else None
        if graph is not None:
            g, static = graph
            x, state = static["x"], static["state"]
        else:
            x = out if out is not None else torch.empty((B,) + self.shape, dtype=self.torch_dtype,
                                                        device=self.device)
        with torch.inference_mode():
            x.copy_(randn((B,) + self.shape, seed=self.seed, stream=0, offset=offset, dtype=self.torch_dtype,
                          like=x, backend=self.noise_backend))
            if graph is None:
                state = st.state(x)
            else:
                if state["x0_prev"] is not None:
                    state["x0_prev"].zero_()
                static["bad"].fill_(-1)
            record = _recorder(traj, s0, s1)
            record(0, x)
            bad = torch.full((), -1, dtype=torch.int64, device=self.device)
            ks = torch.arange(K, dtype=torch.int64, device=self.device)
            ts = plan.t.tolist()
            for k in range(K):
                st.draw_noise(k, state, offset)
                if graph is not None:
                    static["t"].fill_(ts[k])
                    static["row"].copy_(st.coef[k])
                    static["k"].copy_(ks[k])
                    g.replay()
                else:
                    m = self.model(x, torch.full((B,), ts[k], dtype=torch.int64, device=self.device))
                    if not isinstance(m, torch.Tensor):
                        raise TypeError(f"the model must return a torch tensor, got {type(m).__name__}")
                    check_output(m, x, k, ts[k], K)
                    m = m.to(self.torch_dtype)
                    if self.check_finite:
                        bad = torch.where((bad < 0) & ~torch.isfinite(m).all(), ks[k], bad)
                    noise = state["noise"] if plan.prev_t[k] >= 0 else None
                    st.update(st.coef[k], x, m, x, noise, state)
                record(k + 1, x)
                if pbar is not None:
                    pbar.update(B)
            if graph is not None:
                bad = static["bad"]
            if self.check_finite:
                first = int(bad)  # one sync per batch, after the loop
                if first >= 0:
                    raise nonfinite_error(first, ts[first], K, self.start + s0, self.start + s1 - 1)
            if graph is not None:
                if out is None:
                    return x.clone()
                out.copy_(x)
                return out
        return x

    def _graph(self, B: int):
        """Model + update of one step captured on static buffers (one graph per run)."""
        if B in self._graphs:
            return self._graphs[B]
        import torch

        st = self.stepper
        x = torch.randn((B,) + self.shape, dtype=self.torch_dtype, device=self.device)
        static = {
            "x": x,
            "state": st.state(x),
            "t": torch.full((B,), int(self.plan.t[0]), dtype=torch.int64, device=self.device),
            "row": st.coef[0].clone(),
            "k": torch.zeros((), dtype=torch.int64, device=self.device),
            "bad": torch.full((), -1, dtype=torch.int64, device=self.device),
        }
        # The noise buffer is always read in the graph: on the last step sigma = 0 multiplies it.
        noise = static["state"]["noise"]

        def body():
            m = self.model(static["x"], static["t"])
            check_output(m, static["x"], 0, int(self.plan.t[0]), self.plan.num_steps)
            m = m.to(self.torch_dtype)
            if self.check_finite:
                bad = static["bad"]
                bad.copy_(torch.where((bad < 0) & ~torch.isfinite(m).all(), static["k"], bad))
            st.update(static["row"], static["x"], m, static["x"], noise, static["state"])

        with torch.inference_mode():
            # Warm up on a side stream (cuBLAS handles, lazy init), then capture. The buffers'
            # contents are reset by every batch, so the warm-up leaves nothing behind.
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                body()
        self._graphs[B] = (g, static)
        return self._graphs[B]


def _recorder(traj, s0, s1):
    if traj is None:
        return lambda pos, x: None
    positions, arr = traj
    index = {p: i for i, p in enumerate(positions)}

    def record(pos, x):
        i = index.get(pos)
        if i is not None:
            arr[i, s0:s1] = x
    return record


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _inference_mode():
    import torch

    return torch.inference_mode()


def sample(model, schedule, n, *, sampler="ddpm", steps=None, spacing="leading", eta=0.0,
           prediction="epsilon", variance="fixed_small", clip=None, seed=0, batch_size=None, device=None,
           backend="auto", dtype=np.float32, return_trajectory=False, trajectory_steps=None, progress=True,
           out=None, resume=False, overwrite=False, check_finite=True, sample_shape=None, cuda_graph=None,
           start=0):
    """Draw ``n`` samples [n, *sample_shape] from ``model`` with one of the samplers.

    model: torch nn.Module ``model(x [B, …], t int64 [B])`` or an object with
    ``array_api == "numpy"``; sample_shape: one sample's shape (default ``model.sample_shape``).
    sampler: "ddpm" (ancestral; steps < T respaces), "ddim" (eta), "dpmpp2m" (DPM-Solver++ 2M).
    steps: None → T for ddpm, 50 for ddim, 20 for dpmpp2m; spacing: "leading" | "trailing" |
    "linspace" | a list of timesteps (see fastddpm.sampling.timesteps).
    batch_size: samples per batch (default: cache-sized on CPU, device-sized on CUDA); the
    samples do not depend on it. backend: "auto" | "numba" | "numpy" | "torch" | "triton".
    out: a ``.npy`` path → written in chunks with a progress record (``resume=True`` continues a
    killed run); returns the path. Otherwise returns a NumPy array (a tensor on CUDA), and with
    ``return_trajectory`` also a :class:`Trajectory` at ``trajectory_steps`` (loop positions,
    default 11 evenly spaced, or "all").
    check_finite: stop with an error naming the step if the model returns NaN/inf.
    cuda_graph: capture network + update per step in a CUDA graph (default on for CUDA).
    start: the global index of the first sample: the result is samples start … start+n−1 of the
    request with this seed (a shard of a larger run; see fastddpm.distributed).
    """
    run = SamplingRun(model, schedule, n, sampler=sampler, steps=steps, spacing=spacing, eta=eta,
                      prediction=prediction, variance=variance, clip=clip, seed=seed, batch_size=batch_size,
                      device=device, backend=backend, dtype=dtype, progress=progress,
                      check_finite=check_finite, sample_shape=sample_shape, cuda_graph=cuda_graph,
                      start=start)
    if out is not None:
        if return_trajectory:
            raise ValueError("return_trajectory=True cannot be combined with out= (trajectories stay in memory)")
        from .bulk import write_samples

        return write_samples(run, out, resume=resume, overwrite=overwrite)
    if resume:
        raise ValueError("resume=True needs out= (a .npy path to continue writing)")
    return run_in_memory(run, return_trajectory=return_trajectory, trajectory_steps=trajectory_steps)


def run_in_memory(run: SamplingRun, *, return_trajectory=False, trajectory_steps=None):
    n, K = run.n, run.plan.num_steps
    if run.on_torch:
        import torch

        result = torch.empty((n,) + run.shape, dtype=run.torch_dtype, device=run.device)
        alloc = lambda shape: torch.empty(shape, dtype=run.torch_dtype, device=run.device)  # noqa: E731
    else:
        result = np.empty((n,) + run.shape, dtype=run.dtype)
        alloc = lambda shape: np.empty(shape, dtype=run.dtype)  # noqa: E731
    traj = None
    if return_trajectory:
        positions = trajectory_positions(K, trajectory_steps)
        traj = (positions, alloc((len(positions), n) + run.shape))
    pbar = run.progress_bar(n)
    try:
        for s0 in range(0, n, run.batch_size):
            s1 = min(n, s0 + run.batch_size)
            run.run_batch(s0, s1, out=result[s0:s1], traj=traj, pbar=pbar)
    finally:
        if pbar is not None:
            pbar.close()
    if not return_trajectory:
        return result
    labels = [int(run.plan.t[p]) if p < K else -1 for p in traj[0]]
    return result, Trajectory(traj[0], labels, traj[1])
