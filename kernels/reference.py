"""Plain NumPy reference for every fused kernel: the oracle the tests compare against.

Written for clarity, straight from the formulas of docs/sampling.md ("Step math"), not for
speed. Nothing here is shared with the Numba or Triton kernels or with kernels/coefficients.py
(which they and the sampling plan read their coefficients from), so an agreement between them is
evidence: keep it that way — this module imports no other part of fastddpm.

Conventions (docs/core.md, "Reproducibility promise"):
- time indices t = 0 … T-1; ``prev_t`` = -1 means "after the last step" (ᾱ_p = 1, no noise);
- element j of sample s has global noise index i = offset + s·D + j;
- normal number i of (seed, stream) is lane ``i & 3`` of Triton's ``randn4x(stream·2³² + seed, i >> 2)``.

Each public function states the bytes it moves per element (float32), which is what the
benchmarks count as "useful" traffic.
"""
from __future__ import annotations

import numpy as np

# Philox4x32 constants (Salmon et al. 2011, Random123), as in triton/language/random.py.
PHILOX_ROUND_A = np.uint64(0xD2511F53)
PHILOX_ROUND_B = np.uint64(0xCD9E8D57)
PHILOX_KEY_A = np.uint32(0x9E3779B9)
PHILOX_KEY_B = np.uint32(0xBB67AE85)
PHILOX_ROUNDS = 10

# Triton 3.x `uint_to_uniform_float`: largest float32 scale with MAX_INT * scale < 1.
UINT_TO_UNIFORM_SCALE = np.float32(4.6566127342e-10)
BOX_MULLER_U1_MIN = np.float32(1.0e-7)
TWO_PI = np.float32(6.283185307179586)

PREDICTIONS = ("epsilon", "sample", "v_prediction")
VARIANCES = ("fixed_small", "fixed_large")
FIXED_SMALL_MIN_VARIANCE = 1e-20

_MASK32 = np.uint64(0xFFFFFFFF)


# ----------------------------------------------------------------------------------------
# Philox4x32-10 and the Triton normal mapping
# ----------------------------------------------------------------------------------------


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = PHILOX_ROUNDS):
    """Philox4x32 on uint32 arrays (broadcast together). Returns four uint32 arrays.

    Round: (c0, c1, c2, c3) ← (hi(B·c2) ⊕ c1 ⊕ k0, lo(B·c2), hi(A·c0) ⊕ c3 ⊕ k1, lo(A·c0)),
    then the key is bumped by the Weyl constants. Bytes: none (pure compute).
    """
    c0, c1, c2, c3, k0, k1 = (np.asarray(v, dtype=np.uint32) for v in (c0, c1, c2, c3, k0, k1))
    c0, c1, c2, c3, k0, k1 = np.broadcast_arrays(c0, c1, c2, c3, k0, k1)
    c0, c1, c2, c3 = (v.astype(np.uint64) for v in (c0, c1, c2, c3))
    k0 = k0.astype(np.uint64)
    k1 = k1.astype(np.uint64)
    for _ in range(rounds):
        prod_b = PHILOX_ROUND_B * c2
        prod_a = PHILOX_ROUND_A * c0
        c0, c1, c2, c3 = (
            (prod_b >> np.uint64(32)) ^ c1 ^ k0,
            prod_b & _MASK32,
            (prod_a >> np.uint64(32)) ^ c3 ^ k1,
            prod_a & _MASK32,
        )
        k0 = (k0 + np.uint64(PHILOX_KEY_A)) & _MASK32
        k1 = (k1 + np.uint64(PHILOX_KEY_B)) & _MASK32
    return tuple(v.astype(np.uint32) for v in (c0, c1, c2, c3))


def randint4x(seed: int, stream: int, block):
    """Triton's ``randint4x(stream·2³² + seed, block)`` for an int64 array of block counters.

    Key (k0, k1) = (seed mod 2³², stream mod 2³²); counter (lo32(block), hi32(block), 0, 0).
    """
    block = np.asarray(block, dtype=np.int64).astype(np.uint64)
    lo = (block & _MASK32).astype(np.uint32)
    hi = (block >> np.uint64(32)).astype(np.uint32)
    zero = np.zeros_like(lo)
    return philox4x32(lo, hi, zero, zero, np.uint32(seed % 2**32), np.uint32(stream % 2**32))


