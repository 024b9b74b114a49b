"""A plan's per-call updates on one batch: one stepper per device family, x_T drawn in one place.

- :class:`HostStepper`: C-contiguous NumPy arrays [B, …] (CPU); the update is the one fused
  Numba kernel (fastddpm.kernels.numba.update) or, with ``backend="numpy"``, the same row
  applied with NumPy array operators (kernels.coefficients.apply_row).
- :class:`TorchStepper`: torch tensors [B, …] of one device; the update is ONE launch of the
  fused Triton kernel (fastddpm.kernels.triton.update) that reads its row, ring slots, call
  index and noise counter from device memory, so a CUDA loop never syncs and a run of calls
  replays from a CUDA graph (fastddpm.sampling.graphs); ``backend="torch"`` applies the row
  with torch operators (the reference chain, never the hot path).

A stepper is built once per run (tables prepared there) and then, per batch, ``begin`` draws
x_T (:func:`draw_initial`: stream 0 at the batch's global offset) and zero-fills the state s
and the history ring; call k of the plan then draws its noise from stream k + 1 at the same
offsets. Nothing here knows a sampler: ring depth, state, noise and the variance channel come
from the plan's table.
"""
from __future__ import annotations

import numpy as np

from ..kernels import coefficients as KC


def draw_initial(x, seed: int, offset: int, backend: str) -> None:
    """x ← x_T: normals of (seed, stream 0) at global offset ``offset`` + element — the one place a
    run's starting noise is drawn. ``x``: a C-contiguous NumPy array (backend "numba" or
    "numpy") or a contiguous torch tensor (backend "triton", else fastddpm.randn's own choice)."""
    flat = x.reshape(-1)
    if backend == "numba":
        from ..kernels.numba import randn

        randn(flat, seed, 0, offset)
    elif backend == "numpy":
        from ..kernels import reference

        flat[:] = reference.randn(flat.size, seed, 0, offset)
    elif backend == "triton":
        from ..kernels.triton import randn

        randn(flat, seed, 0, offset)
    else:
        from ..ops import randn

        x.copy_(randn(tuple(x.shape), seed=seed, stream=0, offset=offset, dtype=x.dtype, like=x, backend="auto"))


