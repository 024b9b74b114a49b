"""Test helper: ``python -m _kill_rank ARGS`` is ``python -m fastddpm ARGS`` in a rank that
SIGKILLs itself before its N-th model call (tests/test_distributed.py kills a rank part-way
through its shard with it; torchrun starts it with ``-m _kill_rank`` and tests/ on PYTHONPATH).

KILL_ENV = "RANK:CALLS" picks the rank and the call. That rank also records its bulk progress
after every batch (instead of every 0.25 s), so the rows a killed shard has recorded are known
to the test. The call counter is a forward pre-hook on the network of the loaded checkpoint, so
the run must use the torch engine (``--engine torch``).
"""
import os
import signal
import sys

KILL_ENV = "FASTDDPM_TEST_KILL_AFTER_CALLS"


def _arm(calls: int) -> None:
    from fastddpm import checkpoint
    from fastddpm.sampling import bulk

    bulk.PROGRESS_EVERY_S = 0.0
    real_load, count = checkpoint.load, [0]

    def pre_hook(*_):
        count[0] += 1
        if count[0] >= calls:
            os.kill(os.getpid(), signal.SIGKILL)

    def load(*args, **kwargs):
        ckpt = real_load(*args, **kwargs)
        ckpt.model.register_forward_pre_hook(pre_hook)
        return ckpt

    checkpoint.load = load


if __name__ == "__main__":
    rank, calls = (int(v) for v in os.environ[KILL_ENV].split(":"))
    if int(os.environ["RANK"]) == rank:
        _arm(calls)
    from fastddpm.cli import main

    sys.exit(main())  # exactly what ``python -m fastddpm`` runs
