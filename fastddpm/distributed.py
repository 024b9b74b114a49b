"""Several processes, GPUs or nodes: sharded bulk sampling and DDP training under ``torchrun``.

Launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)::

    torchrun --nproc_per_node 4 -m fastddpm sample CKPT --n 1000000 --out x.npy --distributed
    torchrun --nproc_per_node 4 -m fastddpm train butterfly --out ckpt --distributed

Each process is one *rank*; rank r uses ``cuda:LOCAL_RANK`` with NCCL when it asks for a CUDA
device (``device="cuda"``/"auto" on a CUDA machine) and the CPU with gloo otherwise. Sampling's
own coordination (argument check, "all shards done") always runs on gloo: it moves a few bytes
of Python objects, and gloo's monitored barrier can wait hours for a slow rank with a per-call
limit, where an NCCL collective would trip the watchdog.

Sampling (:func:`sample_distributed`): the ceil(n / batch_size) batches of the request are split
into W contiguous runs; rank r samples its global indices [a_r, b_r) with
``fastddpm.sample(..., start=a_r, out=shard)`` — the same loop and ``.npy`` writer as one process,
so sample s gets its noise at global offset s·D, every batch is the batch one process would run,
and the union of the shards is bit for bit what one process writes for the same seed and batch
size (the noise alone would not need the batch grid; a network's float results can). Each shard is a complete
``.npy`` with its own resume record in ``OUT.shards/``; once all ranks report success, rank 0
copies the shards in order into a temporary file, renames it to OUT (atomic), and removes the
shard directory. ``resume=True`` continues every unfinished shard and re-does a killed assembly.

Training (:class:`RankContext` passed to ``fastddpm.train(..., distributed=…)``): iteration it
draws the same global batch (indices, time steps) as a single-process run with the same seed;
rank r takes rows [r·B // W, (r+1)·B // W) and their forward noise at the global offsets
(row·D in the iteration's stream), weights its local mean loss by n_r·W/B, and DDP's gradient
average then equals the gradient of the full batch's mean loss. So a W-rank run makes the same
updates as one process up to floating-point summation order, and is bit-reproducible for a
fixed W on the same machine and build. Rank 0 writes the checkpoint; it loads like any other.

Consistency: every rank all-gathers its arguments (n, seed, sampler settings, schedule and a
fingerprint of the model weights; or the training config) and every rank raises the same
:class:`DistributedError` when they differ. Rendezvous and collectives are bounded by
``timeout`` (init_process_group); torchrun's own rendezvous by ``--rdzv_conf timeout=S``.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np

from ._io import OutputLock, atomic_open, crash_point, remove_stale_temps, reserve

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = 600.0  # s: rendezvous, init and the argument check
DEFAULT_FINISH_TIMEOUT = 7 * 24 * 3600.0  # s: how long a finished rank waits for the slowest one
SHARD_DIR_SUFFIX = ".shards"
# Test-only fault injection: "RANK:CALLS" makes that rank SIGKILL itself before its CALLS-th model
# call (tests/test_distributed.py kills a rank part-way through its shard with it).
KILL_ENV = "FASTDDPM_TEST_KILL_AFTER_CALLS"
_COPY_ROWS_BYTES = 64 << 20  # assembly copies shards in blocks of about this many bytes


class DistributedError(RuntimeError):
    """A launch, rendezvous or cross-rank consistency problem; the message says what to change."""


def launched() -> bool:
    """True when this process was started by torchrun (or with its environment variables)."""
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE"))


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedError(
            f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def shard_range(n: int, rank: int, world_size: int, block: int = 1) -> tuple[int, int]:
    """The global rows [a, b) of rank ``rank``: contiguous, in rank order, made of whole blocks.

    The ceil(n/block) blocks of ``block`` rows (the last one may be short) are split as evenly as
    possible (counts differ by ≤ 1); a rank gets no rows when there are fewer blocks than ranks.
    """
    blocks = -(-n // block)
    return (min(n, rank * blocks // world_size * block),
            min(n, (rank + 1) * blocks // world_size * block))


@dataclasses.dataclass
class RankContext:
    """This process's place in the job: rank, world size, device and process groups."""

    rank: int
    world_size: int
    local_rank: int
    device: object  # torch.device
    backend: str  # of the default group: "nccl" or "gloo"
    group: object  # gloo group for object collectives and barriers (None = the default group)
    timeout: float
    owns_group: bool  # init() created the default process group (close() destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, total: int, block: int = 1) -> tuple[int, int]:
        return shard_range(total, self.rank, self.world_size, block)

    # -- collectives ---------------------------------------------------------------------

    def all_gather(self, obj) -> list:
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def check_consistent(self, what: str, args: dict) -> None:
        """Raise the same DistributedError on every rank unless all ranks passed equal ``args``."""
        gathered = self.all_gather(_canonical(args))
        ref, diffs = gathered[0], []
        for r, theirs in enumerate(gathered[1:], start=1):
            for key in sorted(set(ref) | set(theirs)):
                if ref.get(key) != theirs.get(key):
                    diffs.append(f"{key}: rank 0 has {_short(ref.get(key))}, rank {r} has {_short(theirs.get(key))}")
        if diffs:
            more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
            raise DistributedError(
                f"the {self.world_size} ranks were given different {what} arguments; start every rank with the "
                f"same ones: " + "; ".join(diffs[:8]) + more)

    def wait_all(self, ok: bool, message: str = "", *, timeout: float | None = None) -> None:
        """Barrier that also exchanges success: raises on every rank if any rank failed.

        Waits at most ``timeout`` seconds (default: the finish timeout) for the slowest rank.
        """
        import torch.distributed as dist

        limit = DEFAULT_FINISH_TIMEOUT if timeout is None else float(timeout)
        try:
            # monitored_barrier (gloo) takes its own limit and names the ranks that did not arrive.
            dist.monitored_barrier(group=self.group, timeout=datetime.timedelta(seconds=limit),
                                   wait_all_ranks=True)
        except RuntimeError as exc:
            raise DistributedError(f"rank {self.rank}: not every rank arrived within {limit:g} s "
                                   f"(a rank died or is stuck): {_first_line(exc)}") from exc
        status = self.all_gather((bool(ok), message))
        failed = [(r, m) for r, (good, m) in enumerate(status) if not good]
        if failed:
            raise DistributedError("; ".join(f"rank {r} failed: {m}" for r, m in failed))

    def mean(self, tensor):
        """In-place average of a tensor over ranks on the default group (NCCL on GPU)."""
        import torch.distributed as dist

        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def barrier(self) -> None:
        self.wait_all(True)

    # -- training ------------------------------------------------------------------------

    def wrap(self, model):
        """``model`` in DistributedDataParallel (gradients averaged over ranks in backward)."""
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            return DistributedDataParallel(model, device_ids=[self.device], output_device=self.device)
        return DistributedDataParallel(model)

    def loss_weight(self, batch_size: int) -> float:
        """n_r·W/B: local-mean loss × this, averaged over ranks by DDP, is the full batch's mean loss.

        Exactly 1.0 when W divides B (so the loss is computed as in one process).
        """
        lo, hi = self.rows(batch_size)
        return (hi - lo) * self.world_size / batch_size

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _canonical(args: dict) -> dict:
    """JSON-normal form so that tuples/lists and numpy scalars compare equal across ranks."""
    return json.loads(json.dumps(args, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def resolve_device(device, local_rank: int):
    """None/"auto" → cuda:LOCAL_RANK when CUDA is available, else cpu; "cuda" → cuda:LOCAL_RANK."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu "
                                   "(gloo)")
        if device.index is None:
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise DistributedError(f"LOCAL_RANK {local_rank} has no GPU: this node has {count}; start at most "
                                       f"{count} processes per node (torchrun --nproc_per_node {count})")
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DistributedError(f"device must be 'cpu', 'cuda' or 'auto', got {str(device)!r}")
    return device


def init(device=None, *, timeout: float = DEFAULT_TIMEOUT) -> RankContext:
    """Join the job torchrun started: the default process group and a gloo coordination group.

    device: None/"auto" | "cpu" | "cuda" (→ cuda:LOCAL_RANK, NCCL). timeout: seconds for the
    rendezvous and for every collective of the default group; an unreachable MASTER_ADDR or a
    rank that never starts raises :class:`DistributedError` after about that long.
    """
    import torch.distributed as dist

    if not launched():
        raise DistributedError(
            "--distributed needs the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
            "MASTER_PORT); start with e.g. `torchrun --nproc_per_node 2 -m fastddpm ...`")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    device = resolve_device(device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = False
    td = datetime.timedelta(seconds=float(timeout))
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world:
            raise DistributedError("torch.distributed is already initialised with another rank/world size")
        backend = dist.get_backend()
    else:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        try:
            kwargs = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=td, **kwargs)
        except (RuntimeError, ValueError) as exc:  # DistNetworkError/DistStoreError are RuntimeErrors
            raise DistributedError(
                f"rank {rank} of {world}: could not join the process group at {where} within {timeout:g} s "
                f"({_first_line(exc)}). Check that all {world} processes are started (torchrun --nnodes / "
                f"--nproc_per_node) and that MASTER_ADDR:MASTER_PORT is reachable from this host; raise the "
                f"limit with --dist-timeout") from exc
        owns = True
    group = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=td)
    ctx = RankContext(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend,
                      group=group, timeout=float(timeout), owns_group=owns)
    _install_test_fault(ctx)
    return ctx


def _install_test_fault(ctx: RankContext) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    rank, calls = (int(v) for v in spec.split(":"))
    if rank == ctx.rank:
        ctx.kill_after_calls = calls


def _arm_test_fault(ctx: RankContext, model) -> None:
    """Test hook (see KILL_ENV): SIGKILL this rank before its N-th model call.

    It also makes the bulk writer record its progress after every batch (instead of every
    0.25 s), so the rows a killed shard has recorded are known to the test.
    """
    calls = getattr(ctx, "kill_after_calls", None)
    if calls is None:
        return
    from .sampling import bulk

    bulk.PROGRESS_EVERY_S = 0.0
    count = [0]

    def pre_hook(*_):
        count[0] += 1
        if count[0] >= calls:
            os.kill(os.getpid(), signal.SIGKILL)

    if hasattr(model, "register_forward_pre_hook"):
        model.register_forward_pre_hook(pre_hook)
    else:
        raise DistributedError(f"{KILL_ENV} works only with torch modules")


def add_distributed_arguments(parser, *, sampling: bool = False) -> None:
    """The --distributed flags shared by ``fastddpm sample`` and ``fastddpm train``."""
    group = parser.add_argument_group("distributed (start with torchrun; see docs/distributed.md)")
    group.add_argument("--distributed", action="store_true",
                       help="run as one rank of a torchrun job (gloo on CPU, NCCL with --device cuda: "
                            "each rank uses cuda:LOCAL_RANK)")
    group.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help="limit for the rendezvous and the cross-rank argument check")
    if sampling:
        group.add_argument("--keep-shards", action="store_true",
                           help="keep OUT.shards/ (one .npy per rank) after assembling OUT")


# -- sampling --------------------------------------------------------------------------------


def shard_dir(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + SHARD_DIR_SUFFIX)


def shard_path(out, rank: int, world_size: int) -> Path:
    return shard_dir(out) / f"rank-{rank:05d}-of-{world_size:05d}.npy"


def model_fingerprint(model) -> str:
    """SHA-256 over a torch module's state (names, dtypes, shapes, bytes); the type name otherwise."""
    h = hashlib.sha256()
    state = getattr(model, "state_dict", None)
    if state is None:
        h.update(type(model).__qualname__.encode())
        for attr in ("path", "model_path", "sha256"):
            if hasattr(model, attr):
                h.update(repr(getattr(model, attr)).encode())
        return h.hexdigest()
    for name, tensor in state().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _npy_header(path: Path):
    """(shape, dtype) of a complete .npy file, or None when it is missing or not a .npy."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            data_start = f.tell()
        if path.stat().st_size != data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            return None
        return tuple(shape), dtype
    except (OSError, ValueError):
        return None


def sample_distributed(model, schedule, n, *, out, seed=0, resume=False, overwrite=False, device=None,
                       ctx: RankContext | None = None, timeout: float = DEFAULT_TIMEOUT,
                       finish_timeout: float = DEFAULT_FINISH_TIMEOUT, keep_shards: bool = False,
                       progress: bool = True, **sample_kwargs):
    """Write samples 0 … n−1 of ``fastddpm.sample(model, schedule, n, seed=seed)`` into ``out``, over all ranks.

    Call it on every rank (under torchrun) with the same arguments. ``model`` may also be a
    :class:`fastddpm.Pipeline` (then ``schedule=None`` and the samples are de-normalised, as
    ``Pipeline.sample`` writes them). The ceil(n / batch_size) batches are split into W
    contiguous runs; rank r writes its rows [a_r, b_r) to ``OUT.shards/rank-r-of-W.npy`` with
    ``start=a_r`` and its own resume record, then rank 0 assembles ``out`` [n, *sample_shape] in
    order (temp file + rename) and removes the shards unless ``keep_shards``. Returns
    ``Path(out)`` on every rank, once the file exists.

    resume: continue the unfinished shards of a killed run (same n, seed, batch size, ranks).
    device: None/"auto" | "cpu" | "cuda" (each rank uses cuda:LOCAL_RANK); the model is moved there.
    ctx: an existing :class:`RankContext` (default: :func:`init` with ``timeout``).
    finish_timeout: seconds a finished rank waits for the others (a slow or resumed shard).
    Other keywords go to :func:`fastddpm.sample` / ``Pipeline.sample`` (sampler, steps, spacing,
    eta, batch_size, backend, dtype, …); all but backend/progress/cuda_graph must agree across ranks.
    """
    from .sampling import sample as sample_one
    from .sampling.bulk import paths as bulk_paths
    from .sampling.loop import _check_int
    from .sampling.models import model_kind
    from .sampling.pipeline import Pipeline

    for bad in ("start", "return_trajectory", "device"):
        if bad in sample_kwargs:
            raise ValueError(f"{bad}= cannot be passed to distributed sampling")
    n = _check_int(n, "n")
    if out is None:
        raise ValueError("out is required: distributed sampling writes a .npy file")
    out = bulk_paths(out)[0].absolute()
    pipe = model if isinstance(model, Pipeline) else None
    if pipe is not None:
        if schedule is not None:
            raise ValueError("pass schedule=None with a Pipeline (its schedule comes from the checkpoint)")
        model, schedule = pipe.model, pipe.schedule
        sample_kwargs.setdefault("sample_shape", pipe.sample_shape)
    own_ctx = ctx is None
    ctx = init(device, timeout=timeout) if own_ctx else ctx
    lock = None
    try:
        kind = model_kind(model)
        if kind == "torch":
            model.to(ctx.device)
        elif ctx.device.type != "cpu":
            raise DistributedError("a model with array_api == 'numpy' runs on the CPU; use device 'cpu'")
        batch_size = _batch_size(model, n, ctx.device, sample_kwargs)
        sample_kwargs["batch_size"] = batch_size
        ignored = ("backend", "progress", "cuda_graph")
        args = {
            "n": n, "seed": seed, "out": str(out), "resume": bool(resume), "overwrite": bool(overwrite),
            "world_size": ctx.world_size, "schedule": schedule.to_config() if hasattr(schedule, "to_config")
            else repr(schedule), "model": pipe.model_id if pipe is not None else model_fingerprint(model),
            **{k: v for k, v in sample_kwargs.items() if k not in ignored},
        }
        ctx.check_consistent("sampling", args)
        _arm_test_fault(ctx, model)

        # Rank 0 holds OUT.lock from here to the end of the assembly: a second job (or a
        # one-process run) on the same OUT refuses at once instead of clobbering shards.
        lock = OutputLock(out) if ctx.is_main else None
        if _prepare_output(ctx, out, n, resume=resume, overwrite=overwrite, lock=lock) == "done":
            return out
        shard_dir(out).mkdir(parents=True, exist_ok=True)  # rank 0 made it; other nodes may not share it
        a, b = ctx.rows(n, batch_size)
        shard = shard_path(out, ctx.rank, ctx.world_size)
        header = _npy_header(shard) if resume else None
        if b > a and not (header is not None and header[0][0] == b - a):
            common = dict(start=a, seed=seed, out=shard, resume=resume, overwrite=overwrite,
                          progress=progress and ctx.is_main, **sample_kwargs)
            try:
                if pipe is not None:
                    pipe.sample(b - a, device=ctx.device, **{k: v for k, v in common.items() if k != "sample_shape"})
                else:
                    sample_one(model, schedule, b - a, device=ctx.device if kind == "torch" else None, **common)
            except Exception as exc:  # every rank learns of it in wait_all; re-raised here
                _report_failure(ctx, f"{type(exc).__name__}: {exc}", finish_timeout)
                raise
        ctx.wait_all(True, timeout=finish_timeout)
        if ctx.is_main:
            try:
                assemble(out, n, ctx.world_size, batch_size, keep_shards=keep_shards, lock=False)
            except Exception as exc:
                _report_failure(ctx, f"assembling {out}: {type(exc).__name__}: {exc}", finish_timeout)
                raise
        ctx.wait_all(True, timeout=finish_timeout)
        return out
    finally:
        if lock is not None:
            lock.release()
        if own_ctx:
            ctx.close()


def _batch_size(model, n: int, device, sample_kwargs: dict) -> int:
    """The batch size every rank uses (the loop's default when not given).

    Shards are cut at multiples of it, so every rank runs exactly the batches one process would
    run: the noise never depends on the batching, but a network's float results can depend on
    the batch shape (BLAS/cuDNN pick kernels by size), and equal batches keep the file
    byte-identical to one process.
    """
    from .sampling.loop import _check_int, default_batch_size

    bs = sample_kwargs.get("batch_size")
    if bs is None:
        shape = sample_kwargs.get("sample_shape") or getattr(model, "sample_shape", None)
        if shape is None:
            raise ValueError("sample_shape is required (the shape of one sample, e.g. (2,) or (1, 28, 28)) "
                             "unless the model has a sample_shape attribute")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        bs = default_batch_size(int(np.prod(shape, dtype=np.int64)), device.type)
    return min(_check_int(bs, "batch_size"), n)


def _report_failure(ctx: RankContext, message: str, finish_timeout: float) -> None:
    """Tell the other ranks (waiting in wait_all) that this rank failed, so they raise too."""
    try:
        ctx.wait_all(False, message, timeout=finish_timeout)
    except DistributedError:
        pass


def _prepare_output(ctx: RankContext, out: Path, n: int, *, resume: bool, overwrite: bool, lock=None) -> str:
    """Rank 0 takes ``lock``, looks at ``out`` and the shard directory and tells every rank: "run" or "done"."""
    decision = ("run", "")
    if ctx.is_main:
        try:
            if lock is not None:
                lock.acquire()
            decision = (_output_state(out, n, ctx.world_size, resume=resume, overwrite=overwrite), "")
        except (OSError, ValueError) as exc:
            decision = ("error", f"{type(exc).__name__}: {exc}")
    decision = ctx.all_gather(decision)[0]
    if decision[0] == "error":
        raise DistributedError(f"rank 0 refused the output: {decision[1]}")
    return decision[0]


def _output_state(out: Path, n: int, world_size: int, *, resume: bool, overwrite: bool) -> str:
    shards = shard_dir(out)
    if out.exists() and not overwrite:
        if resume:
            header = _npy_header(out)
            if header is None or header[0][0] != n:
                raise FileExistsError(f"{out} exists but is not a complete [n={n}, …] .npy; pass overwrite=True "
                                      "(--overwrite) to replace it")
            return "done"
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it or resume=True "
                              "(--resume) to keep it")
    if shards.exists():
        others = sorted(p.name for p in shards.glob("rank-*-of-*.npy*")
                        if not p.name.split(".")[0].endswith(f"-of-{world_size:05d}"))
        if others and not overwrite:
            raise ValueError(f"{shards} holds shards of a run with another number of processes ({others[0]}); "
                             f"resume with the same number of ranks, or pass overwrite=True to start again")
        if not (resume or overwrite):
            raise FileExistsError(f"{shards} holds the shards of an unfinished run; pass resume=True (--resume) to "
                                  "continue it or overwrite=True (--overwrite) to start again")
        if overwrite:
            shutil.rmtree(shards)
    shards.mkdir(parents=True, exist_ok=True)
    return "run"


def assemble(out, n: int, world_size: int, block: int = 1, *, keep_shards: bool = False, lock: bool = True) -> Path:
    """Concatenate the W complete shards of ``out`` in rank order into ``out`` (temp file + rename).

    ``block``: the batch size the shards were cut with (see :func:`shard_range`). The temp file's
    space is reserved up front (a full disk is a clear ENOSPC error, not a SIGBUS) and filled
    with ``pwrite`` (:func:`fastddpm._io.atomic_open`: fsynced, renamed, the folder fsynced);
    the shards are removed only after the rename.
    ``lock``: hold ``OUT.lock`` meanwhile (sample_distributed already holds it).
    """
    out = Path(out)
    if lock:
        with OutputLock(out):
            return assemble(out, n, world_size, block, keep_shards=keep_shards, lock=False)
    bounds = [shard_range(n, r, world_size, block) for r in range(world_size)]
    parts = []
    for r in range(world_size):
        a, b = bounds[r]
        if b == a:
            continue
        path = shard_path(out, r, world_size)
        header = _npy_header(path)
        if header is None or header[0][0] != b - a:
            raise DistributedError(f"shard {path} is missing or incomplete (expected {b - a} samples); rerun with "
                                   "--resume")
        parts.append(np.load(path, mmap_mode="r"))
    shape, dtype = parts[0].shape[1:], parts[0].dtype
    for p in parts:
        if p.shape[1:] != shape or p.dtype != dtype:
            raise DistributedError(
                f"shards disagree on sample shape/dtype: {p.shape[1:]} {p.dtype} vs {shape} {dtype}")
    from .sampling.bulk import npy_header

    head = npy_header(dtype, (n,) + tuple(shape))
    row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    remove_stale_temps(out)  # of an assembly killed before its rename (we hold OUT.lock)
    try:
        with atomic_open(out, "wb", crash="assemble") as f:
            fd = f.fileno()
            reserve(fd, len(head) + n * row_bytes, out)
            crash_point("assemble.reserved")
            os.pwrite(fd, head, 0)
            step = max(1, _COPY_ROWS_BYTES // row_bytes)
            pos = len(head)
            for p in parts:
                for i in range(0, p.shape[0], step):
                    data = memoryview(np.ascontiguousarray(p[i:i + step]).reshape(-1).view(np.uint8))
                    while len(data):
                        wrote = os.pwrite(fd, data, pos)
                        data, pos = data[wrote:], pos + wrote
                crash_point("assemble.part_copied")
            os.fsync(fd)
            crash_point("assemble.synced")
        crash_point("assemble.renamed")
    finally:
        del parts
    if not keep_shards:
        shutil.rmtree(shard_dir(out), ignore_errors=True)
    return out


__all__ = ["DEFAULT_FINISH_TIMEOUT", "DEFAULT_TIMEOUT", "DistributedError", "RankContext", "assemble", "init",
           "launched", "model_fingerprint", "resolve_device", "sample_distributed", "shard_path", "shard_range"]
