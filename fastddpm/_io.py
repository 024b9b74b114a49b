"""Safe file writes: atomic replacement, exclusive output locks, reserved disk space.

- :func:`atomic_open` (and :func:`write_text`, :func:`write_json`, :func:`write_bytes` on top of
  it): write to a temp file in the target's folder, fsync, rename over the target, fsync the
  folder; a reader (or a crash) never sees a half-written file under the final name. Every
  file fastddpm writes in one piece goes through it (ONNX exports and their cache, progress
  records, benchmark rows, metrics, figures, the assembled distributed output).
- :class:`OutputLock`: an exclusive ``flock`` on ``NAME.lock`` beside an output, held for a whole
  run; a second process refuses at once, naming the file and the pid that holds it.
- :func:`reserve`: ``posix_fallocate`` the full size of a file before any row is written, so a
  full disk is a clear ``OSError`` (ENOSPC) up front, never a SIGBUS from a sparse mapping.
- :func:`crash_point`: named points inside every multi-step write where the fault tests
  (tests/test_faults.py) kill the process; a no-op unless a test sets a hook.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# Fault injection for the tests: ``_crash_hook(name)`` is called at every crash point (None in
# normal use). Setting FASTDDPM_TEST_CRASH_AT=NAME[:K] makes the K-th (default 1st) pass through
# point NAME end the process at once with os._exit(77), as a SIGKILL would: no cleanup runs.
CRASH_ENV = "FASTDDPM_TEST_CRASH_AT"
CRASH_EXIT = 77
_crash_hook = None
_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Mark a step of a multi-step write (see the module docstring)."""
    if _crash_hook is not None:
        _crash_hook(name)
    spec = os.environ.get(CRASH_ENV)
    if spec:
        point, _, k = spec.partition(":")
        if point == name:
            _crash_counts[name] = _crash_counts.get(name, 0) + 1
            if _crash_counts[name] == int(k or 1):
                os._exit(CRASH_EXIT)


