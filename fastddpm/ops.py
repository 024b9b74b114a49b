"""Public hot-path ops: randn, q_sample, ddpm_step, ddim_step.

Each validates its arguments, picks a backend (fastddpm.backends), allocates the output and
hands flat contiguous buffers to one fused kernel. NumPy arrays and CPU torch tensors go in
and come back as the same type without copies; CUDA tensors go to the Triton kernels.
"""
from __future__ import annotations

import numpy as np

from . import _validate as V
from .backends import is_torch_tensor, kernels, resolve
from .kernels.coefficients import PREDICTIONS

# The public ddpm_step takes the fixed variances (the model output has x_t's shape; the learned ones
# need a variance channel: fastddpm.sample with sampler="ddpm", variance="learned_range").
VARIANCES = ("fixed_small", "fixed_large")
from .schedule import Schedule


def _check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a fastddpm.Schedule, got {type(schedule).__name__}")
    return schedule


def _empty_like(x, x_np: np.ndarray):
    """A new array of x's type (NumPy or torch) and its NumPy view."""
    if is_torch_tensor(x):
        import torch

        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        return y, y.numpy()
    y = np.empty_like(x_np)
    return y, y


def _host_out(out, x, x_np, name="out"):
    if out is None:
        return _empty_like(x, x_np)
    if is_torch_tensor(out) != is_torch_tensor(x):
        raise TypeError(f"{name} must be of the same type as the input ({type(x).__name__}), got {type(out).__name__}")
    out_np = V.host_array(out, name)
    V.check_same(x_np, out_np, "x", name)
    return out, out_np


# ----------------------------------------------------------------------------------------


def randn(shape, *, seed: int, stream: int = 0, offset: int = 0, dtype=np.float32, like=None,
          backend: str = "auto"):
    """Counter-based standard normals: element k has global index ``offset + k``.

    Returns a NumPy array, or a torch tensor on ``like``'s device when ``like`` is a tensor
    (``dtype`` may then be a torch dtype). The numbers do not depend on the backend.
    """
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    numel = int(np.prod(shape, dtype=np.int64))
    seed = V.check_uint32(seed, "seed")
    stream = V.check_uint32(stream, "stream")
    offset = V.check_offset(offset, numel)
    backend = resolve(backend, like)
    V.check_host_keys(backend, seed=seed, stream=stream)
    if is_torch_tensor(like):
        import torch

        tdtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, np.dtype(dtype).name)
        out = torch.empty(shape, dtype=tdtype, device=like.device)
        if backend == "triton":
            kernels("triton").randn(out.view(-1), seed, stream, offset)
            return out
        flat = V.host_array(out, "dtype").reshape(-1)
    else:
        np_dtype = np.dtype(dtype)
        if np_dtype not in V.HOST_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {np_dtype}")
        out = np.empty(shape, dtype=np_dtype)
        flat = out.reshape(-1)
    if backend == "numpy":
        flat[:] = kernels("numpy").randn(numel, seed, stream, offset)
    else:
        kernels("numba").randn(flat, seed, stream, offset)
    return out


def q_sample(schedule: Schedule, x0, t, noise=None, *, seed: int = 0, stream: int = 0,
             offset: int = 0, out=None, backend: str = "auto"):
    """Forward process x_t = √ᾱ[t_b]·x0 + √(1−ᾱ[t_b])·ε for each sample b.

    Shapes: x0 [B, …], t int or int [B], noise like x0 (drawn in-kernel from
    (seed, stream, offset) when None). Returns ``(x_t, noise)`` of x0's type.
    """
    _check_schedule(schedule)
    seed = V.check_uint32(seed, "seed")
    stream = V.check_uint32(stream, "stream")
    backend = resolve(backend, x0, noise, out, t if is_torch_tensor(t) else None)
    V.check_host_keys(backend, seed=seed, stream=stream)
    if backend == "triton":
        return kernels("triton").q_sample(schedule, x0, t, noise, seed, stream, offset, out)

    x0_np = V.host_array(x0, "x0")
    batch, per_sample = V.check_batch_shape(x0_np, "x0")
    offset = V.check_offset(offset, x0_np.size)
    t_np = V.host_timesteps(t, "t", batch, schedule.num_steps)
    t_np = np.broadcast_to(t_np, (batch,))
    noise_np = None
    if noise is not None:
        noise_np = V.host_array(noise, "noise")
        V.check_same(x0_np, noise_np, "x0", "noise")
    x_t, x_t_np = _host_out(out, x0, x0_np)
    if batch == 0:
        return x_t, (noise if noise is not None else _empty_like(x0, x0_np)[0])
    if backend == "numpy":
        ref_xt, ref_noise = kernels("numpy").q_sample(schedule.alphas_cumprod, x0_np, t_np, noise_np,
                                                      seed, stream, offset)
        x_t_np[...] = ref_xt
        if noise is not None:
            return x_t, noise
        eps, eps_np = _empty_like(x0, x0_np)
        eps_np[...] = ref_noise
        return x_t, eps
    eps, eps_np = (noise, noise_np) if noise is not None else _empty_like(x0, x0_np)
    kernels("numba").q_sample(
        # A fresh writable int64 copy: a read-only view (np.broadcast_to) would make Numba
        # compile a second specialisation (≈ 10 s) for array t.
        x0_np.reshape(-1), np.array(t_np, dtype=np.int64), schedule.sqrt_alphas_cumprod,
        schedule.sqrt_one_minus_alphas_cumprod, None if noise is None else noise_np.reshape(-1),
        x_t_np.reshape(-1), eps_np.reshape(-1), seed, stream, offset, per_sample,
    )
    return x_t, eps