class HostStepper:
    """Calls of a plan on host arrays: ``step = begin(x, offset)`` per batch, then ``step(k, m)``.

    Per batch (``begin``): x_T into x, the state and ring zeroed, and for every call k its kernel
    arguments (ring slots, noise stream, flat views) bound once, so that a call is one Numba
    dispatch (~2 µs at n = 1 on the 2-core EPYC).
    """

    def __init__(self, plan, backend: str, seed: int, dtype):
        if backend not in ("numpy", "numba"):
            raise ValueError(f"HostStepper backend must be 'numpy' or 'numba', got {backend!r}")
        tab = plan.table
        self.plan, self.backend, self.seed = plan, backend, int(seed)
        self.dtype = np.dtype(dtype)
        self.coef = np.ascontiguousarray(tab.rows, dtype=self.dtype)  # rounded once to the data dtype
        self.slots = tab.slots()
        self.depth, self.has_state, self.variance = tab.depth, tab.reads_state or tab.writes_state, tab.variance
        self.draws = [bool(v) for v in tab.rows[:, KC.COL["yz"]] != 0]  # call k adds noise
        self._ridx = list(np.arange(tab.calls, dtype=np.int64).reshape(-1, 1))  # [k] views
        self._bufs = None

    def _buffers(self, x: np.ndarray):
        """(state, ring) for batches shaped like x, reused across batches and zero-filled."""
        shape = (x.size,)
        if self._bufs is None or self._bufs[0] != (shape, x.dtype):
            s = np.empty(shape, x.dtype) if self.has_state else None
            ring = np.empty((self.depth + 1,) + shape, x.dtype) if self.depth else None
            self._bufs = ((shape, x.dtype), s, ring)
        _, s, ring = self._bufs
        for b in (s, ring):
            if b is not None:
                b.fill(0)
        return s, ring

    def begin(self, x: np.ndarray, offset: int, cond=None, mirror: np.ndarray | None = None, *,
              draw: bool = True):
        """Start a batch (x C-contiguous [B, …], its first element at global noise offset
        ``offset``): x ← x_T (``draw=False``: x already holds the starting state, e.g. a teacher's
        solve from x_t in fastddpm.distill); returns ``step(k, m)`` updating x in place from the
        output m of call k.

        ``cond`` (fastddpm.sampling.guidance.Conditioning): a guided call k reads both halves of a
        2B-row m; ``mirror`` (like x: the second half of the run's 2B-row network input) receives
        x′ on the calls before a guided call, and the starting x here when call 0 is guided."""
        if draw:
            draw_initial(x, self.seed, offset, self.backend)
        s, ring = self._buffers(x)
        B = x.shape[0]
        per_sample = x.size // max(1, B)
        xf = x.reshape(-1)
        K = self.plan.num_steps
        guided = [cond is not None and cond.guided(k) for k in range(K)]
        mf = None if mirror is None else mirror.reshape(-1)
        mirrors = [mf if cond is not None and cond.mirror[k] else None for k in range(K)]
        if mf is not None and guided[0]:
            mf[...] = xf
        phi = cond.rescale if cond is not None else 0.0
        w = cond.scale if cond is not None else 1.0
        if self.backend == "numpy":
            return self._numpy_step(x, s, ring, offset, per_sample, guided, mirrors, w, phi)
        from ..kernels.numba.update import bind, guide_scales, launch_args

        rb = np.ones(B, dtype=x.dtype) if phi and any(guided) else None  # guidance_rescale's factors, per call
        calls = []
        for k in range(K):
            w_slot, hs = self.slots[k, 0], self.slots[k, 1:1 + self.depth]
            calls.append(bind(*launch_args(xf, xf, self.coef, self._ridx[k], clip=self.plan.clip, s=s,
                                           h=tuple(ring[j] for j in hs), q=ring[w_slot] if w_slot >= 0 else None,
                                           draw_noise=self.draws[k], seed=self.seed, stream=k + 1, offset=offset,
                                           per_sample=per_sample, variance=self.variance,
                                           guidance=w if guided[k] else None,
                                           rescale=rb if guided[k] and rb is not None else None,
                                           mirror=mirrors[k])))
        if rb is None:
            def step(k, m):
                calls[k](m.reshape(-1))
            return step
        variance = self.variance

        def step_rescaled(k, m):
            mflat = m.reshape(-1)
            if guided[k]:  # one read of both halves → r [B], then the fused update multiplies by r_b
                guide_scales(mflat, B, per_sample, w, phi, variance=variance, out=rb)
            calls[k](mflat)
        return step_rescaled

    def _numpy_step(self, x, s, ring, offset, per_sample, guided=(), mirrors=(), w=1.0, phi=0.0):
        """backend="numpy": the same rows with NumPy operators, noise from kernels/reference.py."""
        from ..kernels import reference

        xf, dt = x.reshape(-1), x.dtype.type
        B = x.shape[0]

        def step(k, m):
            mf = m.reshape(-1)
            v = None
            rows = 2 * B if guided and guided[k] else B
            if self.variance is not None:  # [rows, 2D] → mean and variance channel
                halves = mf.reshape(rows, 2, per_sample)
                mf, v = halves[:, 0].reshape(-1), halves[:B, 1].reshape(-1)
            if rows == 2 * B:  # the guided output, as the fused kernel forms it
                c, u = mf[:B * per_sample], mf[B * per_sample:]
                mf = c + dt(w - 1.0) * (c - u)
                if phi:
                    mf = mf * np.repeat(_rescale_factors(c, mf, B, per_sample, phi).astype(x.dtype), per_sample)
            z = reference.randn(xf.size, self.seed, k + 1, offset).astype(dt) if self.draws[k] else None
            w_slot, hs = self.slots[k, 0], self.slots[k, 1:1 + self.depth]
            row = self.coef[k]
            if self.variance == "sqrt" and z is not None:
                z, v = z * np.sqrt(v), None
                row = row.copy()
                row[KC.COL["vg"]] = row[KC.COL["vb"]] = 0
            y, s_new, q = KC.apply_row(row, xf, mf, clip=None if self.plan.clip is None else dt(self.plan.clip),
                                       s=s, h=tuple(ring[j] for j in hs), z=z, v=v)
            if w_slot >= 0:
                ring[w_slot] = q if q is not None else 0
            if s is not None:
                s[...] = s_new if s_new is not None else 0
            xf[...] = y
            if mirrors and mirrors[k] is not None:
                mirrors[k][...] = y
        return step


