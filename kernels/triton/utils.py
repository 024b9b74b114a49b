"""Launch helpers shared by the Triton kernels: argument checks, Philox key and counters,
timestep tensors, the launch rule, and the in-kernel tile/noise helpers.

Element k of a call has global noise index i = offset + k; normal number i is lane ``i & 3``
of ``tl.randn4x(stream·2³² + seed, i >> 2)`` (docs/core.md, "Reproducibility promise"). Kernels tile in i-space:
program p covers i ∈ [4·(offset >> 2) + p·BLOCK, … + BLOCK) as a [BLOCK/4, 4] tile whose
rows are Philox counters and whose columns are lanes, so one Philox call feeds four elements
and ``SHIFT = offset & 3`` (a constexpr) keeps the loads 16-byte aligned when offset % 4 == 0.

Large integers (seeds ≥ 2³¹, counters ≥ 2³¹) travel as pairs of int32 bit patterns: the
interpreter and the compiler both type Python ints < 2³¹ as int32, so this is the one
encoding that means the same thing in both.
"""
from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from .. import _checks as V
from .._checks import interpreting_triton

DATA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_NAMES = "float32, float16 or bfloat16"

# Integer scalars that change from call to call: never specialise on their value (no
# recompilation per seed, and 1 would otherwise become a constexpr). Names a kernel lacks are
# ignored by triton.jit. The element count n is left specialisable on purpose: knowing
# n % 16 == 0 makes the tail mask constant over 4 lanes, which is what lets Triton emit
# 16-byte vector loads and stores for masked accesses.
NO_SPECIALIZE = ["per_sample", "last_step", "seed_word", "stream_word", "ctr_lo", "ctr_hi", "T", "S"]


# ----------------------------------------------------------------------------------------
# Launch rule
# ----------------------------------------------------------------------------------------


