"""``fastddpm.sample``: the sampling loop over batches, on the host (NumPy/Numba) or in torch.

Reproducibility contract (docs/sampling.md, "Reproducibility"): sample s starts from x_T = randn(seed, stream 0,
global offset s·D) and step k (1 … K in loop order) adds noise from stream k at the same global
offsets, so sample s does not depend on the batch size, backend, thread count or shard.

Paths:
- host (default on CPU): x lives in a NumPy buffer; torch modules see it through one
  ``torch.from_numpy`` view per batch under one ``torch.inference_mode`` per batch, an ONNX
  Runtime model through IO binding on it; the update is one fused Numba kernel in place
  (``backend="numpy"``: the reference). Per step: network call, guard, kernel — everything
  else (validation, coefficient rows, kernel choice, adapters) is resolved per run or batch.
- torch (CUDA; ``backend="triton"`` on CPU tensors under TRITON_INTERPRET=1; ``backend="torch"``
  on any device): tensors all the way. The update is one fused Triton kernel per step that
  reads its coefficient row, step index and noise counter from device memory (TorchStepper);
  nothing about a step is a host argument, so on CUDA runs of GRAPH_STEPS steps (network +
  update) replay from captured CUDA graphs (fastddpm.sampling.graphs), cached per (model,
  batch, plan, dtype) across calls (``cuda_graph``); a model that cannot be captured runs
  eagerly after one warning.
  ``backend="torch"`` is the torch-ops reference of the update (never the hot path, no graphs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from dataclasses import dataclass

import numpy as np

from ..backends import BackendUnavailableError, interpreting_triton, kernels
from ..schedule import Schedule
from . import graphs
from .adapters import as_fastddpm_model
from .bulk import write_samples
from .guard import finite_check, nonfinite_error
from .guidance import GUIDED, Conditioning
from .models import check_output, declares_variance, host_model, model_device, model_kind
from .options import SamplingOptions, check_int
from .plan import make_plan
from .steppers import HostStepper, TorchStepper

@dataclass
class Trajectory:
    """x at chosen loop positions: ``positions`` [P] in [0, K] (0 = x_T, K = the final sample),
    ``timesteps`` [P] (the step the state is fed to the network at; −1 for the final sample),
    ``x`` [P, n, …]."""

    positions: list
    timesteps: list
    x: object


def _check_shape_fits(model, shape: tuple) -> None:
    """sample_shape against what the model says it takes (else the net fails with a raw
    "mat1 and mat2" / conv error at its first call): a ``sample_shape`` attribute (MLP), or
    ``config["in_channels"]`` (UNet: [C, H, W])."""
    own = getattr(model, "sample_shape", None)
    if own is not None and not isinstance(own, (int, tuple, list)):
        own = None
    if own is not None and tuple((own,) if isinstance(own, int) else own) != shape:
        raise ValueError(f"sample_shape {shape} does not match the model: {type(model).__name__} takes samples of "
                         f"shape {tuple((own,) if isinstance(own, int) else own)} (its sample_shape); pass that, "
                         "or omit sample_shape")
    config = getattr(model, "config", None)
    channels = config.get("in_channels") if isinstance(config, dict) else None
    if own is None and isinstance(channels, int) and (len(shape) != 3 or shape[0] != channels):
        raise ValueError(f"sample_shape {shape} does not match the model: {type(model).__name__} has in_channels = "
                         f"{channels}, so sample_shape must be ({channels}, H, W)")


DTYPES = ("float32", "float64", "float16", "bfloat16")


def _dtype_name(dtype) -> str:
    """'float32' | 'float64' | 'float16' | 'bfloat16' from a NumPy/torch dtype or its name."""
    if "torch" in sys.modules and isinstance(dtype, sys.modules["torch"].dtype):
        name = str(dtype).replace("torch.", "")
    elif isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if name not in DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(DTYPES)} (float16/bfloat16 on the Triton loop), "
                        f"got {dtype!r}")
    return name


def _np_dtype(dtype):
    """The host dtype (float32 or float64) of the host path."""
    name = _dtype_name(dtype)
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype={name} runs on the Triton loop only (device='cuda', or backend='triton'); "
                        "the host path (NumPy/Numba) takes float32 or float64")
    return np.dtype(name)


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

    def __init__(self, model, schedule, n, options: SamplingOptions | None = None, **kwargs):
        """``options``: a :class:`SamplingOptions`, or its fields as keywords (output ones ignored)."""
        opts = options if options is not None else SamplingOptions(**kwargs)
        if options is not None and kwargs:
            raise TypeError("pass a SamplingOptions or keywords, not both")
        model = as_fastddpm_model(model)  # a diffusers UNet2DModel → forward(x, t) -> tensor
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastddpm.Schedule, got {type(schedule).__name__}")
        self.n = check_int(n, "n")
        self.options = opts
        # Global index of this run's first sample: sample s of the run is sample start + s of the
        # whole request (its noise sits at global offset (start + s)·D), so shards of one request
        # run as separate runs (fastddpm.distributed).
        self.start = opts.start
        self.kind = model_kind(model)
        backend = opts.backend
        self.seed = opts.seed
        self.plan = make_plan(schedule, opts.sampler, opts.steps, opts.spacing, prediction=opts.prediction,
                              clip=opts.clip, final=opts.final, **opts.sampler_kwargs())
        self.schedule, self.model = schedule, model
        self.shape = opts.resolved_shape(model)
        _check_shape_fits(model, self.shape)
        # Labels and guidance, per network call (fastddpm.sampling.guidance): checked here, once.
        self.cond = Conditioning(model, self.plan.t.tolist(), self.n, self.start, self.seed, labels=opts.labels,
                                 guidance=opts.guidance, guidance_rescale=opts.guidance_rescale,
                                 guidance_interval=opts.guidance_interval)
        self.D = int(np.prod(self.shape, dtype=np.int64))
        self.check_finite = bool(opts.check_finite)
        self.progress = opts.progress

        self.device = self._device(opts.device)
        self.on_torch = self.device is not None and (self.device.type != "cpu" or backend in ("torch", "triton"))
        if self.on_torch:
            self._torch_setup(backend, opts.dtype, opts.cuda_graph)
        else:
            self.dtype = _np_dtype(opts.dtype)
            self.kernel_backend = "numpy" if backend == "numpy" else "numba"
            if self.kernel_backend == "numba":
                try:
                    import numba  # noqa: F401
                except ImportError as exc:  # pragma: no cover
                    raise BackendUnavailableError(f"backend='numba' is not installed ({exc}); pip install numba "
                                                  "or use backend='numpy'") from exc
            self.stepper = HostStepper(self.plan, self.kernel_backend, self.seed, self.dtype)
            self.timesteps = self.plan.t.tolist()
            self.network = host_model(model, self.kind, self.dtype, self.timesteps)
            self.cuda_graph = False
        self.batch_size = opts.resolved_batch_size(self.D, self.n, self.device.type if self.on_torch else "cpu")
        # A network with a variance channel (learned variances) returns twice the channels: [B, 2C, …].
        # A sampler that does not read it (all but ddpm's learned variances) gets the prediction half.
        variance = self.plan.table.variance_channel or declares_variance(model)
        self.drop_variance = variance and not self.plan.table.variance_channel
        self.out_shape = ((2 * self.shape[0],) + self.shape[1:]) if variance else self.shape
        self.model_id = None  # identifies the weights in a bulk progress record (set by Pipeline)
        self._doubled = {}  # B → the 2B-row network input of a guided run (host path), reused across batches

    @property
    def labelled(self) -> bool:
        """Whether the request gave labels: results then come with them (in memory: (x, labels);
        a bulk file: its .labels.npy sidecar)."""
        return self.cond.labels is not None

    def batch_labels(self, s0: int, s1: int):
        """int64 [s1 − s0]: the labels of samples s0 … s1 − 1 of this run (None when unlabelled)."""
        return None if self.cond.labels is None else self.cond.labels.batch(s0, s1)

    def _torch_setup(self, backend, dtype, cuda_graph) -> None:
        """The on_torch branch of __init__: dtype, stepper (tables built here), graph choice."""
        if self.kind != "torch":
            raise ValueError(f"backend={backend!r}/device={self.device} needs a torch model; "
                             "an array_api='numpy' model runs on the host (backend 'numba' or 'numpy')")
        if backend in ("numpy", "numba"):
            raise ValueError(f"backend={backend!r} runs on the CPU but the model is on {self.device}; "
                             "use backend='auto'")
        import torch

        name = _dtype_name(dtype)
        self.torch_dtype = getattr(torch, name)
        # Storage dtype of files (.npy has no bfloat16: it widens to float32, exactly).
        self.dtype = np.dtype("float32" if name == "bfloat16" else name)
        update = "torch" if backend == "torch" else "triton"
        if update == "triton":
            if self.device.type == "cpu" and not interpreting_triton():
                raise BackendUnavailableError(
                    "backend='triton' on the CPU runs only under the Triton interpreter (TRITON_INTERPRET=1 "
                    "set before triton is imported; slow, meant for tests); use device='cuda', or "
                    "backend='auto' (Numba) on the CPU")
            kernels("triton")  # a clear error when triton is not installed
            if name == "float64":
                raise TypeError("dtype=float64 does not run on the Triton loop (float32, float16 or bfloat16); "
                                "use backend='torch', or the host path (device='cpu', backend 'numba')")
        self.stepper = TorchStepper(self.plan, self.device, self.torch_dtype, self.seed, update, self.cond)
        self.model_dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        default_graph = self.device.type == "cuda" and update == "triton"
        self.cuda_graph = default_graph if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        if self.cuda_graph and update != "triton":
            raise ValueError("cuda_graph=True needs the fused Triton update (backend 'auto' or 'triton'); "
                             "backend='torch' runs eagerly")

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

    def run_batch(self, s0: int, s1: int, out=None, traj=None, pbar=None, *, initial=None):
        """Samples s0 … s1−1 as [s1−s0, …] (into ``out`` when given: a host array or a tensor).

        ``traj``: (positions, array [P, n, …]) to fill rows s0:s1 at those loop positions.
        ``initial``: the state the run starts from instead of x_T (rows s0:s1 of the request, at
        the plan's first timestep): :func:`solve`.
        """
        if self.on_torch:
            return self._torch_batch(s0, s1, out, traj, pbar, initial)
        return self._host_batch(s0, s1, out, traj, pbar, initial)

    def _host_batch(self, s0, s1, x, traj, pbar, initial=None):
        # Per batch: buffers, x_T, the network binding and the guard; the per-call path below is
        # the network call, the guard's one dot product and the fused kernel, nothing else.
        K = self.plan.num_steps
        B, offset = s1 - s0, (self.start + s0) * self.D
        cond = self.cond
        out = x
        if cond.doubled:  # guided calls run the network on 2B rows: x is the first half of that input
            xx = self._doubled.get(B)
            if xx is None:
                xx = self._doubled[B] = np.empty((2 * B,) + self.shape, dtype=self.dtype)
            x, mirror = xx[:B], xx[B:]
        else:
            xx = mirror = None
            if x is None:
                x = np.empty((B,) + self.shape, dtype=self.dtype)
        if initial is not None:
            x[...] = initial
        step = self.stepper.begin(x, offset, cond, mirror, draw=initial is None)  # x ← x_T
        record = _recorder(traj, s0, s1)
        record(0, x)
        hooks = traj is not None or pbar is not None
        ts, modes = self.timesteps, cond.modes
        inputs = cond.call_labels(self.batch_labels(s0, s1), B)
        with (_inference_mode() if self.kind == "torch" else _null()):
            nets, shapes, finite = {}, {}, {}
            for mode in set(modes):
                rows = 2 * B if mode == GUIDED else B
                buf = xx if mode == GUIDED else x
                # an unconditional model's binding keeps its one-argument form
                nets[mode] = self.network.bind(buf) if inputs[mode] is None else self.network.bind(buf, inputs[mode])
                shapes[mode] = (rows,) + self.out_shape
                if self.check_finite and rows not in finite:
                    finite[rows] = finite_check(np.empty(shapes[mode], self.dtype))
            for k in range(K):
                mode = modes[k]
                m = nets[mode](k)
                shape = shapes[mode]
                if m.shape != shape:
                    check_output(m, xx if mode == GUIDED else x, k, ts[k], K, expected=shape)
                if finite and not finite[shape[0]](m):
                    raise nonfinite_error(k, ts[k], K, self.start + s0, self.start + s1 - 1)
                if self.drop_variance:
                    m = np.ascontiguousarray(m[:, : self.shape[0]])
                step(k, m)
                if hooks:
                    record(k + 1, x)
                    if pbar is not None:
                        pbar.update(B)
        if xx is None:
            return x
        if out is None:
            return x.copy()  # the 2B buffer is reused by the next batch
        out[...] = x
        return out

    def torch_labels(self, s0: int, s1: int):
        """The labels tensor the network gets for samples s0 … s1 − 1 on the torch path (every call
        of a guided run: [labels | no label], 2B rows), or None (an unconditional model)."""
        import torch

        cond = self.cond
        mode = GUIDED if cond.doubled else cond.modes[0]
        labels = cond.call_labels(self.batch_labels(s0, s1), s1 - s0)[mode]
        return None if labels is None else torch.as_tensor(labels, device=self.device)

    def _torch_batch(self, s0, s1, out, traj, pbar, initial=None):
        import torch

        K, st = self.plan.num_steps, self.stepper
        B, offset = s1 - s0, (self.start + s0) * self.D
        guard = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), guard:
            # Graphs replay on fixed buffers: full batches replay, a smaller last batch and
            # trajectory runs (host copies between steps) run the same steps eagerly.
            graphed = graphs.graphed(self, B, offset & 3) if self.cuda_graph and traj is None \
                and B == self.batch_size and initial is None else None
            if graphed is not None:
                return graphs.replay(self, graphed, s0, s1, offset, out, pbar)
            labels = self.torch_labels(s0, s1)
            xx = mirror = None
            if self.cond.doubled:  # x is the first half of the 2B-row network input
                xx = torch.empty((2 * B,) + self.shape, dtype=self.torch_dtype, device=self.device)
                x, mirror = xx[:B], xx[B:]
            elif out is None or not out.is_contiguous() or out.dtype != self.torch_dtype:
                x = torch.empty((B,) + self.shape, dtype=self.torch_dtype, device=self.device)
            else:
                x = out
            state = st.state(x)
            if initial is not None:
                x.copy_(initial)
            st.begin(x, state, offset, mirror, draw=initial is None)
            record = _recorder(traj, s0, s1)
            record(0, x)
            bad = torch.full((), -1, dtype=torch.int64, device=self.device)
            for k in range(K):
                self._step(st, x, state, bad, k, xin=xx, labels=labels)
                record(k + 1, x)
                if pbar is not None:
                    pbar.update(B)
            self._raise_if_nonfinite(bad, s0, s1)
            if out is not None and x is not out:
                out.copy_(x)
                return out
            if xx is not None:
                x = x.clone()
            # .npy files have no bfloat16: a batch handed to a file writer widens (exactly).
            return x.float() if out is None and self.torch_dtype == torch.bfloat16 else x

    def _step(self, st, x, state, bad, k=None, xin=None, labels=None):
        """One step: network on (x, t_now) → fused update of x in place (step index on the
        device). ``k`` (host) only for the eager path's output checks; None while capturing.
        ``xin``: the 2B-row input of a guided run (x its first half); ``labels``: a conditional
        model's labels tensor (rows of the input)."""
        import torch

        src = x if xin is None else xin
        net_in = src if self.model_dtype in (None, src.dtype) else src.to(self.model_dtype)
        args = (net_in, st.t_input(src.shape[0])) + (() if labels is None else (labels,))
        m = self.model(*args)
        if k is not None:
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"the model must return a torch tensor, got {type(m).__name__}")
            check_output(m, src, k, int(self.plan.t[k]), self.plan.num_steps,
                         expected=(src.shape[0],) + self.out_shape)
        if self.drop_variance:
            m = m[:, : self.shape[0]]
        if not m.is_contiguous():
            m = m.contiguous()
        if self.check_finite:  # first bad step index, on the device (one sync per batch, after the loop)
            bad.copy_(torch.where((bad < 0) & ~torch.isfinite(m).all(), st.ctl[0], bad))
        st.update(x, m, state)

    def _raise_if_nonfinite(self, bad, s0, s1):
        if self.check_finite:
            first = int(bad)  # one sync per batch, after the loop
            if first >= 0:
                raise nonfinite_error(first, int(self.plan.t[first]), self.plan.num_steps,
                                      self.start + s0, self.start + s1 - 1)

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