def _prepare_step(schedule, x_t, model_output, t, prev_t, clip, seed, stream, offset, noise, out,
                  backend, check_finite):
    """Shared validation of the reverse steps; returns the host views for the CPU kernels."""
    x_np = V.host_array(x_t, "x_t")
    m_np = V.host_array(model_output, "model_output")
    V.check_same(x_np, m_np, "x_t", "model_output")
    batch, per_sample = V.check_batch_shape(x_np, "x_t")
    offset = V.check_offset(offset, x_np.size)
    t_np = V.host_timesteps(t, "t", batch, schedule.num_steps)
    if prev_t is None:
        p_np = t_np - 1
    else:
        p_np = V.host_timesteps(prev_t, "prev_t", batch, schedule.num_steps, allow_final=True)
        if np.any(p_np >= t_np):
            raise ValueError("prev_t must be smaller than t for every sample (the reverse process goes down)")
    noise_np = None
    if noise is not None:
        noise_np = V.host_array(noise, "noise")
        V.check_same(x_np, noise_np, "x_t", "noise")
    if check_finite:
        V.check_finite(m_np, "model_output")
    y, y_np = _host_out(out, x_t, x_np)
    return x_np, m_np, t_np, p_np, noise_np, y, y_np, offset, per_sample


def _reverse_step(op: str, option: dict, schedule, x_t, model_output, t, prev_t, prediction, clip, noise, seed,
                  stream, offset, out, backend, check_finite):
    """ddpm_step / ddim_step once their own option (``{"variance": …}`` or ``{"eta": …}``) is checked:
    the shared checks, the backend, and the call of kernel ``op`` of that backend."""
    _check_schedule(schedule)
    V.check_choice(prediction, "prediction", PREDICTIONS)
    clip = V.check_clip(clip)
    seed = V.check_uint32(seed, "seed")
    stream = V.check_uint32(stream, "stream")
    backend = resolve(backend, x_t, model_output, noise, out,
                      t if is_torch_tensor(t) else None, prev_t if is_torch_tensor(prev_t) else None)
    V.check_host_keys(backend, seed=seed, stream=stream)
    common = dict(prediction=prediction, clip=clip, seed=seed, stream=stream, **option)
    if backend == "triton":
        return getattr(kernels("triton"), op)(schedule, x_t, model_output, t, prev_t, noise=noise, offset=offset,
                                              out=out, check_finite=check_finite, **common)
    x_np, m_np, t_np, p_np, noise_np, y, y_np, offset, per_sample = _prepare_step(
        schedule, x_t, model_output, t, prev_t, clip, seed, stream, offset, noise, out, backend, check_finite)
    if x_np.size == 0:
        return y
    if backend == "numpy":
        y_np[...] = getattr(kernels("numpy"), op)(schedule.alphas_cumprod, x_np, m_np, t_np, p_np, noise=noise_np,
                                                  offset=offset, **common)
        return y
    getattr(kernels("numba"), op)(x_np.reshape(-1), m_np.reshape(-1), y_np.reshape(-1), t_np, p_np,
                                  schedule.alphas_cumprod, noise=None if noise_np is None else noise_np.reshape(-1),
                                  offset=offset, per_sample=per_sample, **common)
    return y


def ddpm_step(schedule: Schedule, x_t, model_output, t, *, prev_t=None, prediction: str = "epsilon",
              variance: str = "fixed_small", clip: float | None = None, noise=None, seed: int = 0,
              stream: int = 1, offset: int = 0, out=None, backend: str = "auto",
              check_finite: bool = False):
    """One fused ancestral step x_t → x_{prev_t} (docs/sampling.md, "Step math").

    x_t, model_output: [B, …]; t: int or int [B] in [0, T); prev_t: None (t − 1), int or
    int [B] in [−1, t) for respaced sequences (−1: the final step, no noise added).
    ``out`` may be ``x_t`` (in place). Returns x_prev of x_t's type.
    """
    V.check_choice(variance, "variance", VARIANCES)
    return _reverse_step("ddpm_step", {"variance": variance}, schedule, x_t, model_output, t, prev_t, prediction,
                         clip, noise, seed, stream, offset, out, backend, check_finite)


def ddim_step(schedule: Schedule, x_t, model_output, t, *, prev_t=None, eta: float = 0.0,
              prediction: str = "epsilon", clip: float | None = None, noise=None, seed: int = 0,
              stream: int = 1, offset: int = 0, out=None, backend: str = "auto",
              check_finite: bool = False):
    """One fused DDIM(η) step x_t → x_{prev_t} (docs/sampling.md, "Step math"); same conventions as
    :func:`ddpm_step`. Noise is drawn only when η > 0.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta or not np.isfinite(eta):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return _reverse_step("ddim_step", {"eta": float(eta)}, schedule, x_t, model_output, t, prev_t, prediction,
                         clip, noise, seed, stream, offset, out, backend, check_finite)