def launch_config(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a streaming kernel over n elements.

    A rule rather than an autotune (autotuning would benchmark at first call, which neither
    the interpreter nor a CUDA-graph capture wants): the kernels are memory bound, and 16
    elements per thread (four 16-byte vectors per tensor) keeps enough loads in flight to
    cover HBM latency — the per-thread size Liger's elementwise kernels use. Small n gets one
    small program. Untuned on a GPU so far (none was available); bench/triton_kernels.py
    sweeps BLOCK to check it.
    """
    if n <= 1024:
        block = max(16, triton.next_power_of_2(max(n, 1)))
    elif n <= 1 << 20:
        block = 1024
    else:
        block = 4096
    return block, max(1, min(8, block // 512))


def grid_size(n: int, shift: int, block: int) -> tuple[int]:
    return (triton.cdiv(n + shift, block),)


# ----------------------------------------------------------------------------------------
# Argument checks (every error names the argument)
# ----------------------------------------------------------------------------------------


def check_data(x, name: str, *, dtypes=DATA_DTYPES, dtype_names: str = _DTYPE_NAMES):
    """A contiguous floating tensor [B, …] that Triton can run on (detached)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor on the Triton backend, got {type(x).__name__}")
    if x.device.type == "cpu" and not interpreting_triton():
        raise ValueError(f"{name} is on the CPU; backend='triton' needs CUDA tensors "
                         "(or TRITON_INTERPRET=1 set before triton is imported)")
    if x.dtype not in dtypes:
        hint = " (float64 runs on backend='numba' or 'numpy')" if x.dtype == torch.float64 else ""
        raise TypeError(f"{name} must be {dtype_names} on the Triton backend, got {x.dtype}{hint}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    return x.detach()


def check_like(y, name: str, x, x_name: str):
    """y must match x in device, shape and dtype (noise, model output, out)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor like {x_name}, got {type(y).__name__}")
    if y.device != x.device:
        raise ValueError(f"{name} is on {y.device} but {x_name} is on {x.device}; move it with "
                         f".to({x_name}.device)")
    if y.shape != x.shape:
        raise ValueError(f"{name} has shape {tuple(y.shape)} but {x_name} has shape {tuple(x.shape)}")
    if y.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {y.dtype} but {x_name} has dtype {x.dtype}")
    if not y.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    return y.detach()


def on_device(x: torch.Tensor):
    """Launch on the data's device, not the current one (a tensor on cuda:1 with cuda:0
    current would otherwise be read by a kernel on the wrong device)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def batch_shape(x: torch.Tensor, name: str) -> tuple[int, int]:
    """(B, D): B samples of D elements each."""
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension [B, ...], got a scalar")
    batch = x.shape[0]
    return batch, (x.numel() // batch if batch else 0)


def check_finite(x: torch.Tensor, name: str) -> None:
    """Opt-in guard (one host sync)."""
    bad = ~torch.isfinite(x.reshape(-1))
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise FloatingPointError(f"{name} contains NaN or inf (first at flat index {first})")


# ----------------------------------------------------------------------------------------
# Timesteps: device tensors, no host indexing
# ----------------------------------------------------------------------------------------

_STEP_INDEX: dict[tuple[str, int], torch.Tensor] = {}


def _step_index(device: torch.device, num_steps: int) -> torch.Tensor:
    """arange(−1, T) on ``device``, cached: a Python int t becomes a view of it (no copy)."""
    key = (str(device), num_steps)
    table = _STEP_INDEX.get(key)
    if table is None:
        table = _STEP_INDEX[key] = torch.arange(-1, num_steps, dtype=torch.int64, device=device)
    return table


class Steps:
    """A timestep argument on the device: ``tensor`` (int, 1 or B entries), ``per_sample``
    (B entries), and ``host`` (an int64 NumPy array when the values are known on the host,
    which happens for Python ints, NumPy arrays and CPU tensors — never by syncing a GPU)."""

    __slots__ = ("tensor", "per_sample", "host")

    def __init__(self, tensor, per_sample, host):
        self.tensor, self.per_sample, self.host = tensor, per_sample, host


def steps(t, name: str, batch: int, num_steps: int, device: torch.device, *,
          allow_final: bool = False, check: bool = False) -> Steps:
    """Check a timestep argument and put it on ``device``.

    A CUDA tensor is range-checked only with ``check=True`` (one host sync); otherwise the
    kernels clamp it into the table so that a bad value can never read out of bounds.
    """
    if isinstance(t, torch.Tensor):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the data are on {device}; "
                             f"move it with {name}.to(device)")
        if t.dtype in (torch.bool,) or t.dtype.is_floating_point or t.dtype.is_complex:
            raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (batch, 1)):
            raise ValueError(f"{name} must be an integer or have shape [B] = [{batch}], "
                             f"got shape {tuple(t.shape)}")
        if t.ndim == 1 and t.shape[0] > 1 and t.stride(0) == 0:
            t = t[:1]  # an expanded scalar (what the loop hands nets): uniform, read once per program
        if not t.is_contiguous():
            t = t.contiguous()
        host = None
        if device.type == "cpu" or check:
            tc = t.detach().cpu()
            host = V.host_timesteps(tc, name, tc.numel() if tc.ndim else batch, num_steps,
                                    allow_final=allow_final)
            if host.size > 1 and bool(np.all(host == host.reshape(-1)[0])):
                t = t.reshape(-1)[:1]  # known equal on the host without a sync: the uniform path
        return Steps(t.reshape(-1), t.numel() > 1, host)
    if isinstance(t, numbers.Integral) and not isinstance(t, bool):
        host = V.host_timesteps(int(t), name, batch, num_steps, allow_final=allow_final)
        return Steps(_step_index(device, num_steps)[int(t) + 1: int(t) + 2], False, host)
    host = V.host_timesteps(t, name, batch, num_steps, allow_final=allow_final)
    flat = host.reshape(-1)
    if flat.size > 1 and bool(np.all(flat == flat[0])):
        flat = flat[:1]
    return Steps(torch.as_tensor(flat, device=device), flat.size > 1, host)


def check_order(t: Steps, prev_t: Steps) -> None:
    """prev_t < t for every sample, where both are known on the host."""
    if t.host is not None and prev_t.host is not None and np.any(prev_t.host >= t.host):
        raise ValueError("prev_t must be smaller than t for every sample (the reverse process goes down)")


# ----------------------------------------------------------------------------------------
# Philox key and counters
# ----------------------------------------------------------------------------------------


