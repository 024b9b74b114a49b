"""Backend choice: which kernel family runs a call, and a clear error when it cannot.

- ``"auto"``: CUDA tensors → Triton; CPU tensors and NumPy arrays → Numba (zero copy).
- ``"numpy"``: kernels/reference.py, the oracle (slow, exact).
- ``"numba"``: kernels/numba, parallel CPU kernels.
- ``"triton"``: kernels/triton, GPU kernels; on CPU tensors only under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import importlib

from .kernels._checks import interpreting_triton, is_torch_tensor

BACKENDS = ("auto", "numpy", "numba", "triton")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run in this environment (the message says why)."""


def _device_type(x) -> str:
    return x.device.type if is_torch_tensor(x) else "cpu"


def resolve(backend: str, *arrays) -> str:
    """The concrete backend for a call on ``arrays`` (None entries are ignored)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    arrays = [a for a in arrays if a is not None]
    devices = {_device_type(a) for a in arrays}
    on_gpu = bool(devices - {"cpu"})
    if backend == "auto":
        backend = "triton" if on_gpu else "numba"
    if backend in ("numpy", "numba") and on_gpu:
        raise ValueError(
            f"backend={backend!r} runs on the CPU but got tensors on {sorted(devices - {'cpu'})}; "
            "use backend='triton' (or 'auto') for GPU tensors, or move them with .cpu()"
        )
    if backend == "triton":
        if not on_gpu and not interpreting_triton():
            raise BackendUnavailableError(
                "backend='triton' needs CUDA tensors; on CPU tensors it runs only under the "
                "Triton interpreter (set TRITON_INTERPRET=1 before importing triton). "
                "Use backend='numba' for CPU arrays."
            )
        if any(not is_torch_tensor(a) for a in arrays):
            raise TypeError("backend='triton' takes torch tensors; got a NumPy array (use torch.from_numpy)")
    _require(backend)
    return backend


_INSTALL_HINT = {
    "numba": "pip install numba",
    "triton": "pip install 'fastddpm[triton]' (Triton ships with CUDA builds of torch)",
}


def _require(backend: str) -> None:
    if backend == "numpy":
        return
    try:
        importlib.import_module(backend)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend={backend!r} is not installed here ({exc}); install it with: {_INSTALL_HINT[backend]}"
        ) from exc


def kernels(backend: str):
    """The kernel module of a concrete backend."""
    if backend == "numpy":
        from .kernels import reference

        return reference
    return importlib.import_module(f"fastddpm.kernels.{backend}")
