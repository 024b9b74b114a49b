"""Sharded bulk sampling over the ranks of a torchrun job, and the assembly of the shards.

    torchrun --nproc_per_node 4 -m fastddpm sample CKPT --n 1000000 --out x.npy --distributed

:func:`sample_distributed`: the ceil(n / batch_size) batches of the request are split into W
contiguous runs; rank r samples its global indices [a_r, b_r) with the same loop and ``.npy``
writer as one process (``start=a_r``, ``out=shard``), so sample s gets its noise at global
offset s·D, every batch is the batch one process would run, and the union of the shards is bit
for bit what one process writes for the same seed and batch size (the noise alone would not need
the batch grid; a network's float results can). Each shard is a complete ``.npy`` with its own
resume record in ``OUT.shards/``; once all ranks report success, rank 0 copies the shards in
order into a temporary file, renames it to OUT (atomic), and removes the shard directory.
``resume=True`` continues every unfinished shard and re-does a killed assembly. Every rank
checks that all ranks were given the same arguments (n, seed, sampler settings, schedule and the
model's identity) before sampling.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .._io import OutputLock, atomic_open, crash_point, remove_stale_temps, reserve
from ..labels import describe as describe_labels
from ..sampling.bulk import complete_npy_header, labels_paths, npy_header, paths as bulk_paths
from ..sampling.loop import execute
from ..sampling.models import model_identity, model_kind
from ..sampling.options import SamplingOptions, check_int
from ..pipelines import Pipeline
from .context import DEFAULT_FINISH_TIMEOUT, DEFAULT_TIMEOUT, DistributedError, RankContext, init, shard_range

SHARD_DIR_SUFFIX = ".shards"
_COPY_ROWS_BYTES = 64 << 20  # assembly copies shards in blocks of about this many bytes
# Options every rank may set on its own (they do not change the samples).
_RANK_LOCAL = ("backend", "progress", "cuda_graph")


def shard_dir(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + SHARD_DIR_SUFFIX)


def shard_path(out, rank: int, world_size: int) -> Path:
    return shard_dir(out) / f"rank-{rank:05d}-of-{world_size:05d}.npy"


def sample_distributed(model, schedule, n, *, out, device=None, ctx: RankContext | None = None,
                       timeout: float = DEFAULT_TIMEOUT, finish_timeout: float = DEFAULT_FINISH_TIMEOUT,
                       keep_shards: bool = False, engine: str = "auto", **options):
    """Write samples 0 … n−1 of ``fastddpm.sample(model, schedule, n, seed=seed)`` into ``out``, over all ranks.

    Call it on every rank (under torchrun) with the same arguments. ``model`` may also be a
    :class:`fastddpm.Pipeline` (then ``schedule=None``, the samples are de-normalised as
    ``Pipeline.sample`` writes them, and ``engine`` is its engine). The ceil(n / batch_size)
    batches are split into W contiguous runs; rank r writes its rows [a_r, b_r) to
    ``OUT.shards/rank-r-of-W.npy`` with ``start=a_r`` and its own resume record, then rank 0
    assembles ``out`` [n, *sample_shape] in order (temp file + rename) and removes the shards
    unless ``keep_shards``. Returns ``Path(out)`` on every rank, once the file exists.

    device: None/"auto" | "cpu" | "cuda" (each rank uses cuda:LOCAL_RANK); the model is moved there.
    ctx: an existing :class:`RankContext` (default: :func:`init` with ``timeout``).
    finish_timeout: seconds a finished rank waits for the others (a slow or resumed shard).
    Other keywords are :func:`fastddpm.sample`'s (seed, sampler, steps, spacing, eta, batch_size,
    backend, dtype, resume — continue the unfinished shards of a killed run with the same n,
    seed, batch size and ranks —, overwrite, …); all but backend/progress/cuda_graph must agree
    across ranks.
    """
    for bad in ("start", "return_trajectory"):
        if bad in options:
            raise ValueError(f"{bad}= cannot be passed to distributed sampling")
    n = check_int(n, "n")
    if out is None:
        raise ValueError("out is required: distributed sampling writes a .npy file")
    out = bulk_paths(out)[0].absolute()
    options = {**options, "out": out}  # resume/overwrite are checked against it; each rank writes its shard
    pipe = model if isinstance(model, Pipeline) else None
    if pipe is not None:
        if schedule is not None:
            raise ValueError("pass schedule=None with a Pipeline (its schedule comes from the checkpoint)")
        model, schedule = pipe.model, pipe.schedule
        opts = pipe.options(options)
        shape = pipe.sample_shape
    else:
        if engine != "auto":
            raise TypeError("engine= applies to a Pipeline; a bare model runs as it is")
        opts = SamplingOptions.from_kwargs(options, where="sample_distributed")
        shape = opts.resolved_shape(model)
    own_ctx = ctx is None
    ctx = init(device, timeout=timeout) if own_ctx else ctx
    lock = None
    try:
        kind = model_kind(model)
        if kind == "torch":
            model.to(ctx.device)
        elif ctx.device.type != "cpu":
            raise DistributedError("a model with array_api == 'numpy' runs on the CPU; use device 'cpu'")
        # Shards are cut at multiples of the batch size, so every rank runs exactly the batches
        # one process would run: the noise never depends on the batching, but a network's float
        # results can depend on the batch shape (BLAS/cuDNN pick kernels by size), and equal
        # batches keep the file byte-identical to one process.
        batch_size = opts.resolved_batch_size(int(np.prod(shape, dtype=np.int64)), n, ctx.device.type)
        opts = opts.replace(batch_size=batch_size)
        args = {
            "n": n, "out": str(out), "world_size": ctx.world_size,
            "schedule": schedule.to_config() if hasattr(schedule, "to_config") else repr(schedule),
            "model": pipe.model_id if pipe is not None else model_identity(model),
            **{k: getattr(opts, k) for k in opts.names() if k not in _RANK_LOCAL and k not in ("out", "labels")},
            "labels": describe_labels(opts.labels),  # an array of n labels by its digest
        }
        if isinstance(opts.labels, np.ndarray) and opts.labels.shape[0] != n:
            raise ValueError(f"labels has {opts.labels.shape[0]} entries but n = {n}: give one label per sample")
        ctx.check_consistent("sampling", args)

        # Rank 0 holds OUT.lock from here to the end of the assembly: a second job (or a
        # one-process run) on the same OUT refuses at once instead of clobbering shards.
        lock = OutputLock(out) if ctx.is_main else None
        if _prepare_output(ctx, out, n, resume=opts.resume, overwrite=opts.overwrite, lock=lock) == "done":
            return out
        shard_dir(out).mkdir(parents=True, exist_ok=True)  # rank 0 made it; other nodes may not share it
        a, b = ctx.rows(n, batch_size)
        shard = shard_path(out, ctx.rank, ctx.world_size)
        header = complete_npy_header(shard) if opts.resume else None
        labelled = opts.labels is not None
        if labelled and header is not None:  # a labelled shard is complete with its labels file
            lab = complete_npy_header(labels_paths(shard)[0])
            header = header if lab is not None and lab[0][0] == b - a else None
        if b > a and not (header is not None and header[0][0] == b - a):
            # an array of labels is cut like the rows; drawn labels follow the global index (start=a)
            mine = opts.replace(start=a, out=shard, progress=opts.progress and ctx.is_main,
                                device=ctx.device if kind == "torch" else None,
                                labels=opts.labels[a:b] if isinstance(opts.labels, np.ndarray) else opts.labels)
            try:
                if pipe is not None:
                    pipe.run(b - a, mine, engine=engine)
                else:
                    execute(model, schedule, b - a, mine)
            except Exception as exc:  # every rank learns of it in wait_all; re-raised here
                _report_failure(ctx, f"{type(exc).__name__}: {exc}", finish_timeout)
                raise
        ctx.wait_all(True, timeout=finish_timeout)
        if ctx.is_main:
            try:
                assemble(out, n, ctx.world_size, batch_size, keep_shards=keep_shards, lock=False,
                         labels=opts.labels is not None)
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
            header = complete_npy_header(out)
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


def assemble(out, n: int, world_size: int, block: int = 1, *, keep_shards: bool = False, lock: bool = True,
             labels: bool = False) -> Path:
    """Concatenate the W complete shards of ``out`` in rank order into ``out`` (temp file + rename).

    ``block``: the batch size the shards were cut with (see :func:`shard_range`). The temp file's
    space is reserved up front (a full disk is a clear ENOSPC error, not a SIGBUS) and filled
    with ``pwrite`` (:func:`fastddpm._io.atomic_open`: fsynced, renamed, the folder fsynced);
    the shards are removed only after the rename.
    ``lock``: hold ``OUT.lock`` meanwhile (sample_distributed already holds it).
    ``labels``: the shards have labels sidecars; ``OUT.labels.npy`` is assembled the same way,
    first (as a one-process run renames its labels first).
    """
    out = Path(out)
    if lock:
        with OutputLock(out):
            return assemble(out, n, world_size, block, keep_shards=keep_shards, lock=False, labels=labels)
    if labels:
        _concatenate(labels_paths(out)[0], n, world_size, block,
                     lambda r: labels_paths(shard_path(out, r, world_size))[0])
    _concatenate(out, n, world_size, block, lambda r: shard_path(out, r, world_size))
    if not keep_shards:
        shutil.rmtree(shard_dir(out), ignore_errors=True)
    return out


def _concatenate(out: Path, n: int, world_size: int, block: int, shard_of) -> None:
    """The complete .npy shards ``shard_of(r)`` in rank order into ``out`` (temp file + rename)."""
    bounds = [shard_range(n, r, world_size, block) for r in range(world_size)]
    parts = []
    for r in range(world_size):
        a, b = bounds[r]
        if b == a:
            continue
        path = shard_of(r)
        header = complete_npy_header(path)
        if header is None or header[0][0] != b - a:
            raise DistributedError(f"shard {path} is missing or incomplete (expected {b - a} samples); rerun with "
                                   "--resume")
        parts.append(np.load(path, mmap_mode="r"))
    shape, dtype = parts[0].shape[1:], parts[0].dtype
    for p in parts:
        if p.shape[1:] != shape or p.dtype != dtype:
            raise DistributedError(
                f"shards disagree on sample shape/dtype: {p.shape[1:]} {p.dtype} vs {shape} {dtype}")
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