def _i32(v: int) -> int:
    """The int32 with the bit pattern of the uint32 ``v``."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def _key_word(v, name: str, device: torch.device):
    if isinstance(v, torch.Tensor):
        if v.device != device:
            raise ValueError(f"{name} is on {v.device} but the data are on {device}")
        if v.numel() != 1 or v.dtype.is_floating_point or v.dtype in (torch.bool,) or v.dtype.is_complex:
            raise TypeError(f"{name} must be an int or a one-element integer tensor, got "
                            f"{v.dtype} of shape {tuple(v.shape)}")
        return v.reshape(()).to(torch.int64) & 0xFFFFFFFF
    return int(V.check_uint32(v, name))


def noise_args(seed, stream, offset: int, numel: int, device: torch.device) -> dict:
    """Kernel arguments for the normals of indices offset … offset+numel−1.

    seed and stream are ints in [0, 2³²) or one-element integer tensors on the device (taken
    mod 2³²; the kernel then reads the key from memory, so a captured CUDA graph can be
    replayed with new seeds by writing into that tensor).
    """
    offset = V.check_offset(offset, numel)
    s, r = _key_word(seed, "seed", device), _key_word(stream, "stream", device)
    on_device = isinstance(s, torch.Tensor) or isinstance(r, torch.Tensor)
    key = None
    if on_device:  # int64 bit pattern of stream·2³² + seed, built on the device (no copy)
        hi = (r << 32) if isinstance(r, torch.Tensor) else _i32(r) << 32
        key = (hi | s).reshape(1) if isinstance(hi, torch.Tensor) else (s | hi).reshape(1)
        s = r = 0
    counter = offset >> 2
    return {
        "key": key,
        "seed_word": _i32(s),
        "stream_word": _i32(r),
        "ctr_lo": _i32(counter),
        "ctr_hi": counter >> 32,  # < 2^29: a non-negative int32
        "KEY_ON_DEVICE": on_device,
        "SHIFT": offset & 3,
    }


def index_bits(numel: int, shift: int = 0) -> bool:
    """True when element indices need int64 (IDX64)."""
    return numel + shift + 8192 >= 2**31


# ----------------------------------------------------------------------------------------
# In-kernel helpers
# ----------------------------------------------------------------------------------------


@triton.jit
def philox_seed(key_ptr, seed_word, stream_word, KEY_ON_DEVICE: tl.constexpr):
    """seed64 = stream·2³² + seed (what tl.randn4x splits back into the Philox key)."""
    if KEY_ON_DEVICE:
        seed64 = tl.load(key_ptr).to(tl.uint64, bitcast=True)
    else:
        lo = seed_word.to(tl.uint32, bitcast=True).to(tl.uint64)
        hi = stream_word.to(tl.uint32, bitcast=True).to(tl.uint64)
        seed64 = (hi << 32) | lo
    return seed64


@triton.jit
def tile(n, ctr_lo, ctr_hi, SHIFT: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """This program's [BLOCK/4, 4] tile: element index k, its mask, and the Philox counter
    of each row (int64, i >> 2). Lane of column j is j (i & 3 = j by construction)."""
    base = (ctr_hi.to(tl.int64) << 32) | ctr_lo.to(tl.uint32, bitcast=True).to(tl.int64)
    return tile_at(n, base, SHIFT, IDX64, BLOCK)


@triton.jit
def tile_at(n, base, SHIFT: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """``tile`` with the first counter ``base`` (= offset >> 2, int64) as a value, which the
    loop kernel reads from device memory."""
    ROWS: tl.constexpr = BLOCK // 4
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    rows = tl.arange(0, ROWS)
    lanes = tl.arange(0, 4)
    k = pid * BLOCK + (rows[:, None] * 4 + lanes[None, :]) - SHIFT
    if SHIFT == 0:  # the usual case (offset % 4 == 0): aligned, and no k >= 0 term in the mask
        mask = k < n
    else:
        mask = (k >= 0) & (k < n)
    counters = base + pid.to(tl.int64) * ROWS + rows.to(tl.int64)[:, None]
    return k, mask, counters


@triton.jit
def normal_tile(seed64, counters):
    """[ROWS, 4] normals: lane j of tl.randn4x(seed64, counter) in column j."""
    n1, n2, n3, n4 = tl.randn4x(seed64, counters)
    lane = tl.arange(0, 4)[None, :]
    return tl.where(lane == 0, n1, tl.where(lane == 1, n2, tl.where(lane == 2, n3, n4)))


@triton.jit
def load_steps(t_ptr, k, mask, per_sample, last_step, PER_SAMPLE: tl.constexpr, LOW: tl.constexpr):
    """Timestep of each element (per sample) or one scalar, clamped into [LOW, last_step]."""
    if PER_SAMPLE:
        t = tl.load(t_ptr + k // per_sample, mask=mask, other=0).to(tl.int64)
    else:
        t = tl.load(t_ptr).to(tl.int64)
    return tl.minimum(tl.maximum(t, LOW), last_step)


# ----------------------------------------------------------------------------------------
# Shared launcher part of the reverse steps
# ----------------------------------------------------------------------------------------

@dataclass
class StepLaunch:
    """A validated ddpm_step / ddim_step call, by name (kernels/triton/update.step_update reads it)."""

    grid: tuple
    x: torch.Tensor
    m: torch.Tensor
    out: torch.Tensor
    noise: torch.Tensor         # x when no noise is given
    t: torch.Tensor             # int, 1 or B entries
    prev_t: torch.Tensor        # t when prev_is_t_minus_1
    prev_is_t_minus_1: bool
    alphas_cumprod: torch.Tensor  # float64 on the device
    key: torch.Tensor           # the Philox key on the device, or x
    n: int
    per_sample: int
    last_step: int
    seed_word: int
    stream_word: int
    ctr_lo: int
    ctr_hi: int
    noise_mode: int             # 0 none, 1 given, 2 drawn
    key_on_device: bool
    shift: int
    idx64: bool
    block: int
    num_warps: int


def step_launch(schedule, x_t, model_output, t, prev_t, noise, seed, stream, offset, out,
                check_finite_: bool, *, noise_wanted: bool):
    """Validate a reverse step: returns (out, launch) where ``launch`` is None for an empty batch,
    else the :class:`StepLaunch` shared by ddpm_step and ddim_step."""
    x_t = check_data(x_t, "x_t")
    model_output = check_like(model_output, "model_output", x_t, "x_t")
    batch, per_sample = batch_shape(x_t, "x_t")
    if noise is not None:
        noise = check_like(noise, "noise", x_t, "x_t")
    out = torch.empty_like(x_t) if out is None else check_like(out, "out", x_t, "x_t")
    n = x_t.numel()
    T = schedule.num_steps
    ts = steps(t, "t", batch, T, x_t.device, check=check_finite_)
    ps = None if prev_t is None else steps(prev_t, "prev_t", batch, T, x_t.device, allow_final=True,
                                           check=check_finite_)
    if ps is not None:
        check_order(ts, ps)
    args = noise_args(seed, stream, offset, n, x_t.device)
    if check_finite_:
        check_finite(model_output, "model_output")
    if n == 0:
        return out, None
    # Noise is skipped only when every prev_t is known (on the host) to be final.
    prev_host = (ts.host - 1) if ps is None and ts.host is not None else (ps.host if ps is not None else None)
    final = prev_host is not None and bool(np.all(prev_host < 0))
    noise_mode = 0 if (not noise_wanted or final) else (1 if noise is not None else 2)
    block, warps = launch_config(n)
    return out, StepLaunch(
        grid=grid_size(n, args["SHIFT"], block), x=x_t, m=model_output, out=out,
        noise=noise if noise is not None else x_t, t=ts.tensor, prev_t=ps.tensor if ps is not None else ts.tensor,
        prev_is_t_minus_1=ps is None, alphas_cumprod=schedule.tables(x_t.device, torch.float64)["alphas_cumprod"],
        key=args["key"] if args["key"] is not None else x_t, n=n, per_sample=per_sample, last_step=T - 1,
        seed_word=args["seed_word"], stream_word=args["stream_word"], ctr_lo=args["ctr_lo"], ctr_hi=args["ctr_hi"],
        noise_mode=noise_mode, key_on_device=args["KEY_ON_DEVICE"], shift=args["SHIFT"],
        idx64=index_bits(n, args["SHIFT"]), block=block, num_warps=warps)
