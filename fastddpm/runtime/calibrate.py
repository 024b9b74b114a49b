"""Measured choice of a network runtime, cached on disk per (model, machine, batch, libraries).

:func:`choose` times each candidate (a zero-argument callable that evaluates the network once
at the batch the sampler will use) in interleaved rounds, picks the one with the smallest
median, and writes the choice with its measurements to ``DIRECTORY/KEY.json``. The next run
with the same key reads the file and measures nothing.

The key (:func:`calibration_key`) is a SHA-256 of everything a choice depends on: the model's
identity (a digest of its weights), the batch shape, the candidate names, the machine (CPU
model, its instruction-set flags, the cores this process may use) and the versions of Python,
NumPy, onnxruntime, torch and fastddpm. A changed model, machine or library therefore never
reuses a stale choice — it has another file. A record is used only if it is a JSON object of
this format whose stored key and inputs equal the ones asked for and whose choice is one of the
candidates; anything else (a torn, edited or truncated file) is reported with a warning and
measured again. A candidate whose factory raises :class:`CandidateRejected` (the engine's ONNX
runtimes do when their output on the calibration batch does not match the torch module's) is
left out, with the reason in the record.

Two processes calibrating the same key at once: the first takes an exclusive ``flock`` on
``KEY.lock`` and measures; the second waits for that lock (at most ``LOCK_WAIT_S``), then
finds the first one's record and measures nothing (two measurements on the same cores would
also slow each other down and could pick wrongly). Records are written atomically (temp file,
then rename), so a reader never sees half a file.

No torch here (the module is part of :mod:`fastddpm.runtime`, which runs without it).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import sys
import time
import warnings

FORMAT = 1
LOCK_WAIT_S = 120.0  # a calibration takes ~1-3 s; a lock held longer than this is from a stuck process
DEFAULT_BUDGET_S = 1.0  # measured time per calibration, after one warm-up call per candidate
MIN_ROUNDS, MAX_ROUNDS = 3, 15
DROP_FACTOR = 5.0  # a candidate this much slower than the best after one round is out
ENV_VAR = "FASTDDPM_RUNTIME"


class CandidateRejected(Exception):
    """Raised by a candidate's factory when the runtime cannot be used for this model (its
    output does not match the reference, say): the candidate is left out and the reason recorded."""


class Choice:
    """The runtime chosen for a key: ``name``, ``source`` ("calibrated", "cached", "env" or
    "only"), ``seconds`` (median seconds per call of each candidate measured, {} if none),
    ``batch`` and ``path`` (the record file, None when nothing was measured or stored)."""

    def __init__(self, name: str, source: str, seconds: dict | None = None, batch: int | None = None,
                 path: str | None = None, load: float | None = None):
        self.name, self.source, self.seconds, self.batch, self.path, self.load = \
            name, source, dict(seconds or {}), batch, path, load

    def describe(self) -> str:
        """One line for the CLI: the choice, why, and the measured ms per call."""
        if self.source == "env":
            return f"network runtime: {self.name} (set by ${ENV_VAR})"
        if self.source == "only":
            return f"network runtime: {self.name}"
        times = ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        how = "measured now" if self.source == "calibrated" else "cached calibration"
        return (f"network runtime: {self.name} ({how}, per call at batch {self.batch}: {times}; "
                f"${ENV_VAR}=NAME overrides)")

    def __repr__(self) -> str:
        return f"Choice({self.name!r}, source={self.source!r}, seconds={self.seconds}, batch={self.batch})"


# -- the key ---------------------------------------------------------------------------------

def machine_fingerprint() -> dict:
    """The CPU (model name and a digest of its flags), the cores this process may use, and the
    platform; what a choice between runtimes depends on besides the model and the libraries."""
    model, flags = None, ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16], "cores": cores,
            "machine": platform.machine(), "system": platform.system()}


def library_versions() -> dict:
    """Versions of the libraries a runtime's speed depends on (None for one not installed)."""
    from .. import __version__

    versions = {"fastddpm": __version__, "python": platform.python_version()}
    for name in ("numpy", "onnxruntime", "torch", "onnx"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                from importlib.metadata import version

                versions[name] = version(name)
            except Exception:  # not installed
                versions[name] = None
        else:
            versions[name] = getattr(mod, "__version__", None)
    return versions


def calibration_inputs(model_id: str, batch_shape, candidates, extra: dict | None = None) -> dict:
    """Everything the key digests, as stored in the record (so a reader can check it)."""
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string (fastddpm.sampling.models.model_identity), "
                         f"got {model_id!r}")
    return {"model_id": model_id, "batch_shape": [int(s) for s in batch_shape], "candidates": sorted(candidates),
            "machine": machine_fingerprint(), "versions": library_versions(), "extra": extra or {}}


def calibration_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:32]


# -- the record ------------------------------------------------------------------------------

