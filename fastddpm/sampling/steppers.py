"""Per-step updates of a plan on one batch: host arrays (numpy | numba) or torch tensors (any device).

A stepper is built once per run (arguments validated there, tables prepared) and then called
``step(k, x, m, out, offset)`` for loop position k = 0 … K−1 on a batch whose first sample has
global noise offset ``offset`` (= s0·D). Step k draws its noise from stream k + 1.

Host steppers call the fused kernels directly (the public ops' per-call validation costs more
than the whole update at n = 1); torch steppers use vectorised torch ops on per-step
coefficient rows that live on the device, so a CUDA loop never syncs and can be graph-captured.
"""
from __future__ import annotations

import numpy as np

from ..backends import kernels
from ..kernels.reference import PREDICTIONS, VARIANCES

_PRED = {p: i for i, p in enumerate(PREDICTIONS)}
_VAR = {v: i for i, v in enumerate(VARIANCES)}


def dpmpp2m_update_reference(x_t, model_output, x0_prev, cx, cm, a, b, c, prediction, clip):
    """NumPy oracle of the fused DPM-Solver++(2M) update; returns (x′, x̂0). Shapes: all [B, …]."""
    dt = x_t.dtype.type
    x0 = model_output.copy() if prediction == "sample" else dt(cx) * x_t + dt(cm) * model_output
    if clip is not None:
        x0 = np.clip(x0, dt(-clip), dt(clip))
    return dt(a) * x_t + dt(b) * x0 + dt(c) * x0_prev, x0


# Below this many elements per step the Numba steps run serially: an OpenMP launch on two busy
# cores cost 5–12 ms here (vs 2.5 µs for the serial kernel at n = 2; measured while loaded).
PARALLEL_MIN_ELEMENTS = 2**15


def _serial_twin(kernel):
    """The serial compile of a parallel Numba kernel (prange runs as range), cached to disk under
    its own name (``<name>_serial``) so that it never shares the parallel kernel's cache entry."""
    import types

    import numba

    if hasattr(kernel, "serial"):  # a fastddpm.kernels.numba.common.kernel launcher has both
        return kernel.serial
    twin = _SERIAL.get(kernel)
    if twin is None:
        f = kernel.py_func
        copy = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
        copy.__qualname__ = f.__qualname__ + "_serial"
        copy.__module__ = f.__module__
        twin = _SERIAL[kernel] = numba.njit(cache=True)(copy)
    return twin


_SERIAL = {}


def numba_randn(flat: np.ndarray, seed: int, stream: int, offset: int) -> None:
    """fastddpm.kernels.numba.randn, serial for small arrays (see PARALLEL_MIN_ELEMENTS)."""
    import importlib

    from ..kernels.numba.common import num_chunks, philox_key

    # The package re-exports the function ``randn`` under the module's name.
    kernel = importlib.import_module("fastddpm.kernels.numba.randn")._randn_kernel
    if flat.size < PARALLEL_MIN_ELEMENTS:
        kernel = _serial_twin(kernel)
    else:
        kernel = getattr(kernel, "parallel", kernel)
    k0, k1 = philox_key(seed, stream)
    kernel(flat, k0, k1, np.int64(offset), num_chunks(flat.shape[0]))


