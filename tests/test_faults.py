"""Fault injection: a kill at every step of every multi-step write, full disks, two writers on one
output, damaged resume state. After each fault the good data that existed before must still be
there and loadable, and a resumed / repeated write must give exactly the uninterrupted result.

Kills are real: the write runs in a forked child that ``os._exit``s at the chosen crash point
(fastddpm._io.crash_point), so no ``finally``/``except`` cleanup runs, as with SIGKILL. The
points are not listed by hand: a normal run records every point it passes, and the test kills at
each pass in turn.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import traceback
import warnings

import numpy as np
import pytest

import fastddpm
from fastddpm import _io
from fastddpm.sampling import bulk, sample

from _sampling_models import FailAt, GaussianEps, slow_writer_script

T = 20


# -- the kill harness --------------------------------------------------------------------------


def _trace(fn):
    """Run ``fn`` in this process; the crash points it passes, in order."""
    seen = []
    old, _io._crash_hook = _io._crash_hook, seen.append
    try:
        fn()
    finally:
        _io._crash_hook = old
    return seen


def _occurrences(points):
    """(name, k) for every pass: the k-th time ``name`` was reached."""
    count, out = {}, []
    for name in points:
        count[name] = count.get(name, 0) + 1
        out.append((name, count[name]))
    return out


def _run_killed_at(fn, name, k, timeout=120.0):
    """Fork; the child runs ``fn`` and dies at the k-th pass of crash point ``name``.
    Returns the child's exit status (77: killed there; 0: finished; 1: raised)."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            count = [0]

            def hook(point):
                if point == name:
                    count[0] += 1
                    if count[0] == k:
                        os._exit(_io.CRASH_EXIT)

            _io._crash_hook = hook
            fn()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"the child killed at {name}#{k} hung")
        time.sleep(0.005)


def _listing(d):
    return sorted(p.name for p in d.iterdir())


# -- bulk sampling -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schedule():
    return fastddpm.Schedule.linear(T)


@pytest.fixture(scope="module")
def model(schedule):
    return GaussianEps(schedule, [1.0, -1.0], [0.5, 2.0])


# backend="numpy": the reference kernels (no Numba threads in the forked children).
KW = dict(sampler="ddim", steps=4, seed=5, progress=False, backend="numpy")