def uint_to_uniform_float(x):
    """Triton 3.x mapping uint32 → float32 in [0, 1): bitcast to int32, fold negatives with ~x."""
    x = np.asarray(x, dtype=np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * UINT_TO_UNIFORM_SCALE


def pair_uniform_to_normal(u1, u2):
    """Box–Muller as Triton writes it (u₁ clamped to ≥ 1e-7, θ = 2π·u₂ in float32).

    The transcendental functions are evaluated in float64 and rounded once, so this is the
    correctly rounded version of what the float32 kernels approximate.
    """
    u1 = np.maximum(BOX_MULLER_U1_MIN, u1).astype(np.float64)
    th = (TWO_PI * u2.astype(np.float32)).astype(np.float64)
    r = np.sqrt(-2.0 * np.log(u1))
    return (r * np.cos(th)).astype(np.float32), (r * np.sin(th)).astype(np.float32)


def randn4x(seed: int, stream: int, block):
    """Four float32 normals per block counter, exactly Triton's ``randn4x`` lanes."""
    i1, i2, i3, i4 = randint4x(seed, stream, block)
    n1, n2 = pair_uniform_to_normal(uint_to_uniform_float(i1), uint_to_uniform_float(i2))
    n3, n4 = pair_uniform_to_normal(uint_to_uniform_float(i3), uint_to_uniform_float(i4))
    return n1, n2, n3, n4


def randn(n: int, seed: int, stream: int = 0, offset: int = 0, dtype=np.float32):
    """Normals for global indices offset … offset+n-1. Bytes per element: 4 written."""
    index = np.int64(offset) + np.arange(n, dtype=np.int64)
    lanes = np.stack(randn4x(seed, stream, index >> 2), axis=0)  # [4, n]
    return lanes[index & 3, np.arange(n)].astype(dtype)


# ----------------------------------------------------------------------------------------
# Schedules (float64)
# ----------------------------------------------------------------------------------------


def betas_linear(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def betas_cosine(num_steps: int, s: float = 0.008, min_beta: float = 0.0, max_beta: float = 0.999):
    def alpha_bar(u):
        return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2

    t = np.arange(num_steps, dtype=np.float64)
    betas = 1 - alpha_bar((t + 1) / num_steps) / alpha_bar(t / num_steps)
    return np.clip(betas, min_beta, max_beta)


def betas_quadratic(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
    return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2


def betas_sigmoid(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
    x = np.linspace(-6, 6, num_steps, dtype=np.float64)
    return 1 / (1 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def schedule_tables(betas) -> dict[str, np.ndarray]:
    """Every table of the design, in float64, from the betas (improved-diffusion names)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    clipped = posterior_variance.copy()
    if len(clipped) > 1:
        clipped[0] = posterior_variance[1]
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(clipped),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        "snr": alphas_cumprod / (1.0 - alphas_cumprod),
    }


# ----------------------------------------------------------------------------------------
# Forward and reverse processes
# ----------------------------------------------------------------------------------------


def _per_sample(values, batch: int, ndim: int):
    """Broadcast a per-sample array [B] (or a scalar) against x of rank ``ndim``."""
    values = np.broadcast_to(np.asarray(values), (batch,))
    return values.reshape((batch,) + (1,) * (ndim - 1))


def _sample_noise(shape, dtype, noise, seed, stream, offset):
    if noise is not None:
        return np.asarray(noise, dtype=dtype)
    return randn(int(np.prod(shape)), seed, stream, offset).reshape(shape).astype(dtype)


def q_sample(alphas_cumprod, x0, t, noise=None, seed=0, stream=0, offset=0):
    """x_t = √ᾱ[t_b]·x0 + √(1−ᾱ[t_b])·ε, per sample b. Returns (x_t, ε).

    Shapes: x0 [B, …], t [B] int. Bytes per element: 8 with noise given (read x0, ε … write x_t
    counts 12), 8 with noise drawn in-kernel and written out (read x0, write x_t and ε → 12),
    4 + 4 when the noise is not written.
    """
    x0 = np.asarray(x0)
    dtype = x0.dtype
    ab = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(t)]
    eps = _sample_noise(x0.shape, dtype, noise, seed, stream, offset)
    sqrt_ab = _per_sample(np.sqrt(ab), x0.shape[0], x0.ndim).astype(dtype)
    sqrt_1mab = _per_sample(np.sqrt(1.0 - ab), x0.shape[0], x0.ndim).astype(dtype)
    return sqrt_ab * x0 + sqrt_1mab * eps, eps


def _step_alphas(alphas_cumprod, t, prev_t, batch):
    """ᾱ_t, ᾱ_p (1 where prev_t < 0) per sample, float64 [B]."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    t = np.broadcast_to(np.asarray(t, dtype=np.int64), (batch,))
    prev_t = np.broadcast_to(np.asarray(prev_t, dtype=np.int64), (batch,))
    ab_t = ac[t]
    ab_p = np.where(prev_t >= 0, ac[np.maximum(prev_t, 0)], 1.0)
    return ab_t, ab_p, prev_t


def _step_inputs(alphas_cumprod, x_t, model_output, t, prev_t):
    """x_t, the output in x_t's dtype, and ᾱ_t, ᾱ_p, prev_t per sample (prev_t None: t − 1)."""
    x_t = np.asarray(x_t)
    model_output = np.asarray(model_output, dtype=x_t.dtype)
    if prev_t is None:
        prev_t = np.asarray(t) - 1
    return (x_t, model_output, *_step_alphas(alphas_cumprod, t, prev_t, x_t.shape[0]))


def predict_x0(x_t, model_output, ab_t, prediction: str):
    """x̂0 from the model output (float64 coefficients per sample, math in x_t's dtype)."""
    dtype = x_t.dtype
    b, nd = x_t.shape[0], x_t.ndim
    if prediction == "epsilon":
        return _per_sample(np.sqrt(1.0 / ab_t), b, nd).astype(dtype) * x_t - _per_sample(
            np.sqrt(1.0 / ab_t - 1.0), b, nd
        ).astype(dtype) * model_output
    if prediction == "sample":
        return model_output.copy()
    if prediction == "v_prediction":
        return _per_sample(np.sqrt(ab_t), b, nd).astype(dtype) * x_t - _per_sample(
            np.sqrt(1.0 - ab_t), b, nd
        ).astype(dtype) * model_output
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def ddpm_step(
    alphas_cumprod, x_t, model_output, t, prev_t=None, prediction="epsilon",
    variance="fixed_small", clip=None, noise=None, seed=0, stream=1, offset=0,
):
    """One ancestral step t → prev_t (docs/sampling.md "Step math"). Shapes: x_t, model_output [B, …].

    Bytes per element: 12 (read x_t and the model output, write x_prev; noise from registers).
    """
    x_t, model_output, ab_t, ab_p, prev_t = _step_inputs(alphas_cumprod, x_t, model_output, t, prev_t)
    b, nd, dtype = x_t.shape[0], x_t.ndim, x_t.dtype
    alpha_c = ab_t / ab_p
    beta_c = 1.0 - alpha_c

    x0 = predict_x0(x_t, model_output, ab_t, prediction)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    coef_x0 = np.sqrt(ab_p) * beta_c / (1.0 - ab_t)
    coef_xt = np.sqrt(alpha_c) * (1.0 - ab_p) / (1.0 - ab_t)
    mean = _per_sample(coef_x0, b, nd).astype(dtype) * x0 + _per_sample(coef_xt, b, nd).astype(dtype) * x_t

    if variance == "fixed_small":
        var = np.maximum((1.0 - ab_p) / (1.0 - ab_t) * beta_c, FIXED_SMALL_MIN_VARIANCE)
    elif variance == "fixed_large":
        var = beta_c
    else:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    sigma = np.where(prev_t >= 0, np.sqrt(var), 0.0)
    z = _sample_noise(x_t.shape, dtype, noise, seed, stream, offset)
    return mean + _per_sample(sigma, b, nd).astype(dtype) * z


def ddim_step(
    alphas_cumprod, x_t, model_output, t, prev_t=None, eta=0.0, prediction="epsilon",
    clip=None, noise=None, seed=0, stream=1, offset=0,
):
    """One DDIM(η) step t → prev_t (docs/sampling.md "Step math"). Bytes per element: 12."""
    x_t, model_output, ab_t, ab_p, prev_t = _step_inputs(alphas_cumprod, x_t, model_output, t, prev_t)
    b, nd, dtype = x_t.shape[0], x_t.ndim, x_t.dtype
    beta_c = 1.0 - ab_t / ab_p

    x0 = predict_x0(x_t, model_output, ab_t, prediction)
    # ε̂ from the unclipped x̂0 (diffusers' default, use_clipped_model_output=False).
    if prediction == "epsilon":
        eps = model_output
    else:
        eps = (x_t - _per_sample(np.sqrt(ab_t), b, nd).astype(dtype) * x0) / _per_sample(
            np.sqrt(1.0 - ab_t), b, nd
        ).astype(dtype)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    sigma = eta * np.sqrt((1.0 - ab_p) / (1.0 - ab_t)) * np.sqrt(beta_c)
    sigma = np.where(prev_t >= 0, sigma, 0.0)
    dir_coef = np.sqrt(np.maximum(1.0 - ab_p - sigma**2, 0.0))
    out = _per_sample(np.sqrt(ab_p), b, nd).astype(dtype) * x0 + _per_sample(dir_coef, b, nd).astype(dtype) * eps
    if eta > 0:
        z = _sample_noise(x_t.shape, dtype, noise, seed, stream, offset)
        out = out + _per_sample(sigma, b, nd).astype(dtype) * z
    return out


def dpmpp2m_update(x_t, model_output, x0_prev, cx, cm, a, b, c, prediction, clip):
    """One DPM-Solver++(2M) update from its per-step scalars; returns (x′, x̂0). Shapes: all [B, …].

    x̂0 = cx·x_t + cm·out (the output itself for "sample"), clipped when asked;
    x′ = a·x_t + b·x̂0 + c·x̂0_prev, with the scalars rounded to the data dtype.
    Bytes per element: 20 (read x_t, the output and x̂0_prev; write x′ and x̂0).
    """
    dt = x_t.dtype.type
    x0 = model_output.copy() if prediction == "sample" else dt(cx) * x_t + dt(cm) * model_output
    if clip is not None:
        x0 = np.clip(x0, dt(-clip), dt(clip))
    return dt(a) * x_t + dt(b) * x0 + dt(c) * x0_prev, x0
