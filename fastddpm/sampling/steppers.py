"""Per-step updates of a plan on one batch: host arrays (numpy | numba) or torch tensors (any device).

A stepper is built once per run (arguments validated there, tables prepared) and then called
``step(k, x, m, out, offset)`` for loop position k = 0 … K−1 on a batch whose first sample has
global noise offset ``offset`` (= s0·D). Step k draws its noise from stream k + 1.

Host steppers call the fused kernels directly (the public ops' per-call validation costs more
than the whole update at n = 1); the torch stepper launches one fused Triton kernel per step
that reads its coefficient row, step index and noise counter from device memory, so a CUDA loop
never syncs and a run of steps replays from a CUDA graph.
"""
from __future__ import annotations

import numpy as np

from ..backends import kernels
from ..kernels import coefficients as KC
from ..kernels.reference import dpmpp2m_update as dpmpp2m_update_reference  # the oracle (backend numpy)


def numba_randn(flat: np.ndarray, seed: int, stream: int, offset: int) -> None:
    """fastddpm.kernels.numba.randn without the public op's per-call checks."""
    from ..kernels.numba import randn

    randn(flat, seed, stream, offset)


class HostStepper:
    """Steps on C-contiguous NumPy arrays [B, …] with the numpy (reference) or numba kernels.

    The Numba path calls the fused kernels of fastddpm.kernels.numba directly with arguments
    prepared once per run (the public ops re-validate on every call, ~10 µs); the loop binds a
    batch once (:meth:`bind`) and then makes one kernel call per step.
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
            # Per-step tables as views of one array each ([1] t and prev_t, [1, C] rows; list()
            # splits an array into views in C) instead of an array built per step.
            K = plan.num_steps
            self._t_arr = list(np.asarray(plan.t, dtype=np.int64).reshape(K, 1))
            self._p_arr = list(np.asarray(plan.prev_t, dtype=np.int64).reshape(K, 1))
            self._rows = list(np.ascontiguousarray(plan.coef).reshape(K, 1, -1))
            self._keys = [philox_key(self.seed, k + 1) for k in range(K)]  # step k draws stream k + 1
            if plan.sampler == "ddpm":
                self._kernel = numba_step._step_kernel
                self._mode = (False, False)  # is_ddim, is_eps
                self._needs_noise = [p >= 0 for p in self.prev]
            elif plan.sampler == "ddim":
                self._kernel = numba_step._step_kernel
                self._mode = (True, plan.prediction == "epsilon")
                self._needs_noise = [p >= 0 and plan.eta > 0 for p in self.prev]
            else:
                from ..kernels.numba.dpmpp2m import _dpmpp2m_kernel

                self._kernel = _dpmpp2m_kernel
                self._pred_sample = KC.PRED_CODE[plan.prediction] == KC.PRED_SAMPLE
            self._clip = float(plan.clip or 0.0)
            self._has_clip = plan.clip is not None

    def reset(self, like: np.ndarray) -> None:
        """Start a new batch (multistep state is per batch)."""
        if self.plan.sampler == "dpmpp2m":
            if self.x0_prev is None or self.x0_prev.shape != like.shape or self.x0_prev.dtype != like.dtype:
                self.x0_prev = np.empty_like(like)
            self.x0_prev.fill(0)

    def _tails(self, x: np.ndarray, out: np.ndarray, offset: int, ks):
        """(compiled kernel, [arguments after the model output, per step k in ks]) for the Numba
        kernels on batch x → out (C-contiguous, x.shape) with noise offset ``offset``."""
        size, of = x.size, out.reshape(-1)
        launch = self._kernel.pick(size)  # the serial compile below PARALLEL_MIN_ELEMENTS
        if self.plan.sampler == "dpmpp2m":
            x0f = self.x0_prev.reshape(-1)
            rows = [tuple(float(v) for v in self.coef[k]) for k in ks]
            return launch, [(of, x0f, *row, self._pred_sample, self._clip, self._has_clip) for row in rows]
        empty, off = of[:0], np.int64(offset)
        per, n_chunks = size // x.shape[0], (size + self._chunk - 1) // self._chunk
        return launch, [(of, self._t_arr[k], 0, self._p_arr[k], 0, self._rows[k], 0, False, *self._mode,
                         self._clip, self._has_clip, empty, False, self._needs_noise[k], *self._keys[k], off, per,
                         n_chunks) for k in ks]

    def bind(self, x: np.ndarray, out: np.ndarray, offset: int):
        """``step(k, m)`` ≡ ``self.step(k, x, m, out, offset)`` for one batch (after ``reset``),
        with everything but the model output m resolved here, once per batch: the flat views,
        the compiled kernel (serial or parallel by size) and each step's argument tuple. At
        n = 1 this takes the update call from ~4 µs to ~2 µs per step (the Numba dispatch of
        22 arguments is what remains; 2-core EPYC)."""
        if self.backend != "numba":
            def step(k, m):
                self.step(k, x, m, out, offset)
            return step
        xf = x.reshape(-1)
        launch, tails = self._tails(x, out, offset, range(self.plan.num_steps))

        def step(k, m):
            launch(xf, m.reshape(-1), *tails[k])
        return step

    def step(self, k: int, x: np.ndarray, m: np.ndarray, out: np.ndarray, offset: int) -> None:
        p = self.plan
        if self.backend == "numba":
            launch, (tail,) = self._tails(x, out, offset, (k,))
            launch(x.reshape(-1), m.reshape(-1), *tail)
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
    """Steps on torch tensors [B, …] of one device, driven by tensors on that device.

    Per run (built here, before any graph capture): ``t_table`` int64 [K + 1] (the visited
    timesteps, padded), ``ctl`` int64 [3] = (k, offset, seed) and ``t_now`` int64 [1]
    (t of step k, what the network is fed as a stride-0 view ``t_input(B)``). ``update``
    does step ctl[0] in place and advances ctl[0] and t_now on the device, so a run of steps
    has no host work between steps and can be replayed from a CUDA graph.

    backend "triton" (CUDA, or CPU tensors under TRITON_INTERPRET=1): the update is ONE
    launch of the fused kernel (fastddpm.kernels.triton.update) that reads row ctl[0] of a
    float32 coefficient table and draws its noise in-kernel (stream k + 1); float32, float16
    or bfloat16 data, float32 math. backend "torch": the reference chain of torch ops with
    noise from fastddpm.randn into a buffer (host step counter; never graph-captured).
    """

    def __init__(self, plan, device, dtype, seed: int, backend: str = "triton"):
        import torch

        if backend not in ("triton", "torch"):
            raise ValueError(f"TorchStepper backend must be 'triton' or 'torch', got {backend!r}")
        self.torch = torch
        self.plan, self.seed, self.backend = plan, int(seed), backend
        self.device, self.dtype = torch.device(device), dtype
        K = plan.num_steps
        self.t_table = torch.tensor(list(map(int, plan.t)) + [0], dtype=torch.int64, device=self.device)
        self.ctl = torch.zeros(3, dtype=torch.int64, device=self.device)
        self.t_now = self.t_table[:1].clone()
        self.t0 = int(plan.t[0])
        self.k, self.offset = 0, 0  # host copies of the step index (the torch backend's noise stream; error messages)
        if backend == "triton":
            # float32 rows whatever the data dtype: the kernel computes in float32.
            self.coef = torch.as_tensor(plan.coef, dtype=torch.float64).to(device=self.device, dtype=torch.float32)
            self._launchers = {}
        else:
            # Rounded to the data dtype once, as the CPU kernels do per step.
            self.coef = torch.as_tensor(plan.coef, dtype=torch.float64).to(device=self.device, dtype=dtype)
        assert self.coef.shape[0] == K

    def state(self, like) -> dict:
        """Per-batch buffers: x̂0 of the previous step (dpmpp2m), the noise buffer (torch backend)."""
        torch = self.torch
        return {
            "x0_prev": torch.zeros_like(like) if self.plan.sampler == "dpmpp2m" else None,
            "noise": torch.zeros_like(like) if self.plan.noisy and self.backend == "torch" else None,
        }

    def begin(self, x, state: dict, offset: int) -> None:
        """Start a batch whose first element has global noise offset ``offset``: x ← x_T
        (stream 0), step index 0, t_now = t[0], x̂0_prev = 0. Device writes only (no sync)."""
        from ..ops import randn

        if self.backend == "triton":
            from ..kernels.triton import randn as triton_randn

            triton_randn(x.view(-1), self.seed, 0, offset)
        else:
            x.copy_(randn(tuple(x.shape), seed=self.seed, stream=0, offset=offset, dtype=self.dtype, like=x,
                          backend="auto"))
        self.ctl[0].fill_(0)
        self.ctl[1].fill_(offset)
        self.ctl[2].fill_(self.seed)
        self.t_now.fill_(self.t0)
        self.k, self.offset = 0, int(offset)
        if state["x0_prev"] is not None:
            state["x0_prev"].zero_()

    def t_input(self, batch: int):
        """t of the current step as int64 [B], a stride-0 view (nets compute their time path once)."""
        return self.t_now.expand(batch)

    def update(self, x, m, state: dict) -> None:
        """x ← the update of step ctl[0] from the model output m (same shape; any float dtype
        on the triton backend); then the step index and t_now advance. Graph-capturable
        (triton backend)."""
        if self.backend == "triton":
            self._launcher(x)(x, m, state["x0_prev"])
        else:
            self._torch_update(x, m, state)
        self.ctl[:1].add_(1)
        self.torch.index_select(self.t_table, 0, self.ctl[:1], out=self.t_now)
        self.k += 1

    def _launcher(self, x):
        from ..kernels.triton.update import LoopUpdate

        key = (x.numel(), x.shape[0], self.offset & 3)
        fn = self._launchers.get(key)
        if fn is None:
            p = self.plan
            fn = self._launchers[key] = LoopUpdate(
                p.sampler, self.coef, self.ctl, x.numel(), x.numel() // max(1, x.shape[0]),
                prediction=p.prediction, clip=p.clip, noise=p.noisy, shift=self.offset & 3)
        return fn

    def _torch_update(self, x, m, state) -> None:
        """The reference chain of torch ops (backend="torch")."""
        from ..ops import randn

        p, k = self.plan, self.k
        noise = None
        if state["noise"] is not None and p.prev_t[k] >= 0:
            noise = state["noise"]
            noise.copy_(randn(tuple(noise.shape), seed=self.seed, stream=k + 1, offset=self.offset,
                              dtype=self.dtype, like=noise, backend="auto"))
        y, x0 = KC.apply_row(p.sampler, self.coef[k], x, m.to(self.dtype), p.prediction, p.clip, noise,
                             state["x0_prev"], xp=self.torch)
        if p.sampler == "dpmpp2m":
            state["x0_prev"].copy_(x0)
        x.copy_(y)