@pytest.fixture
def small_chunks(monkeypatch):
    # a record per batch, and checksum chunks of 3 rows (2 float32 = 8 bytes a row): batches of
    # 4 then cross chunk boundaries, so complete chunks and tails are both exercised
    monkeypatch.setattr(bulk, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(bulk, "CHUNK_BYTES", 24)


def test_bulk_killed_at_every_step_then_resumed_is_byte_identical(tmp_path, schedule, model, small_chunks):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref_out = ref_dir / "s.npy"
    points = _trace(lambda: sample(model, schedule, 23, out=ref_out, batch_size=4, **KW))
    want = ref_out.read_bytes()
    np.testing.assert_array_equal(np.load(ref_out), sample(model, schedule, 23, **KW))
    names = set(points)
    assert {"bulk.created", "bulk.reserved", "bulk.record_started", "bulk.rows_written", "bulk.rows_synced",
            "bulk.record_written", "json.written", "json.before_replace", "bulk.before_rename",
            "bulk.renamed"} <= names
    cases = _occurrences(points)
    assert len(cases) == 7 + 5 * 6  # start (7), then 5 points per batch of 4 (6 batches)
    for name, k in cases:
        d = tmp_path / f"{name}-{k}"
        d.mkdir()
        out = d / "s.npy"
        code = _run_killed_at(lambda: sample(model, schedule, 23, out=out, batch_size=4, **KW), name, k)
        assert code == _io.CRASH_EXIT, f"{name}#{k}: exit {code}"
        if out.exists():  # killed after the final rename: the file is complete
            assert out.read_bytes() == want, f"{name}#{k}"
        else:
            assert not out.exists()
        # resume (another batch size) finishes it to exactly the uninterrupted bytes
        sample(model, schedule, 23, out=out, batch_size=3, resume=True, overwrite=out.exists(), **KW)
        assert out.read_bytes() == want, f"{name}#{k}"
        assert _listing(d) == ["s.npy"], f"{name}#{k}: leftovers {_listing(d)}"


def _retag(record):
    record["tag"] = bulk._tag(record)
    return record


def _edit_record(path, fn, retag=True):
    record = json.loads(path.read_text())
    fn(record)
    if retag:
        _retag(record)
    path.write_text(json.dumps(record))


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# Each damage: (what it does to the record / partial, a regex of the refusal). The partial holds
# a 30 x 2 float32 array (header 128 bytes); the record claims done = 12 (4 chunks of 3 rows).
DAMAGE = {
    "done raised (tag not updated)": (lambda rec, part: _edit_record(rec, lambda r: r.update(done=20), retag=False),
                                      "integrity tag"),
    "done raised (tag recomputed)": (lambda rec, part: _edit_record(rec, lambda r: r.update(done=20)),
                                     "malformed checksums"),
    "done raised with forged chunk list": (
        lambda rec, part: _edit_record(rec, lambda r: r.update(done=15, chunk_crc32=r["chunk_crc32"] + [0])),
        r"rows \[12, 15\) .* do not match their checksum"),
    "done negative": (lambda rec, part: _edit_record(rec, lambda r: r.update(done=-4)), r"done = -4; it must be an integer in \[0, n = 30\]"),
    "done above n": (lambda rec, part: _edit_record(rec, lambda r: r.update(done=31)), r"done = 31"),
    "done non-integer": (lambda rec, part: _edit_record(rec, lambda r: r.update(done=12.5)), r"done = 12.5"),
    "done a string": (lambda rec, part: _edit_record(rec, lambda r: r.update(done="12")), r"done = '12'"),
    "done a bool": (lambda rec, part: _edit_record(rec, lambda r: r.update(done=True)), r"done = True"),
    "checksum edited": (lambda rec, part: _edit_record(rec, lambda r: r["chunk_crc32"].__setitem__(1, 12345)),
                        r"rows \[3, 6\) .* do not match their checksum"),
    "tail checksum edited": (lambda rec, part: _edit_record(rec, lambda r: r.update(tail_crc32=1)),
                             r"rows \[12, 12\)|do not match"),
    "row bytes flipped": (lambda rec, part: _flip_byte(part, 128 + 8 * 7 + 2),
                          r"rows \[6, 9\) of the partial file .* do not match their checksum"),
    "partial truncated": (lambda rec, part: part.write_bytes(part.read_bytes()[:300]),
                          r"has 300 bytes, not the 368 .*truncated"),
    "partial grown": (lambda rec, part: part.write_bytes(part.read_bytes() + b"\0" * 8), r"has 376 bytes"),
    "partial missing": (lambda rec, part: part.unlink(), "partial file .* is missing"),
    "wrong header": (lambda rec, part: part.write_bytes(part.read_bytes().replace(b"(30, 2)", b"(15, 4)")),
                     "does not start with the .npy header"),
    "record truncated": (lambda rec, part: rec.write_text(rec.read_text()[:40]), "unreadable"),
    "record not an object": (lambda rec, part: rec.write_text("[1, 2]"), "not a JSON object"),
    "record of an old version": (lambda rec, part: _edit_record(rec, lambda r: r.update(version=1)), "version 1"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_resume_state_is_refused_and_kept(tmp_path, schedule, model, small_chunks, damage):
    out = tmp_path / "s.npy"
    ref = sample(model, schedule, 30, **KW)
    with pytest.raises(KeyboardInterrupt):
        sample(FailAt(model, 4 * 3 + 2), schedule, 30, out=out, batch_size=4, **KW)  # 3 batches done
    record, partial = tmp_path / "s.npy.progress.json", tmp_path / "s.npy.partial"
    assert json.loads(record.read_text())["done"] == 12
    apply, match = DAMAGE[damage]
    apply(record, partial)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(bulk.ResumeError, match=match) as info:
        sample(model, schedule, 30, out=out, batch_size=4, resume=True, **KW)
    assert "--overwrite" in str(info.value) and str(out) in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    # without resume the unfinished run is not discarded silently either
    with pytest.raises(FileExistsError, match="unfinished run.*--resume.*--overwrite"):
        sample(model, schedule, 30, out=out, **KW)
    sample(model, schedule, 30, out=out, overwrite=True, **KW)  # starting over works
    np.testing.assert_array_equal(np.load(out), ref)
    assert _listing(tmp_path) == ["s.npy"]


def test_intact_state_resumes(tmp_path, schedule, model, small_chunks):
    out = tmp_path / "s.npy"
    with pytest.raises(KeyboardInterrupt):
        sample(FailAt(model, 4 * 3 + 2), schedule, 30, out=out, batch_size=4, **KW)
    sample(model, schedule, 30, out=out, batch_size=5, resume=True, **KW)
    np.testing.assert_array_equal(np.load(out), sample(model, schedule, 30, **KW))


# -- two writers on one output -----------------------------------------------------------------


_HOLDER = textwrap.dedent("""
    import sys
    from fastddpm._io import OutputLock
    lock = OutputLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_second_writer_refuses_at_once_naming_the_first(tmp_path, schedule, model):
    out = tmp_path / "s.npy"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        m = GaussianEps(schedule, [1.0, -1.0], [0.5, 2.0])
        with pytest.raises(_io.OutputLockedError, match=rf"{out}.*another process \(pid {holder.pid};"):
            sample(m, schedule, 10, out=out, **KW)
        assert m.calls == 0  # refused before sampling
        assert not (tmp_path / "s.npy.partial").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the process; its stale lock file does not block
    sample(model, schedule, 10, out=out, **KW)
    assert _listing(tmp_path) == ["s.npy"]


_SLOW_WRITER = slow_writer_script(T, """
    sample(m, s, 200, sampler="ddim", steps=4, seed=5, batch_size=20, out=sys.argv[1], progress=False,
           backend="numpy")
""")


def test_two_sampling_processes_on_one_output(tmp_path, schedule, model):
    """The campaign's case: two runs with the same out. The first finishes intact; the second refuses."""
    script = _SLOW_WRITER
    out = tmp_path / "s.npy"
    gate = tmp_path / "gate"  # the first run stays in progress until the second has refused
    first = subprocess.Popen([sys.executable, "-c", script, str(out), f"gate:{gate}"], stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "s.npy.progress.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run([sys.executable, "-c", script, str(out), "0"], stderr=subprocess.PIPE, text=True,
                                timeout=120)
    finally:
        gate.touch()
    assert second.returncode != 0
    assert f"another process (pid {first.pid}" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    gate.unlink()
    np.testing.assert_array_equal(np.load(out), sample(model, schedule, 200, **KW))
    assert _listing(tmp_path) == ["s.npy"]


# -- full disks --------------------------------------------------------------------------------


def test_injected_enospc_is_a_clear_error_before_sampling(tmp_path, schedule, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    keep = tmp_path / "keep.npy"
    np.save(keep, np.arange(6.0))
    m = GaussianEps(schedule, [1.0, -1.0], [0.5, 2.0])
    with pytest.raises(OSError, match=r"not enough disk space for .*s\.npy\.partial: it needs 208 bytes") as info:
        sample(m, schedule, 10, out=tmp_path / "s.npy", **KW)
    assert info.value.errno == errno.ENOSPC
    assert m.calls == 0
    assert _listing(tmp_path) == ["keep.npy"]
    np.testing.assert_array_equal(np.load(keep), np.arange(6.0))


def test_filesystem_without_fallocate_still_reserves(tmp_path, schedule, model, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    out = tmp_path / "s.npy"
    sample(model, schedule, 10, out=out, **KW)
    np.testing.assert_array_equal(np.load(out), sample(model, schedule, 10, **KW))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root / CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    d = tmp_path / "tiny"
    d.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(d)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "the injected-ENOSPC test covers the same path")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_real_full_disk(tiny_tmpfs, schedule, model):
    keep = tiny_tmpfs / "keep.npy"
    np.save(keep, np.arange(1000.0))  # 8 kB of good data already on the disk
    out = tiny_tmpfs / "s.npy"
    with pytest.raises(OSError, match="not enough disk space") as info:  # 2 MB into 1 MiB
        sample(model, schedule, 2**17, out=out, **KW)
    assert info.value.errno == errno.ENOSPC
    assert _listing(tiny_tmpfs) == ["keep.npy"]
    np.testing.assert_array_equal(np.load(keep), np.arange(1000.0))
    sample(model, schedule, 1000, out=out, **KW)  # what fits is written as usual
    np.testing.assert_array_equal(np.load(out), sample(model, schedule, 1000, **KW))


def test_assembly_on_a_full_disk_keeps_the_shards(tmp_path, schedule, model, monkeypatch):
    from fastddpm.distributed import assemble, shard_dir

    out = _shards(tmp_path, schedule, model)
    before = {p.name: p.read_bytes() for p in shard_dir(out).iterdir()}

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="not enough disk space"):
        assemble(out, 23, 3, 4)
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in shard_dir(out).iterdir()} == before
    assert _listing(tmp_path) == ["x.npy.shards"]


# -- distributed assembly ----------------------------------------------------------------------


def _shards(tmp_path, schedule, model, n=23, world=3, block=4):
    from fastddpm.distributed import shard_dir, shard_path, shard_range

    out = tmp_path / "x.npy"
    shard_dir(out).mkdir()
    for r in range(world):
        a, b = shard_range(n, r, world, block)
        sample(model, schedule, b - a, start=a, out=shard_path(out, r, world), batch_size=block, **KW)
    return out


def test_assembly_killed_at_every_step(tmp_path, schedule, model):
    from fastddpm.distributed import assemble, shard_dir

    want = sample(model, schedule, 23, **KW)
    (tmp_path / "probe").mkdir()
    probe = _shards(tmp_path / "probe", schedule, model)
    points = _trace(lambda: assemble(probe, 23, 3, 4))
    np.testing.assert_array_equal(np.load(probe), want)
    assert {"assemble.reserved", "assemble.part_copied", "assemble.synced", "assemble.renamed"} <= set(points)
    for name, k in _occurrences(points):
        d = tmp_path / f"{name}-{k}"
        d.mkdir()
        out = _shards(d, schedule, model)
        shards = {p.name: p.read_bytes() for p in shard_dir(out).iterdir()}
        assert _run_killed_at(lambda: assemble(out, 23, 3, 4), name, k) == _io.CRASH_EXIT
        if out.exists():
            np.testing.assert_array_equal(np.load(out), want)
        assert {p.name: p.read_bytes() for p in shard_dir(out).iterdir()} == shards  # the shards are intact
        assemble(out, 23, 3, 4)  # what --resume re-does
        np.testing.assert_array_equal(np.load(out), want)
        assert _listing(d) == ["x.npy"], f"{name}#{k}: leftovers {_listing(d)}"


# -- checkpoints -------------------------------------------------------------------------------


def _versions():
    import torch

    from fastddpm.nets import MLP

    out = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        out.append(MLP(2, width=8, depth=1, num_steps=T))
    return out


def _weights(ckpt):
    return {k: v.clone() for k, v in ckpt.model.state_dict().items()}


def _same(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_checkpoint_save_killed_at_every_step(tmp_path, schedule, exchange, monkeypatch):
    import torch

    from fastddpm.data import Normalization

    if not exchange:
        monkeypatch.setenv("FASTDDPM_NO_EXCHANGE", "1")
    else:
        from fastddpm.checkpoint import _exchange

        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        (tmp_path / "a" / "in-a").touch()
        if not _exchange(tmp_path / "a", tmp_path / "b"):
            pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this kernel/filesystem")
        assert _listing(tmp_path / "b") == ["in-a"]
        shutil.rmtree(tmp_path / "a")
        shutil.rmtree(tmp_path / "b")
    v1, v2, v3 = _versions()
    norm = Normalization.identity()
    ema = {"ema_model": v2, "train_state": {"step": 3, "losses": [1.0]}}

    def save(path, model, **kw):
        return fastddpm.save(path, model, schedule, normalization=norm, **kw)

    probe = tmp_path / "probe" / "ck"
    save(probe, v1)
    points = _trace(lambda: save(probe, v2, **ema))
    assert "checkpoint.switched" in points and "checkpoint.synced" in points
    assert ("checkpoint.old_moved" in points) == (not exchange)
    w1 = {k: v.detach().clone() for k, v in v1.state_dict().items()}
    w2 = {k: v.detach().clone() for k, v in v2.state_dict().items()}
    for name, k in _occurrences(points):
        d = tmp_path / f"{name}-{k}"
        d.mkdir()
        path = save(d / "ck", v1)
        assert _run_killed_at(lambda: save(path, v2, **ema), name, k) == _io.CRASH_EXIT
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fastddpm.load(path, ema=False)  # never nothing: the old or the new checkpoint
        new = _position(points, name, k) >= points.index("checkpoint.switched")  # killed after the switch
        assert _same(_weights(got), w2 if new else w1), f"{name}#{k}"
        if name == "checkpoint.old_moved":  # the only instant path is missing: load found the .old copy
            assert any("interrupted" in str(w.message) for w in caught)
        save(path, v3)  # the next save works and tidies up
        with torch.no_grad():
            assert _same(_weights(fastddpm.load(path)), {k: v for k, v in v3.state_dict().items()})
        assert _listing(d) == ["ck"], f"{name}#{k}: leftovers {_listing(d)}"


def _position(points, name, k):
    """Index in ``points`` of the k-th pass of ``name``."""
    seen = 0
    for i, p in enumerate(points):
        if p == name:
            seen += 1
            if seen == k:
                return i
    raise ValueError(name)


def test_concurrent_checkpoint_save_refused(tmp_path, schedule):
    from fastddpm.data import Normalization

    v1, v2, _ = _versions()
    path = fastddpm.save(tmp_path / "ck", v1, schedule, normalization=Normalization.identity())
    with _io.OutputLock(path):  # another saver holds it (flock: a second open file conflicts)
        with pytest.raises(_io.OutputLockedError, match=rf"{path} is being written by another process \(pid "
                                                        rf"{os.getpid()}"):
            fastddpm.save(path, v2, schedule, normalization=Normalization.identity())
    assert _same(_weights(fastddpm.load(path)), {k: v.detach() for k, v in v1.state_dict().items()})


# -- ONNX export -------------------------------------------------------------------------------


def test_onnx_export_killed_at_each_step_keeps_a_loadable_file(tmp_path, schedule, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fastddpm import onnx_export
    from fastddpm.runtime.model import OnnxModel

    v1, v2, _ = _versions()
    path = tmp_path / "m.onnx"
    onnx_export.export_onnx(v1, str(path), schedule=schedule, sample_shape=(2,))
    good = path.read_bytes()
    real_replace, real_fsync = os.replace, os.fsync
    x = np.zeros((3, 2), np.float32)

    def out_of(p):
        return OnnxModel(str(p))(x, np.full(3, 4, np.int64))

    want1 = out_of(path)
    # export_onnx's steps: write the temp file, fsync it, rename it over path
    for step in ("before_fsync", "before_replace", "after_replace"):
        def export():
            def fsync(fd):
                _io.crash_point("onnx.before_fsync")
                return real_fsync(fd)

            def replace(a, b):
                _io.crash_point("onnx.before_replace")
                real_replace(a, b)
                _io.crash_point("onnx.after_replace")

            monkeypatch.setattr(onnx_export.os, "fsync", fsync)
            monkeypatch.setattr(onnx_export.os, "replace", replace)
            onnx_export.export_onnx(v2, str(path), schedule=schedule, sample_shape=(2,))

        assert _run_killed_at(export, f"onnx.{step}", 1) == _io.CRASH_EXIT
        got = out_of(path)  # loadable: the old or the new network
        if step == "after_replace":
            assert path.read_bytes() != good
            assert not np.array_equal(got, want1)
        else:
            assert path.read_bytes() == good
            np.testing.assert_array_equal(got, want1)
        onnx_export.export_onnx(v1, str(path), schedule=schedule, sample_shape=(2,))
        good = path.read_bytes()
        for leftover in tmp_path.glob(".tmp-*"):  # a killed export leaves its temp file (named .tmp-*)
            leftover.unlink()
    assert _listing(tmp_path) == ["m.onnx"]