def fsync_dir(path) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems cannot fsync directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path, mode: str = "wb", *, crash: str = "atomic", **kwargs):
    """``with atomic_open(path) as f: ...`` — ``path`` appears (or is replaced) only when the
    block finishes without an exception, with its data and the rename fsynced; otherwise the
    temp file is removed. The one atomic file writer of fastddpm.

    The temp file is ``.tmp-NAME.XXXXXXXX`` beside ``path`` (a unique name per writer, so two
    processes writing the same path at once each rename a complete file of their own; the
    last rename wins). A kill leaves it behind: a writer that holds the output's lock removes
    such leftovers with :func:`remove_stale_temps`. ``crash`` names the two crash points
    (``CRASH.written`` once the data is flushed, ``CRASH.before_replace`` once it is fsynced).
    ``f.fileno()`` may be written with ``os.pwrite``; the data is fsynced either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            crash_point(f"{crash}.written")
            os.fsync(f.fileno())
        crash_point(f"{crash}.before_replace")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def _temp_prefix(path: Path) -> str:
    return f".tmp-{path.name}."


def remove_stale_temps(path) -> None:
    """Remove the temp files that killed :func:`atomic_open` writers of ``path`` left behind.

    Only for a caller that holds ``path``'s :class:`OutputLock` (otherwise another process's
    temp file, still being written, could be removed under it).
    """
    path = Path(path)
    for stale in path.parent.glob(glob.escape(_temp_prefix(path)) + "*"):
        stale.unlink(missing_ok=True)


def write_text(path, text: str, *, crash: str = "atomic") -> None:
    with atomic_open(path, "w", encoding="utf-8", crash=crash) as f:
        f.write(text)


def write_json(path, obj, *, crash: str = "atomic", **dump_kwargs) -> None:
    """``obj`` as JSON in ``path``, atomically (see :func:`atomic_open`)."""
    write_text(path, json.dumps(obj, **dump_kwargs), crash=crash)


def write_bytes(path, data: bytes, *, crash: str = "atomic") -> None:
    with atomic_open(path, "wb", crash=crash) as f:
        f.write(data)


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoint files, the ONNX export cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_file(path) -> None:
    """fsync a file that is already written and closed (e.g. by a library that does not sync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- locks -----------------------------------------------------------------------------------


class OutputLockedError(FileExistsError):
    """Another process holds the lock on an output; the message names it and its pid."""


def _try_flock(fcntl, fd: int) -> bool:
    """An exclusive flock on ``fd`` without blocking: True when taken, False when someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        os.close(fd)
        raise


def lock_path(target) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".lock")


class OutputLock:
    """Exclusive lock on ``target`` for as long as it is held: ``with OutputLock(out): ...``.

    An ``flock(LOCK_EX | LOCK_NB)`` on ``TARGET.lock`` (created beside the target, holding the
    owner's pid). The kernel drops the lock when the process dies, however it dies, so a killed
    run never blocks the next one; the lock file is removed on release. Acquiring re-checks
    that the locked file is still the one at the path (a releasing owner may have just unlinked
    it), so two processes can never both believe they hold it.
    """

    def __init__(self, target, what: str = "writing", *, wait: float = 0.0):
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.what = what
        self.wait = float(wait)  # seconds to wait for another holder (0: refuse at once)
        self.fd: int | None = None

    def acquire(self) -> "OutputLock":
        import fcntl

        deadline = time.monotonic() + self.wait
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            while not _try_flock(fcntl, fd):
                if time.monotonic() < deadline:  # wait=…: another holder will be done soon
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise OutputLockedError(
                    f"{self.target} is being written by another process ({self._owner()}; lock file "
                    f"{self.path}); wait for it to finish, or choose another output") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return self
            os.close(fd)  # we locked a lock file its owner had just removed: try the new one
        raise OSError(f"could not lock {self.path}: it keeps being replaced")  # pragma: no cover

    def _owner(self) -> str:
        try:
            pid = int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return "pid unknown"
        return f"pid {pid}"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiter then sees a new file (see acquire)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# -- space -----------------------------------------------------------------------------------


def check_space(path, size: int, *, what: str, reusable: int = 0) -> None:
    """Refuse, before anything is written, an output of ``size`` bytes at ``path`` that cannot fit:
    more than the free space of its filesystem (``reusable``: bytes of an existing file at the
    path that the write replaces), or more than the largest file the platform allows. ``what``
    says which argument sets the size (e.g. "n = 1,000 samples (--n)"), so the error names it, the
    bytes needed and the space free."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:  # cannot tell (e.g. the directory is missing): the writer reports that itself
        return
    limit = _max_file_bytes(path.parent)
    if size - reusable <= free and (limit is None or size <= limit):
        return
    too_big = limit is not None and size > limit
    raise OSError(errno.EFBIG if too_big else errno.ENOSPC,
                  f"not enough disk space for {path}: {what} need {size:,} bytes{_human(size)} but "
                  + (f"a file there can hold at most {limit:,} bytes{_human(limit)}" if too_big else
                     f"only {free:,} bytes{_human(free)} are free on its filesystem")
                  + "; ask for fewer, or write elsewhere. Nothing was written.")


def _max_file_bytes(directory) -> int | None:
    """The largest file size ``directory``'s filesystem allows (pathconf FILESIZEBITS), or None."""
    try:
        bits = os.pathconf(directory, "PC_FILESIZEBITS")
    except (OSError, ValueError, AttributeError):
        return None
    return None if bits <= 0 or bits >= 64 else 2 ** (bits - 1) - 1


def _human(size: int) -> str:
    """" (1.5 GiB)" for sizes of 1 KiB and more, "" below (the exact byte count is said anyway)."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            return "" if unit == "bytes" else f" ({value:.1f} {unit})"
        value /= 1024
    return f" ({value:.1f} EiB)"


def reserve(fd: int, size: int, path) -> None:
    """Allocate ``size`` bytes for the open file ``fd`` (``path`` names it in errors).

    ``os.posix_fallocate`` makes the filesystem back every block now; ENOSPC/EDQUOT become an
    OSError that says how much was needed and how much is free. Where the filesystem cannot
    preallocate (EOPNOTSUPP/EINVAL) the zeros are written explicitly, which allocates too.
    """
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, size, exc) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    block = b"\0" * (1 << 20)
    try:
        for pos in range(0, size, len(block)):
            os.pwrite(fd, block[: min(len(block), size - pos)], pos)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, size, exc) from None
        raise


def _no_space(path, size: int, exc: OSError) -> OSError:
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free:,} bytes are free"
    except OSError:  # pragma: no cover
        free = "free space unknown"
    return OSError(exc.errno, f"not enough disk space for {path}: it needs {size:,} bytes and {free} "
                              f"({os.strerror(exc.errno)}); free some space or write elsewhere")
