"""Bulk sampling to a ``.npy`` file: chunked, resumable, and atomic.

Layout while a run is in progress, for ``out = "samples.npy"``:
- ``samples.npy.partial``: the full-size ``.npy`` (made with ``np.lib.format.open_memmap``),
  filled batch by batch through a memory map of that batch's rows only (mapped, written,
  flushed, unmapped: resident memory stays bounded by the batch size, not by n);
- ``samples.npy.progress.json``: ``{"done": s, "settings": {...}}``, replaced atomically after
  the rows [0, s) were flushed. ``done`` only ever counts flushed rows.

``resume=True`` checks that the settings match (everything that changes the samples; the batch
size does not) and continues at row ``done``; since sample s depends only on (seed, s) the
result is byte-identical to an uninterrupted run. On completion the partial file is fsynced and
renamed to ``out`` and the progress record removed, so ``out`` never holds a half file.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

# Write the progress record at most this often (each write is a small file + rename); a
# resumed run redoes at most the batches finished in this window.
PROGRESS_EVERY_S = 0.25
PROGRESS_VERSION = 1


def _digest(arr) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def run_settings(run) -> dict:
    """Everything that determines the samples of a run (JSON-serialisable)."""
    plan = run.plan
    return {
        "version": PROGRESS_VERSION,
        "n": run.n,
        "sample_shape": list(run.shape),
        "dtype": run.dtype.name,
        "sampler": plan.sampler,
        "timesteps": _digest(plan.t),
        "num_steps": plan.num_steps,
        "coefficients": _digest(plan.coef),
        "prediction": plan.prediction,
        "variance": plan.variance,
        "eta": plan.eta,
        "clip": plan.clip,
        "seed": run.seed,
        "schedule": _digest(np.asarray(run.schedule.betas, dtype=np.float64)),
        "model": getattr(run, "model_id", None),
    }


def paths(out) -> tuple[Path, Path, Path]:
    """(final, partial, progress) paths for an output name ending in .npy."""
    final = Path(os.fspath(out))
    if final.suffix != ".npy":
        raise ValueError(f"out must be a path ending in .npy, got {str(final)!r}")
    return final, final.with_name(final.name + ".partial"), final.with_name(final.name + ".progress.json")


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_progress(out) -> dict | None:
    """The progress record of an unfinished run writing ``out`` (None when there is none)."""
    _, _, progress = paths(out)
    try:
        with open(progress) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"the progress record {progress} is unreadable ({exc}); delete it and "
                         f"{progress.name[:-len('.progress.json')]}.partial to start over") from exc


def write_samples(run, out, *, resume: bool = False, overwrite: bool = False, postprocess=None) -> str:
    """Run ``run`` (a SamplingRun) into the .npy file ``out``; returns its path.

    ``postprocess``: applied to each batch (a host array) before it is written, e.g. the
    checkpoint's de-normalisation; it takes part in the resume check through ``run.model_id``.
    """
    final, partial, progress = paths(out)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (a finished run); pass overwrite=True "
                              "(--overwrite) to replace it, or choose another name")
    if not final.parent.is_dir():
        raise FileNotFoundError(f"the directory of out, {final.parent}, does not exist")
    settings = run_settings(run)
    done = 0
    record = read_progress(out) if resume else None
    if record is not None and partial.exists():
        old = record.get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ValueError(f"cannot resume {final}: the unfinished run used different settings ({', '.join(diff)}); "
                             "run with the same settings, or without resume to start over")
        done = int(record["done"])
    else:
        created = np.lib.format.open_memmap(partial, mode="w+", dtype=run.dtype, shape=(run.n,) + run.shape)
        del created  # unmapped: the file is sparse until rows are written
        _write_json_atomic(progress, {"done": 0, "settings": settings})

    pbar = run.progress_bar(run.n - done)
    last_write = time.monotonic()
    try:
        for s0 in range(done, run.n, run.batch_size):
            s1 = min(run.n, s0 + run.batch_size)
            x = run.run_batch(s0, s1, pbar=pbar)
            if not isinstance(x, np.ndarray):  # a torch tensor of the torch/CUDA path
                x = x.detach().cpu().numpy()
            if postprocess is not None:
                x = postprocess(x)
            rows = np.load(partial, mmap_mode="r+")
            rows[s0:s1] = x
            rows.flush()
            del rows  # unmap, so resident memory does not grow with n
            now = time.monotonic()
            if now - last_write >= PROGRESS_EVERY_S or s1 == run.n:
                _write_json_atomic(progress, {"done": s1, "settings": settings})
                last_write = now
    finally:
        if pbar is not None:
            pbar.close()
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    progress.unlink(missing_ok=True)
    return str(final)