def sample(model, schedule, n, **options):
    """Draw ``n`` samples [n, *sample_shape] from ``model`` with one of the samplers.

    model: torch nn.Module ``model(x [B, …], t int64 [B])`` or an object with
    ``array_api == "numpy"``; sample_shape: one sample's shape (default ``model.sample_shape``).
    The keywords are the fields of :class:`~fastddpm.sampling.options.SamplingOptions` (their
    defaults are in this function's signature):
    sampler: one of fastddpm.SAMPLERS (``fastddpm.kernels.samplers.description(name)`` says
    what each is; docs/sampling.md has the table); its own options (eta, variance, order,
    solver_type, sampler_options) are keywords too. steps / spacing / final: None → the
    sampler's defaults; spacing "leading" | "trailing" | "linspace" | "logsnr" | "karras" |
    "exponential" | a list of timesteps (see fastddpm.sampling.timesteps).
    batch_size: samples per batch (default: cache-sized on CPU, device-sized on CUDA); the
    samples do not depend on it. backend: "auto" | "numba" | "numpy" | "torch" | "triton".
    out: a ``.npy`` path → written in chunks with a progress record (``resume=True`` continues a
    killed run); returns the path. Otherwise returns a NumPy array (a tensor on CUDA), and with
    ``return_trajectory`` also a :class:`Trajectory` at ``trajectory_steps`` (loop positions,
    default 11 evenly spaced, or "all").
    labels (a conditional model, fastddpm.labels): with labels given the result is
    ``(x, labels)`` (``(x, labels, trajectory)``), labels int64 [n] aligned with the rows, and
    ``out`` also writes them to ``OUT.labels.npy`` beside the samples (same rules: lock,
    atomic rename, resume, checksums). guidance / guidance_rescale / guidance_interval:
    classifier-free guidance, fused into the update kernel (docs/sampling.md, "Guidance").
    check_finite: stop with an error naming the step if the model returns NaN/inf.
    dtype: float32 (default) or float64 on the host; float32, float16 or bfloat16 on the Triton
    loop (CUDA; the math is float32, x is stored in dtype; a float32 network is fed x cast to
    its dtype). cuda_graph: replay the steps (network + update) from captured CUDA graphs
    (default on for CUDA with the Triton update), cached per model across calls.
    start: the global index of the first sample: the result is samples start … start+n−1 of the
    request with this seed (a shard of a larger run; see fastddpm.distributed).
    """
    return execute(model, schedule, n, SamplingOptions.from_kwargs(options, where="fastddpm.sample"))


