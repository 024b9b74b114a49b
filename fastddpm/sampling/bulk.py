"""Bulk sampling to a ``.npy`` file: chunked, resumable, atomic, locked, and checked.

Layout while a run is in progress, for ``out = "samples.npy"``:
- ``samples.npy.lock``: an exclusive ``flock`` held for the whole run (fastddpm._io.OutputLock):
  a second run on the same ``out`` refuses at once, naming the pid that writes it;
- ``samples.npy.partial``: the full-size ``.npy``, its space reserved up front with
  ``posix_fallocate`` (a full disk is a clear ENOSPC error before sampling, never a SIGBUS),
  filled batch by batch with ``pwrite`` (resident memory stays bounded by the batch size);
- ``samples.npy.progress.json``: the progress record, replaced atomically after the rows
  [0, done) were written and fdatasynced. It holds ``done``, the settings the samples depend on,
  a CRC-32 per chunk of rows done (``chunk_rows`` rows, about CHUNK_BYTES each) plus one for the
  rows of the unfinished chunk, the partial's size and header length, and ``tag``: a SHA-256
  over all of it.

``resume=True`` checks, before writing anything: the record parses, its tag matches (not edited
or torn), its fields have the right types and ranges (0 ≤ done ≤ n), the settings match
(everything that changes the samples; the batch size does not), the partial has exactly the
expected size and ``.npy`` header, and the rows claimed done match their checksums. Any failure
refuses with what is damaged and how to start over (``overwrite=True`` / ``--overwrite``). It
then continues at row ``done``; since sample s depends only on (seed, s) the result is
byte-identical to an uninterrupted run. On completion the partial is fsynced and renamed to
``out`` and then the record removed, so ``out`` never holds a half file.

An unfinished run (a progress record) is never discarded silently: without ``resume`` it takes
``overwrite=True`` to start over.

Labels (a request that gives labels, fastddpm.labels): ``samples.labels.npy`` beside the samples,
int64 [n] aligned with their rows, written by the same rules — ``samples.labels.npy.partial``
reserved up front and filled batch by batch, its CRC-32s and geometry in the same progress record
(``labels``), fdatasynced before the record claims the rows, checked row for row on resume. At
the end the labels are renamed into place first, then the samples: a kill between the two
renames leaves ``samples.labels.npy`` beside the partial and its record, and ``resume`` moves it
back to its partial (its checksums decide) before continuing. ``overwrite`` of a run without
labels removes a ``.labels.npy`` left by an earlier labelled run (it would describe other rows).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
import zlib
from pathlib import Path

import numpy as np

from .._io import OutputLock, _no_space, check_space, crash_point, fsync_dir, remove_stale_temps, reserve, write_json

# Write the progress record at most this often (each write is a small file + rename, after an
# fdatasync of the rows); a resumed run redoes at most the batches finished in this window.
PROGRESS_EVERY_S = 0.25
PROGRESS_VERSION = 2
# Rows per checksum chunk: about this many bytes, so a 40 GB file has ~2400 CRCs in its record.
# zlib.crc32 measured 1.56 GB/s on the 2-core EPYC (16 MiB of float32, median of 7, test suite
# running beside it), so checksumming costs ~0.6 ms per MB written (sampling a MB of butterfly
# samples takes seconds) and resume verification reads the done rows once.
CHUNK_BYTES = 16 << 20


class ResumeError(ValueError):
    """The state of an unfinished run cannot be trusted; the message says what and how to start over."""


def _digest(arr) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def run_settings(run) -> dict:
    """Everything that determines the samples of a run (JSON-serialisable)."""
    plan = run.plan
    cond = getattr(run, "cond", None)
    extra = cond.settings() if cond is not None else {}
    return {
        **({"conditioning": extra} if extra else {}),
        "version": PROGRESS_VERSION,
        "n": run.n,
        "start": run.start,
        "sample_shape": list(run.shape),
        "dtype": run.dtype.name,
        **plan.settings(),
        "timesteps": _digest(plan.t),
        "num_steps": plan.num_steps,
        "coefficients": _digest(plan.coef),
        "seed": run.seed,
        "schedule": _digest(np.asarray(run.schedule.betas, dtype=np.float64)),
        "model": getattr(run, "model_id", None),
    }


LABELS_SUFFIX = ".labels.npy"
LABEL_DTYPE = np.dtype(np.int64)


def labels_paths(out) -> tuple[Path, Path]:
    """(final, partial) of the labels sidecar of ``out``: samples.npy → samples.labels.npy."""
    final, _, _ = paths(out)
    side = final.with_name(final.name[:-len(".npy")] + LABELS_SUFFIX)
    return side, side.with_name(side.name + ".partial")


def paths(out) -> tuple[Path, Path, Path]:
    """(final, partial, progress) paths for an output name ending in .npy."""
    final = Path(os.fspath(out))
    if final.suffix != ".npy":
        raise ValueError(f"out must be a path ending in .npy, got {str(final)!r}")
    return final, final.with_name(final.name + ".partial"), final.with_name(final.name + ".progress.json")


def npy_header(dtype, shape) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-order array of ``dtype`` and ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


def complete_npy_header(path: Path):
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


def _tag(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "tag"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_progress(out) -> dict | None:
    """The progress record of an unfinished run writing ``out`` (None when there is none)."""
    _, _, progress = paths(out)
    try:
        with open(progress) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ResumeError(f"the progress record {progress} is unreadable ({type(exc).__name__}: {exc}); "
                          "start over with overwrite=True (--overwrite) instead of resume") from exc


def check_output_space(out, n: int, sample_shape, dtype="float32") -> None:
    """Refuse a request whose .npy cannot fit beside ``out`` (naming n, the bytes and the free space)
    before anything is done for it: :meth:`fastddpm.Pipeline.sample` calls this before it exports or
    loads anything, :func:`write_samples` again before it locks or creates a file."""
    name = str(dtype).replace("torch.", "")
    dt = np.dtype("float32" if name == "bfloat16" else name)  # bfloat16 is written as float32
    row = int(np.prod(sample_shape, dtype=np.int64)) * dt.itemsize
    final, partial, _ = paths(out)
    size = len(npy_header(dt, (int(n), *sample_shape))) + int(n) * row
    check_space(final, size, what=f"n = {int(n):,} samples of {row:,} bytes (n, --n)",
                reusable=partial.stat().st_size if partial.is_file() else 0)


class _Layout:
    """Byte geometry of the output: header, row size, checksum chunks."""

    def __init__(self, run, *, dtype=None, shape=None):
        self.n = run.n
        self.dtype = np.dtype(run.dtype if dtype is None else dtype)
        shape = run.shape if shape is None else tuple(shape)
        self.header = npy_header(self.dtype, (run.n,) + shape)
        self.row_bytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.size = len(self.header) + run.n * self.row_bytes
        self.chunk_rows = max(1, CHUNK_BYTES // max(1, self.row_bytes))


class _Checksums:
    """CRC-32 per chunk of ``chunk_rows`` rows, fed with rows in order from row 0."""

    def __init__(self, chunk_rows: int, crcs=(), tail: int = 0, done: int = 0):
        self.chunk_rows, self.crcs, self.tail, self.done = chunk_rows, list(crcs), tail, done

    def feed(self, data: memoryview, rows: int, row_bytes: int) -> None:
        pos, end = self.done, self.done + rows
        while pos < end:
            chunk_end = (pos // self.chunk_rows + 1) * self.chunk_rows
            take = min(end, chunk_end)
            self.tail = zlib.crc32(data[(pos - self.done) * row_bytes:(take - self.done) * row_bytes], self.tail)
            pos = take
            if pos == chunk_end:
                self.crcs.append(self.tail)
                self.tail = 0
        self.done = end


def _record(layout: _Layout, settings: dict, sums: _Checksums, side=None) -> dict:
    record = {"version": PROGRESS_VERSION, "done": sums.done, "settings": settings,
              "chunk_rows": layout.chunk_rows, "chunk_crc32": sums.crcs, "tail_crc32": sums.tail,
              "file_bytes": layout.size, "header_bytes": len(layout.header)}
    if side is not None:  # the labels sidecar: its own geometry and checksums, rows [0, done) too
        record["labels"] = {"chunk_rows": side.layout.chunk_rows, "chunk_crc32": side.sums.crcs,
                            "tail_crc32": side.sums.tail, "file_bytes": side.layout.size,
                            "header_bytes": len(side.layout.header)}
    record["tag"] = _tag(record)
    return record


class _Side:
    """The labels sidecar of a labelled run: paths, layout, checksums, open file."""

    def __init__(self, run, final: Path):
        self.final, self.partial = labels_paths(final)
        self.layout = _Layout(run, dtype=LABEL_DTYPE, shape=())
        self.sums = _Checksums(self.layout.chunk_rows)
        self.fd = None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_record(record, layout: _Layout, settings: dict, final: Path, progress: Path, partial: Path) -> _Checksums:
    """Validate an unfinished run's record and partial against this run; the checksums to continue."""
    how = (f"start over with overwrite=True (--overwrite) instead of resume (this discards {partial.name} "
           f"and {progress.name})")

    def damaged(what: str):
        return ResumeError(f"cannot resume {final}: {what}; {how}")

    if not isinstance(record, dict):
        raise damaged(f"the progress record {progress} is not a JSON object")
    if record.get("version") != PROGRESS_VERSION:
        raise damaged(f"the progress record {progress} has version {record.get('version')!r} (this fastddpm "
                      f"writes version {PROGRESS_VERSION} and cannot check older records)")
    if record.get("tag") != _tag(record):
        raise damaged(f"the progress record {progress} does not match its integrity tag (edited, or damaged "
                      "on disk)")
    done = record.get("done")
    if not _is_int(done) or not 0 <= done <= layout.n:
        raise damaged(f"the progress record {progress} has done = {done!r}; it must be an integer in "
                      f"[0, n = {layout.n}]")
    old = record.get("settings")
    if not isinstance(old, dict):
        raise damaged(f"the progress record {progress} has no settings")
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if diff:
        # Not damage: a different request. Say which settings differ.
        raise ResumeError(f"cannot resume {final}: the unfinished run used different settings "
                          f"({', '.join(diff)}); run with the same settings, or {how}")
    return _verify_partial(record, layout, partial, progress, done, damaged)


