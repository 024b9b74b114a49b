"""``SampleDataset``: :meth:`fastddpm.Pipeline.stream` as a ``torch.utils.data.IterableDataset``.

Sharding is by batch, so by sample index: the request's batches j = 0, 1, … (``batch_size``
samples each, the cut a single process makes) are dealt round-robin to the S = ranks × workers
shards, batch j to shard j mod S, where shard = rank · num_workers + worker id. So

- the union over every worker of every rank is exactly the samples one process would draw,
  each once, byte for byte (the noise is a pure function of (seed, sample index), and equal
  batches keep a network's float results equal too);
- a DataLoader on one rank, which takes its workers' items in turn, yields that rank's batches
  in increasing order, and with one rank and any number of workers, the request in order.

Items are :class:`~fastddpm.pipelines.pipeline.SampleBatch` ``(start, x)`` with x a torch tensor
(CPU sampling: a zero-copy view of the NumPy batch; CUDA sampling: the device tensor the loop made);
use ``DataLoader(dataset, batch_size=None)``, as the items are batches already. Each worker makes
its own onnxruntime session (:meth:`Pipeline.fresh`). A batch is computed when the iterator is
advanced: nothing runs ahead of the consumer but what DataLoader itself prefetches (its
``prefetch_factor`` per worker).
"""
from __future__ import annotations

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..sampling.options import check_int
from .pipeline import LabelledBatch, SampleBatch


class SampleDataset(IterableDataset):
    """Samples ``start`` … ``start + n − 1`` of ``pipeline`` in batches, sharded across DataLoader
    workers and torch.distributed ranks (see the module doc).

    rank, world_size: this process's place in a multi-process job; None reads them from
    torch.distributed when it is initialised (else one process). ``engine``, ``denormalize`` and
    the keywords: :meth:`fastddpm.Pipeline.stream`'s (checked here, before any worker starts).
    """

    def __init__(self, pipeline, n: int, *, batch_size: int | None = None, start: int = 0, rank: int | None = None,
                 world_size: int | None = None, engine: str = "auto", denormalize: bool = True, **kwargs):
        super().__init__()
        self.pipeline = pipeline
        self.n = check_int(n, "n")
        self.options = pipeline.stream_options(kwargs, batch_size, start)
        if (rank is None) != (world_size is None):
            raise ValueError("pass rank and world_size together (or neither, to read them from torch.distributed)")
        if world_size is not None:
            world_size = check_int(world_size, "world_size")
            rank = check_int(rank, "rank", 0)
            if rank >= world_size:
                raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        self.engine, self.denormalize = engine, denormalize

    def place(self) -> tuple[int, int]:
        """(rank, world size) of this process: the given ones, else torch.distributed's, else (0, 1)."""
        if self.world_size is not None:
            return self.rank, self.world_size
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def shard(self) -> tuple[int, int]:
        """(this iterator's shard, the number of shards): rank · workers + worker id, ranks × workers."""
        rank, world = self.place()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return rank * workers + worker, world * workers

    def __iter__(self):
        shard, shards = self.shard()
        # in a worker: its own sessions (an onnxruntime session does not survive a fork)
        pipeline = self.pipeline if get_worker_info() is None else self.pipeline.fresh()
        stream = pipeline._stream(self.n, self.options, engine=self.engine, denormalize=self.denormalize,
                                  batches=lambda count: range(shard, count, shards))
        for batch in stream:
            x = batch.x
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
            if isinstance(batch, LabelledBatch):
                yield LabelledBatch(batch.start, x, torch.from_numpy(batch.labels))
            else:
                yield SampleBatch(batch.start, x)


__all__ = ["SampleDataset"]