sample.__signature__ = inspect.Signature(
    [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in ("model", "schedule", "n")]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
       for f in dataclasses.fields(SamplingOptions)])


def execute(model, schedule, n, options: SamplingOptions, *, model_id=None, postprocess=None):
    """Run one request: into ``options.out`` (a path comes back) or in memory (an array, and a
    Trajectory with ``return_trajectory``). ``model_id`` goes into the resume record;
    ``postprocess`` maps each written batch (e.g. to data space; in-memory results are the
    caller's to map)."""
    run = SamplingRun(model, schedule, n, options)
    run.model_id = model_id
    if options.out is not None:
        return write_samples(run, options.out, resume=options.resume, overwrite=options.overwrite,
                             postprocess=postprocess)
    return run_in_memory(run, return_trajectory=options.return_trajectory,
                         trajectory_steps=options.trajectory_steps)


class Solver:
    """Runs of one plan started from given states instead of x_T: ``Solver(model, schedule, options,
    n)(x)`` → the end state of x [m ≤ n, …] after the plan's calls, through the same loop and fused
    kernels as :func:`fastddpm.sample` (validation, plan and kernel binding once, here). The
    options' spacing is a list of timesteps starting at the timestep of x. Noise, if the sampler
    draws any, comes from stream k + 1 at the rows' offsets as in a sampling run.

    What fastddpm.distill's consistency teacher uses to solve the probability-flow ODE from x_t to x_0.
    """

    def __init__(self, model, schedule, options: SamplingOptions, n: int, sample_shape):
        self.run = SamplingRun(model, schedule, check_int(n, "n"),
                               options.replace(sample_shape=tuple(sample_shape), progress=False))

    def __call__(self, x):
        run, m = self.run, int(x.shape[0])
        if m > run.n:
            raise ValueError(f"x has {m} rows; this Solver was built for at most {run.n}")
        if run.on_torch:
            import torch

            out = torch.empty(x.shape, dtype=run.torch_dtype, device=run.device)
        else:
            out = np.empty((m,) + run.shape, dtype=run.dtype)
            if hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
        for s0 in range(0, m, run.batch_size):
            s1 = min(m, s0 + run.batch_size)
            run.run_batch(s0, s1, out=out[s0:s1], initial=x[s0:s1])
        return out


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
    labels = run.batch_labels(0, n) if run.labelled else None
    if not return_trajectory:
        return result if labels is None else (result, labels)
    steps = [int(run.plan.t[p]) if p < K else -1 for p in traj[0]]
    trajectory = Trajectory(traj[0], steps, traj[1])
    return (result, trajectory) if labels is None else (result, labels, trajectory)