def _rescale_factors(c, g, B: int, D: int, phi: float) -> np.ndarray:
    """guidance_rescale's r_b = φ·σ(c_b)/σ(g_b) + 1 − φ (float64; 1 where σ(g_b) = 0 or D = 1) —
    what kernels/numba/update.guide_scales computes, in NumPy operators."""
    if D < 2:
        return np.ones(B)
    sc = c.reshape(B, D).astype(np.float64).std(axis=1, ddof=1)
    sg = g.reshape(B, D).astype(np.float64).std(axis=1, ddof=1)
    return np.where(sg > 0, phi * sc / np.where(sg > 0, sg, 1.0) + (1.0 - phi), 1.0)


class TorchStepper:
    """Calls of a plan on torch tensors [B, …] of one device, driven by tensors on that device.

    Per run (built here, before any graph capture): ``coef`` [K, C] and ``slots`` [K, 4] on the
    device, ``t_table`` int64 [K + 1] (the call timesteps, padded), ``ctl`` int64 [3] =
    (k, offset, seed) and ``t_now`` int64 [1] (t of call k, what the network is fed as a stride-0
    view ``t_input(B)``). ``update`` does call ctl[0] in place and advances ctl[0] and t_now on
    the device, so a run of calls has no host work between them.

    backend "triton" (CUDA, or CPU tensors under TRITON_INTERPRET=1): ONE launch of the fused
    kernel per call; float32, float16 or bfloat16 data, float32 math. backend "torch": the row
    applied with torch operators, noise from fastddpm.randn (host call counter; never captured).
    """

    def __init__(self, plan, device, dtype, seed: int, backend: str = "triton", cond=None):
        import torch

        if backend not in ("triton", "torch"):
            raise ValueError(f"TorchStepper backend must be 'triton' or 'torch', got {backend!r}")
        self.torch = torch
        self.plan, self.seed, self.backend = plan, int(seed), backend
        self.device, self.dtype = torch.device(device), dtype
        tab = plan.table
        self.t_table = torch.tensor(list(map(int, tab.t)) + [0], dtype=torch.int64, device=self.device)
        self.ctl = torch.zeros(3, dtype=torch.int64, device=self.device)
        self.t_now = self.t_table[:1].clone()
        self.t0 = int(tab.t[0])
        self.k, self.offset = 0, 0  # host copies of the call index (the torch backend's noise stream; messages)
        self.slots = tab.slots()
        self.depth, self.has_state, self.variance = tab.depth, tab.reads_state or tab.writes_state, tab.variance
        rows = torch.as_tensor(tab.rows, dtype=torch.float64)
        if backend == "triton":  # float32 rows whatever the data dtype: the kernel computes in float32
            self.coef = rows.to(device=self.device, dtype=torch.float32)
            self.slots_dev = torch.as_tensor(self.slots, device=self.device)
            self._launchers = {}
        else:  # rounded to the data dtype once, as the CPU kernels do
            self.coef = rows.to(device=self.device, dtype=dtype)
        self.draws = [bool(v) for v in tab.rows[:, KC.COL["yz"]] != 0]
        # A guided run (fastddpm.sampling.guidance): on the device every call runs the network over
        # 2B rows — one captured step fits every call — and call k's w_k − 1 comes from a device
        # table (0 outside guidance_interval: m = c exactly), so graph replays need no host work.
        self.guided_run = cond is not None and cond.doubled
        self.rescale = cond.rescale if self.guided_run else 0.0
        self.w1 = [cond.scale - 1.0 if cond.guided(k) else 0.0 for k in range(tab.calls)] if self.guided_run else None
        self.gw = torch.tensor(self.w1, dtype=torch.float32, device=self.device) \
            if self.guided_run and backend == "triton" else None
        self._mirror = None

    def state(self, like):
        """Per-batch buffers (state s and history ring, as the table needs; noise for backend torch)."""
        torch = self.torch
        if self.backend == "triton":
            return self._launcher(like).buffers(like)
        return {"s": torch.zeros_like(like) if self.has_state else None,
                "ring": torch.zeros((self.depth + 1,) + tuple(like.shape), dtype=like.dtype, device=like.device)
                if self.depth else None}

    def begin(self, x, state, offset: int, mirror=None, *, draw: bool = True) -> None:
        """Start a batch whose first element has global noise offset ``offset``: x ← x_T (stream 0;
        ``draw=False`` keeps x as the starting state), call index 0, t_now = t[0], state and ring
        zeroed. Device writes only (no sync). ``mirror`` (a guided run): the second half of the
        2B-row network input, x being its first half; it gets the starting x here and x′ from every
        update."""
        if draw:
            draw_initial(x, self.seed, offset, "triton" if self.backend == "triton" else "auto")
        self._mirror = mirror
        if mirror is not None:
            mirror.copy_(x)
        self.ctl[0].fill_(0)
        self.ctl[1].fill_(offset)
        self.ctl[2].fill_(self.seed)
        self.t_now.fill_(self.t0)
        self.k, self.offset = 0, int(offset)
        if self.backend == "triton":
            state.reset()
        else:
            for b in state.values():
                if b is not None:
                    b.zero_()

    def t_input(self, batch: int):
        """t of the current call as int64 [B], a stride-0 view (nets compute their time path once)."""
        return self.t_now.expand(batch)

    def update(self, x, m, state) -> None:
        """x ← the update of call ctl[0] from the model output m; then the call index and t_now
        advance. Graph-capturable (triton backend)."""
        if self.backend == "triton":
            self._launcher(x)(x, m, state)
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
            fn = self._launchers[key] = LoopUpdate(
                self.coef, self.slots_dev, self.ctl, x.numel(), x.numel() // max(1, x.shape[0]), clip=self.plan.clip,
                noise=self.plan.noisy, has_state=self.has_state, depth=self.depth, variance=self.variance,
                shift=self.offset & 3, guidance=self.gw, rescale=self.rescale)
        return fn

    def _torch_update(self, x, m, state) -> None:
        """The row with torch operators (backend="torch")."""
        from ..ops import randn

        torch, k = self.torch, self.k
        m = m.to(self.dtype)
        v = None
        B = x.shape[0]
        rows = 2 * B if self.guided_run else B
        if self.variance is not None:  # [rows, 2C, …] → mean and variance channel (the conditional rows')
            halves = m.reshape(rows, 2, -1)
            m, v = halves[:, 0].reshape((rows,) + tuple(x.shape[1:])), halves[:B, 1].reshape(x.shape)
        if self.guided_run:  # the guided output, as the fused kernel forms it
            c, u = m[:B], m[B:]
            m = c + self.w1[k] * (c - u)
            if self.rescale and self.w1[k] != 0.0:
                dims = tuple(range(1, m.dim()))
                sc, sg = c.double().std(dim=dims, keepdim=True), m.double().std(dim=dims, keepdim=True)
                r = torch.where(sg > 0, self.rescale * sc / torch.where(sg > 0, sg, 1.0) + (1.0 - self.rescale), 1.0)
                m = m * r.to(m.dtype)
        z = randn(tuple(x.shape), seed=self.seed, stream=k + 1, offset=self.offset, dtype=self.dtype, like=x,
                  backend="auto") if self.draws[k] else None
        row = self.coef[k]
        if self.variance == "sqrt" and z is not None:
            z, v = z * torch.sqrt(v), None
        w, hs = self.slots[k, 0], self.slots[k, 1:1 + self.depth]
        ring, s = state["ring"], state["s"]
        clip = None if self.plan.clip is None else float(self.plan.clip)
        y, s_new, q = KC.apply_row(row, x, m, clip=clip, s=s, h=tuple(ring[j] for j in hs), z=z,
                                   v=v if self.variance == "log" else None, xp=torch)
        if w >= 0:
            ring[w].copy_(q) if q is not None else ring[w].zero_()
        if s is not None:
            s.copy_(s_new) if s_new is not None else s.zero_()
        x.copy_(y)
        if self._mirror is not None:
            self._mirror.copy_(y)
