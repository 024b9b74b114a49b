"""Repeated two-rank runs of the torchrun paths, counting ranks that do not exit as the CLI means.

    python bench/distributed_exit.py [--repeats 20] [--load 2] [--paths error,resume,ddp]

Issue 27: ranks died of SIGABRT at exit ("terminate called without an active exception") in
about 1 of 20 error-path runs on a loaded 2-core machine, after their work was done. Each
repeat here runs, as real processes with the environment torchrun sets (one thread per rank):

- error:  two ranks given different --n/--seed → every rank must exit 2 with its one-line error;
- resume: a run whose rank 1 kills itself (SIGKILL) part-way, then ``--resume`` → the resumed
          ranks must exit 0 and the file must equal the one-process file;
- ddp:    ``fastddpm train --distributed`` (6 iterations) → both ranks exit 0.

Any other exit code (−6 is the abort) counts as non-clean and its stderr tail is printed.
``--load N`` runs N busy-looping processes meanwhile (the abort was a race, likelier when the
ranks compete for cores). Prints per path: runs, non-clean exits, seconds.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
T = 20
KILL_ENV = "FASTDDPM_TEST_KILL_AFTER_CALLS"  # tests/_kill_rank.py: "RANK:CALLS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, port: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _two_ranks(per_rank_args, module="fastddpm", extra_env=None, timeout=180):
    """Start rank 0 and rank 1 (args per rank), wait; [(returncode, stderr)]."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", module, *map(str, args)],
                              env=_env(rank, port, **(extra_env or {})), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
             for rank, args in enumerate(per_rank_args)]
    return [(p.wait(timeout=timeout), p.stderr.read()) for p in procs]


def _checkpoint(root: Path) -> Path:
    import torch

    import fastddpm
    from fastddpm import checkpoint
    from fastddpm.data import Normalization
    from fastddpm.nets import MLP

    torch.manual_seed(0)
    path = root / "ckpt"
    checkpoint.save(path, MLP(dim=2, width=16, depth=1, num_steps=T), fastddpm.Schedule.linear(T),
                    normalization=Normalization([1.0, -2.0], [2.0, 0.5]))
    return path


def run_error(ckpt: Path, work: Path):
    out = work / "x.npy"
    args = [["sample", ckpt, "--n", 21 + r, "--seed", 7 + r, "--out", out, "--distributed", "--dist-timeout", 60,
             "--quiet"] for r in (0, 1)]
    return [(rc, err, 2) for rc, err in _two_ranks(args)]


def run_resume(ckpt: Path, work: Path, reference: bytes):
    out = work / "x.npy"
    base = ["sample", ckpt, "--n", 23, "--batch-size", 4, "--seed", 7, "--out", out, "--distributed",
            "--engine", "torch", "--dist-timeout", 60, "--quiet"]
    killed = _two_ranks([base, base], module="_kill_rank", extra_env={KILL_ENV: f"1:{2 * T + 5}"})
    # rank 1 is SIGKILLed (−9) by design; rank 0 then fails its finish barrier (2)
    results = [(killed[0][0], killed[0][1], 2), (killed[1][0], killed[1][1], -9)]
    again = _two_ranks([base + ["--resume"]] * 2)
    results += [(rc, err, 0) for rc, err in again]
    if out.read_bytes() != reference:
        results.append((-1, "resumed file differs from the one-process file", 0))
    return results


def run_ddp(work: Path):
    args = ["train", "--dataset", "moons", "--n", 256, "--iters", 6, "--batch-size", 15, "--seed", 3,
            "--num-steps", T, "--width", 16, "--depth", 2, "--quiet", "--out", work / "ddp", "--distributed",
            "--dist-timeout", 60]
    return [(rc, err, 0) for rc, err in _two_ranks([args, args])]


def _spin(stop):
    while not stop.is_set():
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes meanwhile")
    ap.add_argument("--paths", default="error,resume,ddp")
    args = ap.parse_args(argv)
    paths = args.paths.split(",")
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for s in spinners:
        s.start()
    bad_total = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            ckpt = _checkpoint(root)
            ref = root / "single.npy"
            subprocess.run([sys.executable, "-m", "fastddpm", "sample", ckpt, "--n", "23", "--batch-size", "4",
                            "--seed", "7", "--out", ref, "--quiet", "--engine", "torch"], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
            reference = ref.read_bytes()
            print(f"{'path':8s} {'runs':>5s} {'ranks':>6s} {'non-clean':>9s} {'s':>7s}")
            for path in paths:
                tic, bad, ranks = time.perf_counter(), 0, 0
                for i in range(args.repeats):
                    work = root / f"{path}-{i}"
                    work.mkdir()
                    if path == "error":
                        results = run_error(ckpt, work)
                    elif path == "resume":
                        results = run_resume(ckpt, work, reference)
                    elif path == "ddp":
                        results = run_ddp(work)
                    else:
                        raise SystemExit(f"--paths: unknown path {path!r} (error, resume, ddp)")
                    for rc, err, want in results:
                        ranks += 1
                        if rc != want:
                            bad += 1
                            tail = "\n    ".join(err.strip().splitlines()[-3:])
                            print(f"  {path} run {i}: exit {rc}, expected {want}:\n    {tail}", flush=True)
                took = time.perf_counter() - tic
                bad_total += bad
                print(f"{path:8s} {args.repeats:5d} {ranks:6d} {bad:9d} {took:7.1f}", flush=True)
    finally:
        stop.set()
        for s in spinners:
            s.join()
    print(f"load average now: {open('/proc/loadavg').read().split()[:3]}" if os.path.exists("/proc/loadavg") else "")
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
