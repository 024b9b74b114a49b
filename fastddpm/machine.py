"""What this machine and this installation are: CPU model and features, thread counts, GPU, library
versions, ONNX Runtime providers and cache locations — what ``fastddpm info`` prints for a bug
report, what ``fastddpm bench`` heads its tables with and what the demo's report names.

Nothing here is imported by the engine; every probe is guarded, so a missing optional package (or
a broken one) is reported, never raised. Importing this module imports no torch.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

from . import __version__

# The distributions fastddpm's runtime and extras use (pyproject.toml), by distribution name; the
# versions come from the installed metadata, so no package is imported to name its version.
DEPENDENCIES = ("numpy", "numba", "llvmlite", "torch", "safetensors", "tqdm", "triton", "onnx", "onnxruntime",
                "onnxruntime-gpu", "diffusers", "matplotlib", "scipy", "pot", "scikit-learn")
# CPU flags (Linux /proc/cpuinfo names) that decide which kernels the JIT compilers pick:
# AVX2/FMA (Numba's and onnxruntime's vector code), AVX-512 (wider vectors; onnxruntime and torch
# have AVX-512 kernels) and bf16 (AVX512_BF16 / AMX: native bfloat16 dot products).
CPU_FEATURES = ("sse4_2", "fma", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "amx_bf16", "amx_tile")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR",
                    "TRITON_INTERPRET", "FASTDDPM_CACHE", "CUDA_VISIBLE_DEVICES")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id() -> dict[str, str | None]:
    """Vendor, family, model and stepping from /proc/cpuinfo (a virtual machine may show only a
    generic model name such as "AMD EPYC"; family 25 model 17 then says which generation)."""
    keys = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping"}
    out = dict.fromkeys(keys.values())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    out[keys[key.strip()]] = value.strip()
    except OSError:
        pass
    return out


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo on Linux; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_features() -> dict[str, bool | None]:
    """Each of :data:`CPU_FEATURES` → present (None for all when the flags cannot be read)."""
    flags = cpu_flags()
    return {name: (name in flags) if flags else None for name in CPU_FEATURES}


def cores() -> dict[str, int | None]:
    """Logical CPUs of the machine and those this process may run on (its affinity mask)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"logical": os.cpu_count(), "usable": usable}


def versions() -> dict[str, str | None]:
    """Installed version of each of :data:`DEPENDENCIES` (None: not installed)."""
    out = {}
    for name in DEPENDENCIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _probe(fn):
    """fn() or {'error': 'Type: message'}: one broken package must not hide the rest of the report."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a report, not a check
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}


def torch_info() -> dict:
    """torch's build, CPU capability, threads and CUDA devices (installed: False when absent)."""
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    import torch

    info = {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
            "cpu_capability": _probe(torch.backends.cpu.get_cpu_capability),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cuda_available": torch.cuda.is_available(), "gpus": []}
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                                 "memory_gib": round(p.total_memory / 2**30, 1)})
    return info


def numba_info() -> dict:
    """Numba's version, threads, threading layer and where its kernel cache lives."""
    if importlib.util.find_spec("numba") is None:
        return {"installed": False}
    import numba

    info = {"installed": True, "version": numba.__version__, "threads": numba.get_num_threads(),
            "max_threads": numba.config.NUMBA_NUM_THREADS, "cache_dir": numba_cache_dir()}
    info["threading_layer"] = numba.config.THREADING_LAYER  # the configured one ("default": tbb, omp, workqueue)
    return info


def numba_cache_dir() -> str:
    """Where Numba writes fastddpm's compiled kernels (``cache=True``): $NUMBA_CACHE_DIR, else the
    __pycache__ beside kernels/numba when writable, else Numba's per-user cache — the answer of
    Numba's own locators for the kernel module's source file."""
    spec = importlib.util.find_spec("fastddpm.kernels.numba.step")
    source = spec.origin if spec is not None else None
    try:
        from numba.core.caching import _CacheImpl

        def probe():  # a stand-in function "defined" in the kernel module's file
            pass

        probe.__code__ = probe.__code__.replace(co_filename=source)
        for locator in _CacheImpl._locator_classes:
            found = locator.from_function(probe, source)
            if found is not None:
                return found.get_cache_path()
    except Exception:  # noqa: BLE001 - Numba internals differ between versions; say what is known
        pass
    from numba import config

    return config.CACHE_DIR or (os.path.join(os.path.dirname(source), "__pycache__") if source else "unknown")


def triton_info() -> dict:
    """Triton's version and what it would compile for (a CUDA GPU, the interpreter, or nothing)."""
    try:
        version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return {"installed": False}
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    torch = sys.modules.get("torch")
    gpu = bool(torch is not None and torch.cuda.is_available())
    return {"installed": True, "version": version, "interpreter": interpret,
            "runs_on": "CUDA GPU" if gpu and not interpret else ("CPU interpreter (TRITON_INTERPRET=1)" if interpret
                                                                  else "nothing here (no CUDA GPU)")}


def onnxruntime_info() -> dict:
    """onnxruntime's version, providers and the default provider fastddpm picks."""
    if importlib.util.find_spec("onnxruntime") is None:
        return {"installed": False}
    import onnxruntime as ort

    return {"installed": True, "version": ort.__version__, "providers": list(ort.get_available_providers()),
            "device": _probe(ort.get_device), "onnx_installed": importlib.util.find_spec("onnx") is not None}


def describe(extra: dict | None = None) -> dict:
    """Everything above as one JSON-serialisable dict (``fastddpm info --json``)."""
    torch = _probe(torch_info)
    info = {
        "fastddpm": {"version": __version__, "path": os.path.dirname(os.path.abspath(__file__))},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine()},
        "cpu": {"name": cpu_model(), **cpu_id(), **cores(), "features": cpu_features(),
                "torch_capability": torch.get("cpu_capability") if isinstance(torch, dict) else None},
        "load_average": load_average(),
        "threads": {"torch": torch.get("threads"), "torch_interop": torch.get("interop_threads"),
                    "numba": None, "environment": {k: os.environ.get(k) for k in THREAD_VARIABLES}},
        "versions": versions(),
        "torch": torch,
        "numba": _probe(numba_info),
        "triton": _probe(triton_info),
        "onnxruntime": _probe(onnxruntime_info),
    }
    info["threads"]["numba"] = info["numba"].get("threads")
    info["gpu"] = {"cuda_available": torch.get("cuda_available"), "devices": torch.get("gpus", [])}
    info.update(extra or {})
    return info


def format_text(info: dict) -> str:
    """``describe()`` as the lines ``fastddpm info`` prints (section: key value)."""
    lines = []

    def emit(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                emit(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                emit(f"{prefix}[{i}]", v)
        else:
            text = ", ".join(map(str, value)) if isinstance(value, list) else ("-" if value is None else str(value))
            lines.append(f"{prefix:40s} {text}")

    emit("", info)
    return "\n".join(lines)


__all__ = ["cpu_model", "cpu_flags", "cpu_features", "cores", "versions", "describe", "format_text",
           "numba_cache_dir", "CPU_FEATURES", "DEPENDENCIES"]