class HostStepper:
    """Steps on C-contiguous NumPy arrays [B, …] with the numpy (reference) or numba kernels.

    The Numba path calls the fused kernels of fastddpm.kernels.numba directly with arguments
    prepared once per run (the public ops re-validate on every call, ~10 µs).
    """

    def __init__(self, plan, schedule, backend: str, seed: int):
        if backend not in ("numpy", "numba"):
            raise ValueError(f"HostStepper backend must be 'numpy' or 'numba', got {backend!r}")
        self.plan, self.backend, self.seed = plan, backend, int(seed)
        self.ac = np.ascontiguousarray(schedule.alphas_cumprod, dtype=np.float64)
        self.t = [int(v) for v in plan.t]
        self.prev = [int(v) for v in plan.prev_t]
        self.coef = plan.coef.tolist()
        self.x0_prev = None
        if backend == "numba":
            from ..kernels.numba import step as numba_step
            from ..kernels.numba.common import CHUNK, philox_key

            self._chunk = CHUNK
            self._t_arr = [np.array([v], dtype=np.int64) for v in self.t]
            self._p_arr = [np.array([v], dtype=np.int64) for v in self.prev]
            self._keys = [philox_key(self.seed, k + 1) for k in range(plan.num_steps)]
            self._pred = _PRED[plan.prediction]
            if plan.sampler == "ddpm":
                self._kernel = numba_step._ddpm_kernel
                self._mode = _VAR[plan.variance]
                self._needs_noise = [p >= 0 for p in self.prev]
            elif plan.sampler == "ddim":
                self._kernel = numba_step._ddim_kernel
                self._mode = float(plan.eta)
                self._needs_noise = [p >= 0 and plan.eta > 0 for p in self.prev]
            else:
                from ..kernels.numba.dpmpp2m import dpmpp2m_update

                self._dpm = dpmpp2m_update
            self._clip = float(plan.clip or 0.0)
            self._has_clip = plan.clip is not None

    def reset(self, like: np.ndarray) -> None:
        """Start a new batch (multistep state is per batch)."""
        if self.plan.sampler == "dpmpp2m":
            if self.x0_prev is None or self.x0_prev.shape != like.shape or self.x0_prev.dtype != like.dtype:
                self.x0_prev = np.empty_like(like)
            self.x0_prev.fill(0)

    def step(self, k: int, x: np.ndarray, m: np.ndarray, out: np.ndarray, offset: int) -> None:
        p = self.plan
        if self.backend == "numba":
            size = x.size
            parallel = size >= PARALLEL_MIN_ELEMENTS
            if p.sampler == "dpmpp2m":
                cx, cm, a, b, c = self.coef[k]
                self._dpm(x.reshape(-1), m.reshape(-1), out.reshape(-1), self.x0_prev.reshape(-1),
                          cx, cm, a, b, c, self._pred, p.clip, parallel=parallel)
                return
            kernel = getattr(self._kernel, "parallel", self._kernel) if parallel else _serial_twin(self._kernel)
            k0, k1 = self._keys[k]
            xf = x.reshape(-1)
            kernel(xf, m.reshape(-1), out.reshape(-1), self._t_arr[k], 0, self._p_arr[k], 0, self.ac,
                   self._pred, self._mode, self._clip, self._has_clip, xf[:0], False, self._needs_noise[k],
                   k0, k1, np.int64(offset), size // x.shape[0], (size + self._chunk - 1) // self._chunk)
            return
        t, prev = self.t[k], self.prev[k]
        ref = kernels("numpy")
        if p.sampler == "ddpm":
            out[...] = ref.ddpm_step(self.ac, x, m, t, prev, p.prediction, p.variance, p.clip, None,
                                     self.seed, k + 1, offset)
        elif p.sampler == "ddim":
            out[...] = ref.ddim_step(self.ac, x, m, t, prev, p.eta, p.prediction, p.clip, None,
                                     self.seed, k + 1, offset)
        else:
            y, x0 = dpmpp2m_update_reference(x, m, self.x0_prev, *self.coef[k], p.prediction, p.clip)
            self.x0_prev[...] = x0
            out[...] = y


class TorchStepper:
    """Steps on torch tensors [B, …] of one device with vectorised ops and device-resident tables.

    Noise comes from fastddpm.randn (Triton on CUDA, Numba on CPU tensors) into a per-batch
    buffer; the update reads coefficient row ``coef[k]`` (a device view, no sync).
    """

    def __init__(self, plan, device, dtype, seed: int, backend: str = "auto"):
        import torch

        self.torch = torch
        self.plan, self.seed, self.backend = plan, int(seed), backend
        self.device, self.dtype = torch.device(device), dtype
        # Rounded to the data dtype once, as the CPU kernels do per step.
        self.coef = torch.as_tensor(plan.coef, dtype=torch.float64).to(device=self.device, dtype=dtype)
        self.eps_pred = plan.prediction == "epsilon"
        self.sample_pred = plan.prediction == "sample"

    def state(self, like) -> dict:
        """Per-batch buffers: x̂0 of the previous step (dpmpp2m) and the noise buffer."""
        torch = self.torch
        return {
            "x0_prev": torch.zeros_like(like) if self.plan.sampler == "dpmpp2m" else None,
            "noise": torch.zeros_like(like) if self.plan.noisy else None,
        }

    def draw_noise(self, k: int, state: dict, offset: int):
        """Stream k + 1 noise for step k into state["noise"] (None when the step adds none)."""
        if state["noise"] is None or self.plan.prev_t[k] < 0:
            return None
        from ..ops import randn

        buf = state["noise"]
        buf.copy_(randn(tuple(buf.shape), seed=self.seed, stream=k + 1, offset=offset, dtype=self.dtype,
                        like=buf, backend=self.backend))
        return buf

    def update(self, row, x, m, out, noise, state) -> None:
        """The fused update from a coefficient row (a [C] device tensor); graph-capturable."""
        p = self.plan
        col = [row[i] for i in range(row.shape[0])]
        x0 = m if self.sample_pred else col[0] * x + col[1] * m
        if p.clip is not None:
            x0 = x0.clamp(-p.clip, p.clip)
        if p.sampler == "ddpm":
            y = col[2] * x0 + col[3] * x
            if noise is not None:
                y = y + col[4] * noise
        elif p.sampler == "ddim":
            eps = m if self.eps_pred else (x - col[2] * x0) / col[3]
            y = col[4] * x0 + col[5] * eps
            if noise is not None:
                y = y + col[6] * noise
        else:
            y = col[2] * x + col[3] * x0 + col[4] * state["x0_prev"]
            state["x0_prev"].copy_(x0)
        out.copy_(y)