def _verify_partial(entry: dict, layout: _Layout, partial: Path, progress: Path, done: int, damaged) -> _Checksums:
    """Check a partial file against its geometry and checksums in a progress record ``entry`` (the
    record itself for the samples, ``record["labels"]`` for the labels sidecar): the checksums of
    rows [0, done) to continue with."""
    crcs, tail = entry.get("chunk_crc32"), entry.get("tail_crc32")
    if (entry.get("chunk_rows") != layout.chunk_rows or entry.get("file_bytes") != layout.size
            or entry.get("header_bytes") != len(layout.header)):
        raise damaged(f"the progress record {progress} describes another layout of {partial.name} (chunk_rows, "
                      f"file_bytes or header_bytes differ from this run's {layout.chunk_rows}, {layout.size}, "
                      f"{len(layout.header)})")
    if (not isinstance(crcs, list) or len(crcs) != done // layout.chunk_rows
            or not all(_is_int(c) and 0 <= c < 2**32 for c in crcs) or not (_is_int(tail) and 0 <= tail < 2**32)):
        raise damaged(f"the progress record {progress} has malformed checksums for {partial.name} (chunk_crc32 must "
                      f"hold {done // layout.chunk_rows} CRC-32 values for done = {done})")
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        raise damaged(f"its partial file {partial} is missing") from None
    if size != layout.size:
        raise damaged(f"the partial file {partial} has {size:,} bytes, not the {layout.size:,} of a "
                      f"[{layout.n}, …] {layout.dtype.name} .npy (truncated or replaced)")
    with open(partial, "rb") as f:
        head = f.read(len(layout.header))
        if head != layout.header:
            raise damaged(f"the partial file {partial} does not start with the .npy header of a "
                          f"{(layout.n,)} + sample_shape {layout.dtype.name} array (overwritten or not ours)")
        sums = _Checksums(layout.chunk_rows)
        block = max(1, (8 << 20) // max(1, layout.row_bytes))
        pos = 0
        while pos < done:
            rows = min(block, done - pos, (pos // layout.chunk_rows + 1) * layout.chunk_rows - pos)
            data = f.read(rows * layout.row_bytes)
            if len(data) != rows * layout.row_bytes:  # pragma: no cover - size was checked
                raise damaged(f"the partial file {partial} ended early")
            chunk = len(sums.crcs)
            sums.feed(memoryview(data), rows, layout.row_bytes)
            if len(sums.crcs) > chunk and sums.crcs[chunk] != crcs[chunk]:
                a = chunk * layout.chunk_rows
                raise damaged(f"rows [{a}, {a + layout.chunk_rows}) of the partial file {partial} do not match "
                              "their checksum in the progress record (damaged on disk, or written by something "
                              "else)")
            pos += rows
        if sums.tail != tail:
            a = len(sums.crcs) * layout.chunk_rows
            raise damaged(f"rows [{a}, {done}) of the partial file {partial} do not match their checksum in "
                          "the progress record (damaged on disk, or written by something else)")
    return sums


def _check_side(record: dict, side: _Side, final: Path, progress: Path) -> _Checksums:
    """The labels sidecar's part of a resume check (the record itself was checked already)."""
    how = (f"start over with overwrite=True (--overwrite) instead of resume (this discards {side.partial.name} "
           f"and {progress.name})")

    def damaged(what: str):
        return ResumeError(f"cannot resume {final}: {what}; {how}")

    entry = record.get("labels")
    if not isinstance(entry, dict):
        raise damaged(f"the progress record {progress} has no labels entry for {side.partial.name}")
    return _verify_partial(entry, side.layout, side.partial, progress, record["done"], damaged)


def _pwrite_all(fd: int, data, offset: int, path: Path) -> None:
    view = memoryview(data)
    try:
        while len(view):
            wrote = os.pwrite(fd, view, offset)
            view, offset = view[wrote:], offset + wrote
    except OSError as exc:  # space was reserved, but e.g. a copy-on-write filesystem may still run out
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, offset + len(view), exc) from None
        raise


def write_samples(run, out, *, resume: bool = False, overwrite: bool = False, postprocess=None) -> str:
    """Run ``run`` (a SamplingRun) into the .npy file ``out``; returns its path.

    ``postprocess``: applied to each batch (a host array) before it is written, e.g. the
    checkpoint's de-normalisation; it takes part in the resume check through ``run.model_id``.
    """
    final, partial, progress = paths(out)
    if not final.parent.is_dir():
        raise FileNotFoundError(f"the directory of out, {final.parent}, does not exist")
    if final.is_dir():
        raise IsADirectoryError(f"out {final} is a directory; give the path of a .npy file to write")
    # Before the lock file or the partial exist: a request larger than the free space (or than a
    # file may be) is refused naming n, instead of an "[Errno 27] File too large" from the reserve.
    check_output_space(final, run.n, run.shape, run.dtype)
    if getattr(run, "labelled", False):  # the labels sidecar: int64 [n]
        side_final, side_partial = labels_paths(final)
        check_space(side_final, run.n * LABEL_DTYPE.itemsize + 128, what=f"the labels of n = {int(run.n):,} samples (n, --n)",
                    reusable=side_partial.stat().st_size if side_partial.is_file() else 0)
    with OutputLock(final):
        return _write_locked(run, final, partial, progress, resume=resume, overwrite=overwrite,
                             postprocess=postprocess)


def _write_locked(run, final: Path, partial: Path, progress: Path, *, resume, overwrite, postprocess) -> str:
    remove_stale_temps(progress)  # a record write cut short by a kill
    if final.exists() and progress.exists() and not partial.exists():
        progress.unlink()  # killed between the final rename and the record removal: the run had finished
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (a finished run); pass overwrite=True "
                              "(--overwrite) to replace it, or choose another name")
    layout = _Layout(run)
    settings = run_settings(run)
    side = _Side(run, final) if getattr(run, "labelled", False) else None
    if side is not None and progress.exists() and partial.exists() and side.final.exists() \
            and not side.partial.exists():
        # killed between the labels' rename and the samples': the labels go back to their partial
        # (a resume checks them against the record like any partial; an overwrite replaces them)
        os.replace(side.final, side.partial)
    if side is not None and side.final.exists() and not overwrite:
        raise FileExistsError(f"{side.final} already exists (the labels of another run); pass overwrite=True "
                              "(--overwrite) to replace it, or choose another out")
    sums = None
    if progress.exists():
        if resume:
            record = read_progress(final)
            sums = _check_record(record, layout, settings, final, progress, partial)
            if side is not None:
                side.sums = _check_side(record, side, final, progress)
        elif not overwrite:
            raise FileExistsError(f"{final} has an unfinished run ({progress.name}, {partial.name}); pass "
                                  "resume=True (--resume) to continue it, or overwrite=True (--overwrite) to "
                                  "start over")
    fresh = sums is None
    if fresh:
        sums = _Checksums(layout.chunk_rows)
        if side is not None:
            side.sums = _Checksums(side.layout.chunk_rows)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    else:
        fd = os.open(partial, os.O_RDWR)
    try:
        if side is not None:
            side.fd = os.open(side.partial, os.O_RDWR | (os.O_CREAT | os.O_TRUNC if fresh else 0), 0o644)
        if fresh:
            crash_point("bulk.created")
            try:
                reserve(fd, layout.size, partial)
                if side is not None:
                    reserve(side.fd, side.layout.size, side.partial)
            except OSError:
                partial.unlink(missing_ok=True)  # holds nothing yet
                if side is not None:
                    side.partial.unlink(missing_ok=True)
                raise
            crash_point("bulk.reserved")
            _pwrite_all(fd, layout.header, 0, partial)
            os.fsync(fd)
            if side is not None:
                _pwrite_all(side.fd, side.layout.header, 0, side.partial)
                os.fsync(side.fd)
            write_json(progress, _record(layout, settings, sums, side), crash="json")
            crash_point("bulk.record_started")
        _fill(run, fd, layout, sums, settings, partial, progress, postprocess, side)
        os.fsync(fd)
        if side is not None:
            os.fsync(side.fd)
    finally:
        os.close(fd)
        if side is not None and side.fd is not None:
            os.close(side.fd)
    crash_point("bulk.before_rename")
    if side is not None:  # labels first: see the module docstring
        os.replace(side.partial, side.final)
        crash_point("bulk.labels_renamed")
    os.replace(partial, final)
    fsync_dir(final.parent)
    crash_point("bulk.renamed")
    progress.unlink(missing_ok=True)
    if side is None and overwrite:
        stale, _ = labels_paths(final)
        stale.unlink(missing_ok=True)  # an earlier labelled run's labels: they do not describe these rows
    return str(final)


def _fill(run, fd, layout: _Layout, sums: _Checksums, settings, partial: Path, progress: Path, postprocess, side=None):
    shape = run.shape
    pbar = run.progress_bar(run.n - sums.done)
    last_write = time.monotonic()
    try:
        for s0 in range(sums.done, run.n, run.batch_size):
            s1 = min(run.n, s0 + run.batch_size)
            x = run.run_batch(s0, s1, pbar=pbar)
            if not isinstance(x, np.ndarray):  # a torch tensor of the torch/CUDA path
                x = x.detach().cpu().numpy()
            if postprocess is not None:
                x = postprocess(x)
            x = np.ascontiguousarray(x, dtype=layout.dtype)
            if x.shape != (s1 - s0,) + shape:
                raise ValueError(f"batch [{s0}, {s1}) has shape {x.shape}, expected {(s1 - s0,) + shape}")
            data = memoryview(x.reshape(-1).view(np.uint8))
            _pwrite_all(fd, data, len(layout.header) + s0 * layout.row_bytes, partial)
            crash_point("bulk.rows_written")
            sums.feed(data, s1 - s0, layout.row_bytes)
            if side is not None:
                labels = np.ascontiguousarray(run.batch_labels(s0, s1), dtype=LABEL_DTYPE)
                ldata = memoryview(labels.view(np.uint8))
                _pwrite_all(side.fd, ldata, len(side.layout.header) + s0 * side.layout.row_bytes, side.partial)
                crash_point("bulk.labels_written")
                side.sums.feed(ldata, s1 - s0, side.layout.row_bytes)
            now = time.monotonic()
            if now - last_write >= PROGRESS_EVERY_S or s1 == run.n:
                os.fdatasync(fd)  # the rows are on disk before the record claims them
                if side is not None:
                    os.fdatasync(side.fd)
                crash_point("bulk.rows_synced")
                write_json(progress, _record(layout, settings, sums, side), crash="json")
                crash_point("bulk.record_written")
                last_write = now
    finally:
        if pbar is not None:
            pbar.close()