def read_record(path: str, key: str, inputs: dict, candidates) -> dict | None:
    """The record at ``path`` if it is a valid one for ``key``; None if there is none; a
    warning and None if it is damaged or belongs to other inputs."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        warnings.warn(f"cannot read the runtime calibration {path} ({exc}); measuring again", RuntimeWarning,
                      stacklevel=3)
        return None
    problem = None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        record, problem = None, f"not JSON ({exc})"
    if problem is None:
        if not isinstance(record, dict):
            problem = "not a JSON object"
        elif record.get("format") != FORMAT:
            problem = f"format {record.get('format')!r}, expected {FORMAT}"
        elif record.get("key") != key or record.get("inputs") != json.loads(json.dumps(inputs, default=str)):
            problem = "its key or inputs do not match its name"
        elif record.get("choice") not in candidates:
            problem = f"choice {record.get('choice')!r} is not one of {sorted(candidates)}"
        elif not isinstance(record.get("seconds"), dict) or not all(
                isinstance(v, (int, float)) and v > 0 for v in record["seconds"].values()):
            problem = "seconds is not a mapping of positive numbers"
    if problem is not None:
        warnings.warn(f"ignoring the damaged runtime calibration {path}: {problem}; measuring again",
                      RuntimeWarning, stacklevel=3)
        return None
    return record


@contextlib.contextmanager
def _locked(path: str, wait_s: float):
    """An exclusive flock on ``path`` (created), waiting up to ``wait_s``; yields whether it is held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only cache directory: measure unlocked (the write then warns)
        yield False
        return
    held = False
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
        yield held
    finally:
        if held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- measuring -------------------------------------------------------------------------------

def measure(runs: dict, budget_s: float = DEFAULT_BUDGET_S, min_rounds: int = MIN_ROUNDS,
            max_rounds: int = MAX_ROUNDS) -> dict:
    """name → list of seconds per call: one warm-up call each, then interleaved rounds (one
    call of every candidate per round, so load that comes and goes hits all alike) until
    ``budget_s`` is spent (at least ``min_rounds``, at most ``max_rounds``). A candidate more
    than ``DROP_FACTOR`` × slower than the best in the first round is not called again (torch's
    OpenMP pool on a loaded machine: ×10–50 per call, measured), so it cannot eat the budget."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    active = dict(runs)
    start = time.perf_counter()
    for r in range(max_rounds):
        for name, run in active.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
        if r == 0 and len(active) > 1:
            best = min(times[name][0] for name in active)
            active = {name: run for name, run in active.items() if times[name][0] <= DROP_FACTOR * best}
        if r + 1 >= min_rounds and time.perf_counter() - start >= budget_s:
            break
    return times


def _median(values) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def choose(candidates: dict, *, model_id: str, batch_shape, directory: str, extra: dict | None = None,
           budget_s: float = DEFAULT_BUDGET_S, force: bool = False) -> Choice:
    """The fastest of ``candidates`` (name → factory returning a zero-argument callable that
    evaluates the network once at ``batch_shape``), from the record for this key in
    ``directory`` or measured now and recorded there.

    ``$FASTDDPM_RUNTIME`` set to a candidate's name wins without measuring (an unknown name is
    a ValueError listing the candidates). ``force=True`` measures even when a record exists.
    """
    names = sorted(candidates)
    if not names:
        raise ValueError("candidates must name at least one runtime")
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env != "auto":
        if env not in candidates:
            raise ValueError(f"${ENV_VAR}={env!r} is not a runtime for this model here; use one of "
                             f"{', '.join(names)} (or unset it / set it to 'auto' to measure)")
        return Choice(env, "env", batch=int(batch_shape[0]))
    if len(names) == 1:
        return Choice(names[0], "only", batch=int(batch_shape[0]))
    inputs = calibration_inputs(model_id, batch_shape, names, extra)
    key = calibration_key(inputs)
    path = os.path.join(directory, f"{key}.json")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:  # a read-only or broken cache: measure, keep nothing
        warnings.warn(f"cannot create the runtime calibration directory {directory} ({exc}); measuring "
                      "without caching the choice", RuntimeWarning, stacklevel=2)
        return _from_record(_calibrate(candidates, names, key, inputs, budget_s), "calibrated", None)
    if not force:
        record = read_record(path, key, inputs, candidates)
        if record is not None:
            return _from_record(record, "cached", path)
    with _locked(os.path.join(directory, f"{key}.lock"), LOCK_WAIT_S):
        if not force:  # another process may have measured while this one waited for the lock
            record = read_record(path, key, inputs, candidates)
            if record is not None:
                return _from_record(record, "cached", path)
        record = _calibrate(candidates, names, key, inputs, budget_s)
        from .._io import write_json

        try:
            write_json(path, record, indent=1)
        except OSError as exc:
            warnings.warn(f"cannot write the runtime calibration {path} ({exc}); the choice is not cached",
                          RuntimeWarning, stacklevel=2)
            path = None
    return _from_record(record, "calibrated", path)


def _calibrate(candidates, names, key, inputs, budget_s) -> dict:
    """Measure the candidates; the record to store."""
    runs, rejected = {}, {}
    for name in names:
        try:
            runs[name] = candidates[name]()
        except CandidateRejected as exc:
            rejected[name] = str(exc)
            warnings.warn(f"runtime {name!r} left out: {exc}", RuntimeWarning, stacklevel=4)
    if not runs:
        raise RuntimeError(f"no runtime could be used: {rejected}")
    times = measure(runs, budget_s)
    seconds = {name: _median(v) for name, v in times.items()}
    choice = min(seconds, key=lambda n: seconds[n])
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {"format": FORMAT, "key": key, "inputs": json.loads(json.dumps(inputs, default=str)),
            "choice": choice, "seconds": seconds, "samples": times, "rejected": rejected,
            "load_avg_1m": load, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _from_record(record: dict, source: str, path: str) -> Choice:
    return Choice(record["choice"], source, record["seconds"], record["inputs"]["batch_shape"][0], path,
                  record.get("load_avg_1m"))


__all__ = ["CandidateRejected", "Choice", "ENV_VAR", "calibration_inputs", "calibration_key", "choose", "library_versions",
           "machine_fingerprint", "measure", "read_record"]
