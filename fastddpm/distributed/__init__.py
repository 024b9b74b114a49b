"""Several processes, GPUs or nodes under ``torchrun``: sharded bulk sampling and DDP training.

- :mod:`.context`: the process group (:func:`init`, :class:`RankContext`), for sampling and training;
- :mod:`.sharded`: :func:`sample_distributed` and the assembly of its shards.
"""
from .context import (DEFAULT_FINISH_TIMEOUT, DEFAULT_TIMEOUT, DistributedError, RankContext, init, launched,
                      resolve_device, shard_range)
from .sharded import assemble, sample_distributed, shard_dir, shard_path

__all__ = ["DEFAULT_FINISH_TIMEOUT", "DEFAULT_TIMEOUT", "DistributedError", "RankContext", "assemble", "init",
           "launched", "resolve_device", "sample_distributed", "shard_dir", "shard_path", "shard_range"]
