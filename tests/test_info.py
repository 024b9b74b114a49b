"""`fastddpm info` (and --json): what a user pastes into a bug report."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fastddpm
from fastddpm import machine
from fastddpm.cli import main


def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def test_info_json_names_versions_cpu_threads_gpu_and_caches(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTDDPM_CACHE", str(tmp_path / "cache"))
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fastddpm"]["version"] == fastddpm.__version__
    assert info["versions"]["numpy"] == np.__version__
    flags = _flags()
    if flags:  # Linux: the features are the kernel's flags
        for name in ("avx2", "avx512f", "avx512_bf16"):
            assert info["cpu"]["features"][name] == (name in flags), name
        assert info["cpu"]["family"] is not None and info["cpu"]["name"]
    assert info["cpu"]["usable"] == len(os.sched_getaffinity(0))
    assert info["caches"]["onnx_export"] == str(tmp_path / "cache" / "onnx")
    torch = pytest.importorskip("torch")
    assert info["threads"]["torch"] == torch.get_num_threads()
    assert info["torch"]["version"] == torch.__version__
    assert info["gpu"]["cuda_available"] == torch.cuda.is_available()
    assert len(info["gpu"]["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    numba = pytest.importorskip("numba")
    assert info["threads"]["numba"] == numba.get_num_threads()
    assert info["numba"]["cache_dir"] and os.path.isabs(info["numba"]["cache_dir"])
    ort = pytest.importorskip("onnxruntime")
    assert info["onnxruntime"]["providers"] == ort.get_available_providers()
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    assert set(info["triton"]) >= {"installed"}


def test_info_text_is_one_line_per_fact(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    keys = [line.split()[0] for line in out]
    for key in ("fastddpm.version", "cpu.name", "cpu.features.avx2", "cpu.features.avx512_bf16", "threads.torch",
                "threads.numba", "versions.torch", "versions.onnxruntime", "gpu.cuda_available", "triton.installed",
                "onnxruntime.providers", "numba.cache_dir", "caches.onnx_export"):
        assert key in keys, key
    assert len(keys) == len(set(keys))


def test_info_reports_missing_and_broken_packages(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))

    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(machine, "numba_info", broken)
    info = machine.describe()
    assert info["onnxruntime"] == {"installed": False}
    assert info["numba"] == {"error": "RuntimeError: driver exploded"}
    json.dumps(info)  # serialisable whatever failed
