"""The process group of a torchrun job: this rank's place, device and collectives.

Launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Each
process is one *rank*; rank r uses ``cuda:LOCAL_RANK`` with NCCL when it asks for a CUDA device
(``device="cuda"``/"auto" on a CUDA machine) and the CPU with gloo otherwise. The coordination
collectives (argument check, "all done") always run on gloo: they move a few bytes of Python
objects, and gloo's monitored barrier can wait hours for a slow rank with a per-call limit,
where an NCCL collective would trip the watchdog.

Consistency: :meth:`RankContext.check_consistent` all-gathers every rank's arguments and raises
the same :class:`DistributedError` on every rank when they differ. Rendezvous and collectives
are bounded by ``timeout`` (init_process_group); torchrun's own rendezvous by
``--rdzv_conf timeout=S``.

Training (:class:`RankContext` passed to ``fastddpm.train(..., distributed=…)``): iteration it
draws the same global batch (indices, time steps) as a single-process run with the same seed;
rank r takes rows [r·B // W, (r+1)·B // W) and their forward noise at the global offsets
(row·D in the iteration's stream), weights its local mean loss by n_r·W/B, and DDP's gradient
average then equals the gradient of the full batch's mean loss. So a W-rank run makes the same
updates as one process up to floating-point summation order, and is bit-reproducible for a
fixed W on the same machine and build. Rank 0 writes the checkpoint; it loads like any other.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = 600.0  # s: rendezvous, init and the argument check
DEFAULT_FINISH_TIMEOUT = 7 * 24 * 3600.0  # s: how long a finished rank waits for the slowest one


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
        """Destroy the process groups init() created (every group, the gloo one included).

        Nothing of fastddpm may hold a group afterwards: a group that outlives this call keeps
        its gloo worker threads alive into interpreter finalization (see :func:`init`).
        """
        import torch.distributed as dist

        self.group = None
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


def _import_group_capturing_modules() -> None:
    """Import, before the default group exists, the torch modules that capture it at import time.

    torch/distributed/nn/functional.py declares ten functions with ``group=group.WORLD`` as a
    default argument, evaluated when the module is imported. Imported while a process group
    exists — torch._dynamo imports it, and dynamo is imported on first use of the meta device
    (``fastddpm.checkpoint`` counts a model's size there), torch.compile or the ONNX exporter —
    those defaults hold the default ProcessGroupGloo for the life of the process, so
    ``destroy_process_group()`` leaves its worker threads running. At exit such a thread
    destroys its last AsyncAllgatherWork (all_gather_object), whose tensor decref takes the GIL
    during finalization; CPython then ends the thread with pthread_exit, whose forced unwind
    through a noexcept frame calls std::terminate: "terminate called without an active
    exception", SIGABRT, in 2 of 50 two-rank runs on a loaded 2-core EPYC (issue 27; core dump:
    ProcessGroupGloo::runLoop → ~AsyncAllgatherWork → TensorImpl::decref_pyobject →
    take_gil → PyThread_exit_thread). Imported now, while group.WORLD is None, the defaults
    hold None and the group dies in destroy_process_group(), threads joined. Upstream: the
    abort of gloo threads outliving the interpreter is pytorch/pytorch#190489 (and the
    abandoned atexit fix pytorch/pytorch#179291); the import-time capture itself has no issue
    of its own yet.
    """
    import torch.distributed.nn.functional  # noqa: F401


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
        _import_group_capturing_modules()
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
    return ctx
