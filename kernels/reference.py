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

``sample_run`` (last section) restates every sampler as a whole run, one short function per
sampler in k-diffusion's style, from its anchor's math (diffusers' schedulers); it never reads
a coefficient table. tests/test_reference_samplers.py checks each against its anchor.
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


# ----------------------------------------------------------------------------------------
# Whole-run reference samplers (issue 23: every sampler, restated from its anchor's math)
# ----------------------------------------------------------------------------------------
#
# A run walks a *grid*: ``t`` int [N], the descending timesteps fed to the network, and
# ``alpha_bar`` float64 [N+1], ᾱ at each visited point and last at the final point (1.0 for a
# final σ of 0, diffusers' final_sigmas_type="zero"; ᾱ_0 for "sigma_min"). Step i goes from
# alpha_bar[i] (written ᾱ) to alpha_bar[i+1] (ᾱ′). With α = √ᾱ, σ = √(1−ᾱ): λ = log(α/σ) is
# the half log-SNR and ρ = σ/α = √((1−ᾱ)/ᾱ) the VE noise level (diffusers' ``sigmas``).
#
# Each sampler is one short function in the style of k-diffusion's sampling.py. Data arithmetic
# is in x_T's dtype (float32 in the engine; float64 lets the tests check the math itself);
# every scalar is computed in float64 and rounded once to that dtype where it meets the data.
# ``model(x, t_int)`` is the network, ``noise(k, shape)`` the standard normals of network call k.
#
# Where diffusers (the anchor) differs, the function says so: see sample_ddpm (noise on a last
# step with t > 0), sample_ddim (the stride it steps by), sample_unipc (bh1 at a final σ of 0).

SAMPLER_NAMES = (
    "ddpm", "ddim", "dpmpp2m", "dpmpp3m", "dpmpp2m-sde", "dpmpp3m-sde", "unipc", "deis",
    "euler", "euler-ancestral", "heun", "consistency",
)
DDPM_VARIANCES = ("fixed_small", "fixed_large", "learned_range", "learned")
DPM_ALGORITHMS = ("dpmsolver++", "dpmsolver")
DPM_SOLVER_TYPES = ("midpoint", "heun")
UNIPC_SOLVER_TYPES = ("bh1", "bh2")
# diffusers' DPM-Solver and DEIS only lower the order of the last two steps of short runs.
LOWER_ORDER_FINAL_MAX_STEPS = 15


def _lincomb(dtype, *terms):
    """Σ c·y over (c, y) pairs: float64 scalars c rounded to the data dtype, summed in order."""
    f = np.dtype(dtype).type
    out = None
    for c, y in terms:
        term = f(c) * y
        out = term if out is None else out + term
    return out


def _clip(x0, clip):
    if clip is None:
        return x0
    f = x0.dtype.type
    return np.clip(x0, f(-clip), f(clip))


def _network(model, x, t_i, width=None):
    """The network's output at (x, t_i) in x's dtype, shape-checked ([B, width] when given)."""
    out = np.asarray(model(x, int(t_i)))
    expected = x.shape if width is None else (x.shape[0], width)
    if out.shape != expected:
        raise ValueError(f"model output has shape {out.shape}, expected {expected} at t={int(t_i)}")
    return out.astype(x.dtype, copy=False)


def _normal(noise, k, x):
    z = np.asarray(noise(k, x.shape))
    if z.shape != x.shape:
        raise ValueError(f"noise({k}, {x.shape}) returned shape {z.shape}")
    return z.astype(x.dtype, copy=False)


def _denoised(x, out, ab, prediction, clip):
    """x̂0 from the network output at ᾱ, then clipped to [−c, c] when clip = c is given.

    epsilon: (x − √(1−ᾱ)·ε̂)/√ᾱ;  v_prediction: √ᾱ·x − √(1−ᾱ)·v̂;  sample: the output itself.
    """
    f = x.dtype.type
    if prediction == "epsilon":
        x0 = (x - f(np.sqrt(1.0 - ab)) * out) / f(np.sqrt(ab))
    elif prediction == "v_prediction":
        x0 = f(np.sqrt(ab)) * x - f(np.sqrt(1.0 - ab)) * out
    elif prediction == "sample":
        x0 = out.copy()
    else:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return _clip(x0, clip)


def _eps_from_output(x, out, ab, prediction):
    """ε̂ read from the network output: ε̂ itself; v: √ᾱ·v̂ + √(1−ᾱ)·x; sample: (x − √ᾱ·out)/√(1−ᾱ)."""
    f = x.dtype.type
    if prediction == "epsilon":
        return out
    if prediction == "v_prediction":
        return f(np.sqrt(ab)) * out + f(np.sqrt(1.0 - ab)) * x
    return _eps_from_x0(x, out, ab)


def _eps_from_x0(x, x0, ab):
    """ε̂ = (x − √ᾱ·x̂0)/√(1−ᾱ)."""
    f = x.dtype.type
    return (x - f(np.sqrt(ab)) * x0) / f(np.sqrt(1.0 - ab))


def _half_log_snr(alpha_bar):
    """λ = log(√ᾱ/√(1−ᾱ)), +∞ where ᾱ = 1 (a final σ of 0)."""
    alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(alpha_bar < 1.0, 0.5 * np.log(alpha_bar / (1.0 - alpha_bar)), np.inf)


def _multistep_order(i, n, order, lower_order_final, final_first_order):
    """diffusers' DPM-Solver/DEIS order at step i of n: warm-up min(order, i+1); the last step
    first order when ``final_first_order`` (a final σ of 0, or euler_at_final) or when
    lower_order_final and n < 15; the one before it at most second order in that short case."""
    short = lower_order_final and n < LOWER_ORDER_FINAL_MAX_STEPS
    if i == n - 1 and (final_first_order or short):
        return 1
    k = min(order, i + 1)
    if i == n - 2 and short:
        k = min(k, 2)
    return k


def sample_ddpm(model, x, t, alpha_bar, noise, prediction, clip, variance="fixed_small"):
    """Ancestral sampling (Ho et al. 2020; diffusers' DDPMScheduler.step), step ᾱ → ᾱ′:

        β = 1 − ᾱ/ᾱ′,  μ = √ᾱ′·β/(1−ᾱ)·x̂0 + √(ᾱ/ᾱ′)·(1−ᾱ′)/(1−ᾱ)·x,  x′ = μ + σ·z,
        σ² = β̃ = max((1−ᾱ′)/(1−ᾱ)·β, 1e-20) (fixed_small),  β (fixed_large),
             exp(f·log β + (1−f)·log β̃) with f = (v+1)/2 (learned_range),  v (learned),

    v being the second half of a [B, 2D] network output [mean | v]. No noise on the last step
    (fastddpm's contract). diffusers adds σ·z whenever t > 0 (scheduling_ddpm.py, ``if t > 0:``):
    for fixed_small that is σ = 1e-10 at a last step to ᾱ′ = 1, but for fixed_large,
    learned_range and learned on a respaced run whose last t is > 0 (e.g. "trailing") it adds a
    real σ·z that fastddpm does not.
    """
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"variance must be one of {DDPM_VARIANCES}, got {variance!r}")
    f, d, n = x.dtype.type, x.shape[1], len(t)
    learned = variance in ("learned", "learned_range")
    for i in range(n):
        a, a_next = alpha_bar[i], alpha_bar[i + 1]
        out = _network(model, x, t[i], 2 * d if learned else None)
        out, v = (out[:, :d], out[:, d:]) if learned else (out, None)
        x0 = _denoised(x, out, a, prediction, clip)
        beta = 1.0 - a / a_next
        x = _lincomb(x.dtype, (np.sqrt(a_next) * beta / (1.0 - a), x0),
                     (np.sqrt(a / a_next) * (1.0 - a_next) / (1.0 - a), x))
        if i == n - 1:
            break
        beta_tilde = max((1.0 - a_next) / (1.0 - a) * beta, FIXED_SMALL_MIN_VARIANCE)
        if variance == "fixed_small":
            sigma = f(np.sqrt(beta_tilde))
        elif variance == "fixed_large":
            sigma = f(np.sqrt(beta))
        elif variance == "learned_range":
            frac = (v + f(1)) / f(2)
            sigma = np.exp(f(0.5) * (frac * f(np.log(beta)) + (f(1) - frac) * f(np.log(beta_tilde))))
        else:
            if np.any(v < 0):
                raise ValueError(f"variance='learned' reads the network's second half as σ²; "
                                 f"it has values < 0 at t={int(t[i])}")
            sigma = np.sqrt(v)
        x = x + sigma * _normal(noise, i, x)
    return x


def sample_ddim(model, x, t, alpha_bar, noise, prediction, clip, eta=0.0, clipped_eps=False):
    """DDIM(η) (Song et al. 2021, eq. 12 and 16; diffusers' DDIMScheduler.step), step ᾱ → ᾱ′:

        σ = η·√((1−ᾱ′)/(1−ᾱ))·√(1 − ᾱ/ᾱ′),  x′ = √ᾱ′·x̂0 + √(1−ᾱ′−σ²)·ε̂ + σ·z,

    ε̂ read from the network output (diffusers' use_clipped_model_output=False: for v √ᾱ·v̂ +
    √(1−ᾱ)·x, for sample from the unclipped x̂0) or, with clipped_eps, (x − √ᾱ·x̂0)/√(1−ᾱ) from
    the clipped x̂0. Noise on every step when η > 0 (σ = 0 on a last step to ᾱ′ = 1).
    diffusers' DDIM steps from t to t − T//N (scheduling_ddim.py, ``prev_timestep = timestep -
    num_train_timesteps // num_inference_steps``), which is the next visited step only for a
    uniform stride of T//N ("leading", or "trailing" with N | T); this function steps along the grid.
    """
    if not eta >= 0:
        raise ValueError(f"eta must be ≥ 0, got {eta!r}")
    n = len(t)
    for i in range(n):
        a, a_next = alpha_bar[i], alpha_bar[i + 1]
        out = _network(model, x, t[i])
        x0 = _denoised(x, out, a, prediction, None)
        eps = _eps_from_output(x, out, a, prediction)
        x0 = _clip(x0, clip)
        if clipped_eps:
            eps = _eps_from_x0(x, x0, a)
        sigma = eta * np.sqrt((1.0 - a_next) / (1.0 - a)) * np.sqrt(1.0 - a / a_next)
        if 1.0 - a_next - sigma**2 < 0:
            raise ValueError(f"eta={eta} is too large for this grid: 1 − ᾱ′ − σ² < 0 at step {i}")
        x = _lincomb(x.dtype, (np.sqrt(a_next), x0), (np.sqrt(1.0 - a_next - sigma**2), eps))
        if eta > 0:
            x = x + x.dtype.type(sigma) * _normal(noise, i, x)
    return x


def _dpm_differences(ms, lam, i, k, dtype):
    """DPM-Solver's backward differences of the history ms (newest last) at step i, order k:
    D0 = m0; D1 = (m0 − m1)/r0 (k = 2); for k = 3 D1 = D1_0 + r0/(r0+r1)·(D1_0 − D1_1) and
    D2 = (D1_0 − D1_1)/(r0+r1), with D1_j = (m_j − m_{j+1})/r_j, r_j = (λ_{i−j} − λ_{i−j−1})/h."""
    h = lam[i + 1] - lam[i]
    m0 = ms[-1]
    if k == 1:
        return m0, None, None
    r0 = (lam[i] - lam[i - 1]) / h
    d1_0 = _lincomb(dtype, (1.0 / r0, m0 - ms[-2]))
    if k == 2:
        return m0, d1_0, None
    r1 = (lam[i - 1] - lam[i - 2]) / h
    d1_1 = _lincomb(dtype, (1.0 / r1, ms[-2] - ms[-3]))
    d1 = d1_0 + _lincomb(dtype, (r0 / (r0 + r1), d1_0 - d1_1))
    return m0, d1, _lincomb(dtype, (1.0 / (r0 + r1), d1_0 - d1_1))


def _kdiffusion_phi_3(h_eta):
    """k-diffusion's φ₃ of sample_dpmpp_3m_sde (h_eta = (η + 1)·h): φ₂ = expm1(−h_eta)/h_eta + 1,
    φ₃ = φ₂/h_eta − ½; its step adds −φ₃·d2."""
    phi_2 = np.expm1(-h_eta) / h_eta + 1.0
    return phi_2 / h_eta - 0.5


def _dpmpp_coefficients(h, k, sde, solver_type, d2_coefficient="exact"):
    """DPM-Solver++ (data prediction) step of order k as (c_x, [c_D0 … c_D(k−1)], c_z), with the
    σ′/σ of x and the α′ of the D terms and σ′ of z factored out; φ = e^{−h} − 1 (ODE) or
    1 − e^{−2h} (SDE):

    ODE: x′ = (σ′/σ)·x − α′φ·D0 − ½α′φ·D1 (midpoint) | + α′(φ/h + 1)·D1 (heun, 3rd order)
             − α′((φ + h)/h² − ½)·D2
    SDE: x′ = (σ′/σ)e^{−h}·x + α′φ·D0 + ½α′φ·D1 (midpoint) | + α′(φ/(−2h) + 1)·D1
             − α′φ₃(2h)·D2 + σ′√φ·z            (d2_coefficient "exact": k-diffusion, η = 1)
             + α′((φ − 2h)/(2h)² − ½)·D2         ("diffusers": its multistep third-order SDE step)
    """
    midpoint = k == 2 and solver_type == "midpoint"
    if not sde:
        phi = np.expm1(-h)
        cs = [-phi]
        if k >= 2:
            cs.append(-0.5 * phi if midpoint else phi / h + 1.0)
        if k == 3:
            cs.append(-((phi + h) / h**2 - 0.5))
        return 1.0, cs, 0.0
    phi = -np.expm1(-2.0 * h)
    cs = [phi]
    if k >= 2:
        cs.append(0.5 * phi if midpoint else phi / (-2.0 * h) + 1.0)
    if k == 3:
        cs.append(-_kdiffusion_phi_3(2.0 * h) if d2_coefficient == "exact"
                  else (phi - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
    return np.exp(-h), cs, np.sqrt(phi)


def _dpm_coefficients(h, k, sde, solver_type):
    """The same for DPM-Solver (noise prediction), with α′/α of x and σ′ of the D terms and z
    factored out; ψ = e^{h} − 1 (diffusers has no third-order noise-prediction SDE step):

    ODE: x′ = (α′/α)·x − σ′ψ·D0 − ½σ′ψ·D1 (midpoint) | − σ′(ψ/h − 1)·D1 − σ′((ψ − h)/h² − ½)·D2
    SDE: x′ = (α′/α)·x − 2σ′ψ·D0 − σ′ψ·D1 (midpoint) | − 2σ′(ψ/h − 1)·D1 + σ′√(e^{2h} − 1)·z
    """
    psi = np.expm1(h)
    scale = 2.0 if sde else 1.0
    cs = [-scale * psi]
    if k >= 2:
        cs.append(-0.5 * scale * psi if (k == 2 and solver_type == "midpoint") else -scale * (psi / h - 1.0))
    if k == 3:
        cs.append(-((psi - h) / h**2 - 0.5))
    return 1.0, cs, (np.sqrt(np.expm1(2.0 * h)) if sde else 0.0)


def _check_dpm_options(algorithm, solver_type, sde, order, alpha_bar):
    if algorithm not in DPM_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {DPM_ALGORITHMS}, got {algorithm!r}")
    if solver_type not in DPM_SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {DPM_SOLVER_TYPES}, got {solver_type!r}")
    if algorithm == "dpmsolver" and alpha_bar[-1] == 1.0:
        raise ValueError("algorithm='dpmsolver' (noise prediction) needs a final ᾱ < 1 (sigma_min)")
    if algorithm == "dpmsolver" and sde and order > 2:
        # diffusers' multistep_dpm_solver_third_order_update has no "sde-dpmsolver" branch
        # (UnboundLocalError on x_t).
        raise ValueError("algorithm='dpmsolver' has no third-order SDE step (diffusers neither)")


def sample_dpmsolver_multistep(model, x, t, alpha_bar, noise, prediction, clip, order, sde,
                               algorithm="dpmsolver++", solver_type="midpoint",
                               lower_order_final=True, euler_at_final=False, d2_coefficient="exact"):
    """Multistep DPM-Solver++ (Lu et al. 2022b) and DPM-Solver (2022a), ODE or SDE, orders 1–3 —
    diffusers' DPMSolverMultistepScheduler (algorithm_type "dpmsolver++"/"sde-dpmsolver++",
    "dpmsolver"/"sde-dpmsolver"), formulas in _dpmpp_coefficients / _dpm_coefficients, on the
    history of x̂0 (++: clipped) or ε̂ (noise prediction: from the output, or recomputed from the
    clipped x̂0 when clip is given), h = λ′ − λ. Order rules in _multistep_order; the SDE draws
    z at every step (the last step's σ′·√(1 − e^{−2h}) is 0 at a final σ of 0).
    A step with h = 0 leaves x as it is. diffusers' karras grids with final_sigmas_type
    "sigma_min" end with one (their last karras σ is σ_min already); there its third-order step
    (≥ 15 steps, so not lowered) gives NaN: r0 = r1 = h_0/0 = ∞ and r0/(r0 + r1) = ∞/∞
    (scheduling_dpmsolver_multistep.py, ``D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)``).
    d2_coefficient ("exact" | "diffusers"): the third-order SDE step's D2 term, k-diffusion's
    −φ₃(2h) or diffusers' (φ − 2h)/(2h)² − ½, which does not vanish as h → 0.
    """
    if d2_coefficient not in ("exact", "diffusers"):
        raise ValueError(f"d2_coefficient must be 'exact' or 'diffusers', got {d2_coefficient!r}")
    _check_dpm_options(algorithm, solver_type, sde, order, alpha_bar)
    n, lam = len(t), _half_log_snr(alpha_bar)
    alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    ms = []
    for i in range(n):
        a = alpha_bar[i]
        out = _network(model, x, t[i])
        if algorithm == "dpmsolver++":
            ms.append(_denoised(x, out, a, prediction, clip))
        else:
            eps = _eps_from_output(x, out, a, prediction)
            if clip is not None:  # as diffusers' thresholding: x̂0 from ε̂, clipped, ε̂ back
                eps = _eps_from_x0(x, _denoised(x, eps, a, "epsilon", clip), a)
            ms.append(eps)
        h = lam[i + 1] - lam[i]
        if h == 0:  # a null step (ᾱ′ = ᾱ) is the identity, the h → 0 limit of every order
            continue
        k = _multistep_order(i, n, order, lower_order_final, alpha_bar[-1] == 1.0 or euler_at_final)
        d0, d1, d2 = _dpm_differences(ms, lam, i, k, x.dtype)
        if algorithm == "dpmsolver++":
            cx, cs, cz = _dpmpp_coefficients(h, k, sde, solver_type, d2_coefficient)
            cx, scale = cx * sigma[i + 1] / sigma[i], alpha[i + 1]
        else:
            cx, cs, cz = _dpm_coefficients(h, k, sde, solver_type)
            cx, scale = cx * alpha[i + 1] / alpha[i], sigma[i + 1]
        terms = [(cx, x)] + [(scale * c, dk) for c, dk in zip(cs, (d0, d1, d2))]
        terms += [(sigma[i + 1] * cz, _normal(noise, i, x))] if sde else []
        x = _lincomb(x.dtype, *terms)
    return x


def _unipc_update(x, ms, lams, lam_next, alpha_next, sigma_next, sigma_now, solver_type, m_new=None):
    """One UniP (predictor, m_new None) or UniC (corrector) update of order p = len(ms) (Zhao et
    al. 2023, Algorithms 2–3, B(h) variants; diffusers' multistep_uni_p/c_bh_update, predict_x0):

        x′ = (σ′/σ)·x − α′(e^{−h} − 1)·m0 − α′·B(h)·(Σ_k ρ_k·D_k [+ ρ_p·(m_new − m0)]),

    ms/lams the x̂0 history and its λ, newest first (m0 at x's point); h = λ′ − λ0,
    r_k = (λ_k − λ0)/h, D_k = (m_k − m0)/r_k (k = 1 … p−1); B(h) = −h (bh1) or e^{−h} − 1 (bh2);
    g_j = j!·φ_j/B(h) from φ_1 = (e^{−h}−1)/(−h) − 1, φ_{j+1} = φ_j/(−h) − 1/(j+1)!;
    R_jk = r_k^{j−1} (r_p = 1). UniP solves R[:p−1, :p−1]·ρ = g[:p−1] (ρ = ½ for p = 2),
    UniC solves R·ρ = g (ρ = ½ for p = 1). With no residual term (p = 1 predictor) x′ is the
    exact limit as h → ∞ too: x′ = x̂0 at a final σ of 0 (diffusers' bh1 gives NaN there,
    B(h)·0 = −∞·0 in multistep_uni_p_bh_update: ``x_t = x_t_ - alpha_t * B_h * pred_res``).
    """
    p, m0 = len(ms), ms[0]
    if lam_next == lams[0]:  # a null step (ᾱ′ = ᾱ): the identity, the h → 0 limit
        return x
    hh = -(lam_next - lams[0])
    h_phi_1 = np.expm1(hh)
    terms = [(sigma_next / sigma_now, x), (-alpha_next * h_phi_1, m0)]
    if p == 1 and m_new is None:
        return _lincomb(x.dtype, *terms)
    b_h = hh if solver_type == "bh1" else h_phi_1
    rks = np.array([(lam - lams[0]) / -hh for lam in lams[1:]] + [1.0])
    g, h_phi_k, factorial = [], h_phi_1 / hh - 1.0, 1.0
    for j in range(1, p + 1):
        g.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    r = np.stack([rks**j for j in range(p)])
    if m_new is None:
        rhos = np.array([0.5]) if p == 2 else np.linalg.solve(r[:-1, :-1], np.array(g[:-1]))
    else:
        rhos = np.array([0.5]) if p == 1 else np.linalg.solve(r, np.array(g))
    f = x.dtype.type
    res = [f(rhos[k - 1]) * ((ms[k] - m0) / f(rks[k - 1])) for k in range(1, p)]
    if m_new is not None:
        res.append(f(rhos[-1]) * (m_new - m0))
    return _lincomb(x.dtype, *terms, (-alpha_next * b_h, sum(res[1:], res[0])))


def sample_unipc(model, x, t, alpha_bar, noise, prediction, clip, order=2, solver_type="bh2",
                 lower_order_final=True, disable_corrector=()):
    """UniPC (Zhao et al. 2023; diffusers' UniPCMultistepScheduler with predict_x0=True): at
    point i the network's x̂0 (from the *predicted* x_i) first corrects x_i with UniC of the
    previous predictor's order (unless i−1 is in disable_corrector), then UniP of order
    p = min(order, i+1, N−i if lower_order_final) moves to point i+1 (_unipc_update). The last
    point gets no corrector (there is no network call after it).
    """
    if solver_type not in UNIPC_SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {UNIPC_SOLVER_TYPES}, got {solver_type!r}")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3 for unipc, got {order!r}")
    if not lower_order_final and order > 1 and alpha_bar[-1] == 1.0:
        raise ValueError("unipc with lower_order_final=False needs a final ᾱ < 1: a higher-order "
                         "last step to σ = 0 diverges (r_k = 0)")
    n, lam = len(t), _half_log_snr(alpha_bar)
    alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    ms, previous = [], None
    for i in range(n):
        m = _denoised(x, _network(model, x, t[i]), alpha_bar[i], prediction, clip)
        if previous is not None and i - 1 not in disable_corrector:
            x_prev, p_prev = previous
            hist = slice(i - 1, i - 1 - p_prev if i - 1 - p_prev >= 0 else None, -1)
            x = _unipc_update(x_prev, ms[hist], lam[hist], lam[i], alpha[i], sigma[i],
                              sigma[i - 1], solver_type, m_new=m)
        ms.append(m)
        p = min(order, n - i) if lower_order_final else order
        p = min(p, i + 1)
        previous = (x, p)
        hist = slice(i, i - p if i - p >= 0 else None, -1)
        x = _unipc_update(x, ms[hist], lam[hist], lam[i + 1], alpha[i + 1], sigma[i + 1],
                          sigma[i], solver_type)
    return x


def _log_rho_lagrange_integrals(log_rhos, rho, rho_next, nodes=16):
    """∫_ρ^ρ′ ℓ_j(log r) dr for the Lagrange basis ℓ_j through the points log_rhos, by
    Gauss–Legendre in u = log r (integrand ℓ_j(u)·e^u, smooth: 16 nodes are exact to float64)."""
    u_a, u_b = np.log(rho), np.log(rho_next)
    z, w = np.polynomial.legendre.leggauss(nodes)
    u = 0.5 * (u_b - u_a) * z + 0.5 * (u_a + u_b)
    weights = 0.5 * (u_b - u_a) * w * np.exp(u)
    out = []
    for j, uj in enumerate(log_rhos):
        ell = np.prod([(u - um) / (uj - um) for m_, um in enumerate(log_rhos) if m_ != j], axis=0)
        out.append(float(np.sum(weights * ell)))
    return out


def sample_deis(model, x, t, alpha_bar, noise, prediction, clip, order=2, lower_order_final=True):
    """DEIS, log-ρ multistep (Zhang & Chen 2023; diffusers' DEISMultistepScheduler, "deis"):

        ε̂_i = (x_i − α_i·x̂0_i)/σ_i (from the clipped x̂0),  ρ = σ/α,
        x′/α′ = x/α + Σ_j ε̂_{i−j} · ∫_ρ^ρ′ ℓ_j(log r) dr,

    ℓ_j the Lagrange basis through log ρ_i … log ρ_{i−k+1}, k = this step's order (the
    _multistep_order rule with no final-σ clause). DEIS ends at a final ᾱ < 1 (diffusers: ᾱ_0).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3 for deis, got {order!r}")
    if alpha_bar[-1] == 1.0:
        raise ValueError("deis needs a final ᾱ < 1 (its log-ρ integrals end at ρ > 0)")
    n = len(t)
    alpha, rho = np.sqrt(alpha_bar), np.sqrt((1.0 - alpha_bar) / alpha_bar)
    eps = []
    for i in range(n):
        x0 = _denoised(x, _network(model, x, t[i]), alpha_bar[i], prediction, clip)
        eps.append(_eps_from_x0(x, x0, alpha_bar[i]))
        k = _multistep_order(i, n, order, lower_order_final, False)
        coefs = _log_rho_lagrange_integrals(np.log(rho[i - np.arange(k)]), rho[i], rho[i + 1])
        x = _lincomb(x.dtype, (1.0 / alpha[i], x), *[(c, eps[i - j]) for j, c in enumerate(coefs)])
        x = _lincomb(x.dtype, (alpha[i + 1], x))
    return x


def _ve(alpha_bar):
    """ρ = √((1−ᾱ)/ᾱ), the VE noise level of X = x/√ᾱ (diffusers' Euler/Heun ``sigmas``)."""
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def sample_euler(model, x, t, alpha_bar, noise, prediction, clip):
    """Euler on the probability-flow ODE in the VE variable (Karras et al. 2022, Alg. 1 without
    churn; diffusers' EulerDiscreteScheduler): X = x/√ᾱ, ρ = √((1−ᾱ)/ᾱ),

        d = (X − x̂0)/ρ,  X′ = X + (ρ′ − ρ)·d,  x′ = √ᾱ′·X′

    (the network sees x = X/√(ρ²+1), diffusers' scale_model_input)."""
    rho = _ve(alpha_bar)
    for i in range(len(t)):
        x0 = _denoised(x, _network(model, x, t[i]), alpha_bar[i], prediction, clip)
        big_x = _lincomb(x.dtype, (1.0 / np.sqrt(alpha_bar[i]), x))
        d = (big_x - x0) / x.dtype.type(rho[i])
        x = _lincomb(x.dtype, (np.sqrt(alpha_bar[i + 1]), big_x + x.dtype.type(rho[i + 1] - rho[i]) * d))
    return x


def sample_euler_ancestral(model, x, t, alpha_bar, noise, prediction, clip, eta=1.0):
    """Ancestral Euler (k-diffusion's sample_euler_ancestral; diffusers'
    EulerAncestralDiscreteScheduler, η = 1), in X = x/√ᾱ with ρ = √((1−ᾱ)/ᾱ):

        ρ↑ = min(ρ′, η·√(ρ′²(ρ² − ρ′²)/ρ²)),  ρ↓ = √(ρ′² − ρ↑²),
        X′ = X + (ρ↓ − ρ)·(X − x̂0)/ρ + ρ↑·z,  x′ = √ᾱ′·X′.
    """
    if not eta >= 0:
        raise ValueError(f"eta must be ≥ 0, got {eta!r}")
    rho = _ve(alpha_bar)
    f = x.dtype.type
    for i in range(len(t)):
        x0 = _denoised(x, _network(model, x, t[i]), alpha_bar[i], prediction, clip)
        r, r_next = rho[i], rho[i + 1]
        r_up = min(r_next, eta * np.sqrt(r_next**2 * (r**2 - r_next**2) / r**2))
        r_down = np.sqrt(r_next**2 - r_up**2)
        big_x = _lincomb(x.dtype, (1.0 / np.sqrt(alpha_bar[i]), x))
        big_x = big_x + f(r_down - r) * ((big_x - x0) / f(r))
        if r_up > 0:
            big_x = big_x + f(r_up) * _normal(noise, i, x)
        x = _lincomb(x.dtype, (np.sqrt(alpha_bar[i + 1]), big_x))
    return x


def sample_heun(model, x, t, alpha_bar, noise, prediction, clip):
    """Heun's second-order method (Karras et al. 2022, Alg. 1 without churn; diffusers'
    HeunDiscreteScheduler) in X = x/√ᾱ, ρ = √((1−ᾱ)/ᾱ):

        d = (X − x̂0(x, t_i))/ρ,  X̃ = X + (ρ′ − ρ)·d,
        d̃ = (X̃ − x̂0(√ᾱ′·X̃, t_{i+1}))/ρ′,  X′ = X + (ρ′ − ρ)·(d + d̃)/2,

    the last step (to the final point, which has no t) a plain Euler step: 2N − 1 network
    calls for N grid points."""
    rho = _ve(alpha_bar)
    f, n = x.dtype.type, len(t)
    for i in range(n):
        a, a_next = alpha_bar[i], alpha_bar[i + 1]
        x0 = _denoised(x, _network(model, x, t[i]), a, prediction, clip)
        big_x = _lincomb(x.dtype, (1.0 / np.sqrt(a), x))
        d = (big_x - x0) / f(rho[i])
        dt = f(rho[i + 1] - rho[i])
        big_x_euler = big_x + d * dt
        if i < n - 1:
            x_euler = _lincomb(x.dtype, (np.sqrt(a_next), big_x_euler))
            x0_next = _denoised(x_euler, _network(model, x_euler, t[i + 1]), a_next, prediction, clip)
            d_next = (big_x_euler - x0_next) / f(rho[i + 1])
            big_x_euler = big_x + (d + d_next) / f(2) * dt
        x = _lincomb(x.dtype, (np.sqrt(a_next), big_x_euler))
    return x


def sample_consistency(model, x, t, alpha_bar, noise, prediction, clip):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; openai/consistency_models
    ``stochastic_iterative_sampler`` in variance-preserving form), step ᾱ → ᾱ′:

        x′ = √ᾱ′·x̂0 + √(1−ᾱ′)·z   (no noise when ᾱ′ = 1, the end of a run to a clean sample).

    The state is forgotten: each step keeps only the network's x̂0 and re-noises it to ᾱ′.
    """
    f = x.dtype.type
    for i in range(len(t)):
        a, a_next = alpha_bar[i], alpha_bar[i + 1]
        x0 = _denoised(x, _network(model, x, t[i]), a, prediction, clip)
        x = _lincomb(x.dtype, (np.sqrt(a_next), x0))
        if a_next < 1.0:
            x = x + f(np.sqrt(1.0 - a_next)) * _normal(noise, i, x)
    return x


# name → (function, the options it fixes)
_SAMPLERS = {
    "ddpm": (sample_ddpm, {}),
    "ddim": (sample_ddim, {}),
    "dpmpp2m": (sample_dpmsolver_multistep, {"order": 2, "sde": False}),
    "dpmpp3m": (sample_dpmsolver_multistep, {"order": 3, "sde": False}),
    "dpmpp2m-sde": (sample_dpmsolver_multistep, {"order": 2, "sde": True}),
    "dpmpp3m-sde": (sample_dpmsolver_multistep, {"order": 3, "sde": True}),
    "unipc": (sample_unipc, {}),
    "deis": (sample_deis, {}),
    "euler": (sample_euler, {}),
    "euler-ancestral": (sample_euler_ancestral, {}),
    "heun": (sample_heun, {}),
    "consistency": (sample_consistency, {}),
}


def network_calls(name, n_points):
    """Network calls of a run over a grid of n_points timesteps (heun: 2N − 1, else N)."""
    return 2 * n_points - 1 if name == "heun" else n_points


def sample_run(name, model, x_T, t, alpha_bar, noise, prediction="epsilon", clip=None, **options):
    """Whole sampling run of sampler ``name`` over the grid (t, alpha_bar) from x_T; returns x_0.

    x_T [B, D] float32 (or float64: all data arithmetic follows its dtype); t int [N];
    alpha_bar float64 [N+1] in (0, 1], non-decreasing, only its last entry may be 1;
    ``model(x, t_int)``; ``noise(k, shape)`` the standard normals of network call k;
    prediction ∈ PREDICTIONS; clip None or c > 0 (x̂0 clipped to [−c, c]); options per sampler:
    ddpm variance; ddim eta, clipped_eps; dpmpp* algorithm, solver_type, lower_order_final,
    euler_at_final; unipc order, solver_type, lower_order_final, disable_corrector; deis order,
    lower_order_final; euler-ancestral eta.
    """
    if name not in _SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLER_NAMES}, got {name!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be None or > 0, got {clip!r}")
    x = np.array(x_T)
    if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x_T must be a float32 or float64 array [B, D], got {x.dtype} {x.shape}")
    t = np.asarray(t)
    if t.ndim != 1 or len(t) < 1 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"t must be a 1-D integer array with N ≥ 1 entries, got {t.dtype} {t.shape}")
    alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
    if alpha_bar.shape != (len(t) + 1,):
        raise ValueError(f"alpha_bar must have N+1 = {len(t) + 1} entries, got {alpha_bar.shape}")
    if not (np.all(alpha_bar > 0) and np.all(alpha_bar[:-1] < 1) and alpha_bar[-1] <= 1
            and np.all(np.diff(alpha_bar) >= 0)):
        raise ValueError("alpha_bar must be non-decreasing in (0, 1] with only its last entry = 1")
    function, fixed = _SAMPLERS[name]
    return function(model, x, t, alpha_bar, noise, prediction, clip, **fixed, **options)


# ----------------------------------------------------------------------------------------
# Conditioning: class labels and classifier-free guidance (docs/sampling.md, "Guidance")
# ----------------------------------------------------------------------------------------

# The labels' Philox stream (2³² − 1), restated here: this module imports nothing of fastddpm.
LABEL_STREAM = 2**32 - 1


def _label_words(seed: int, index):
    """Philox word ``index`` (int64 array) of (seed, LABEL_STREAM): lane index & 3 of block index >> 2."""
    index = np.asarray(index, dtype=np.int64)
    lanes = np.stack(randint4x(seed, LABEL_STREAM, index >> 2), axis=0)  # [4, n]
    return lanes[index & 3, np.arange(index.size)].astype(np.uint64)


def labels_categorical(seed: int, first: int, n: int, weights):
    """Labels of global sample indices first … first+n−1 drawn independently with probabilities
    ∝ ``weights`` [K]: label = #{k < K−1 : ⌊2³²·(w_0+…+w_k)/Σw⌋ ≤ word(s)}."""
    w = np.asarray(weights, dtype=np.float64)
    cum = np.cumsum(w)
    bounds = np.floor(cum[:-1] / cum[-1] * 2.0**32)
    words = _label_words(seed, first + np.arange(n, dtype=np.int64)).astype(np.float64)
    return (words[:, None] >= bounds[None, :]).sum(axis=1).astype(np.int64)


def labels_balanced(seed: int, first: int, n: int, num_classes: int):
    """Labels of global sample indices first … first+n−1: block b = ⌊s/K⌋ of K consecutive indices is
    the Fisher–Yates permutation of 0 … K−1 with, for j = K−1 down to 1, entries j and
    ⌊word(bK + j)·(j+1)/2³²⌋ swapped; sample s takes entry s − bK."""
    k = int(num_classes)
    out = np.empty(n, dtype=np.int64)
    for i, s in enumerate(range(first, first + n)):
        b = s // k
        perm = list(range(k))
        words = _label_words(seed, b * k + np.arange(k, dtype=np.int64))
        for j in range(k - 1, 0, -1):
            r = (int(words[j]) * (j + 1)) >> 32
            perm[j], perm[r] = perm[r], perm[j]
        out[i] = perm[s - b * k]
    return out


def guided_model(model, labels, null_label: int, scale: float, rescale: float = 0.0, interval=None,
                 variance: bool = False):
    """The network a guided run steps with, as ``f(x, t)`` for :func:`sample_run`.

    Classifier-free guidance (Ho & Salimans 2022) as the diffusers DiT pipeline writes it, with the
    two outputs from two separate calls ``model(x, t, labels)`` (c) and ``model(x, t, null)`` (u)
    on the B rows: m = u + w·(c − u); w = 1 is c, w = 0 is u. ``rescale`` φ > 0 (diffusers'
    ``rescale_noise_cfg``): m ← φ·m·σ(c)/σ(m) + (1 − φ)·m per sample, σ the standard deviation over
    the sample with Bessel's correction (float64 here; 1 where σ(m) = 0 or D = 1). ``interval``
    (t_lo, t_hi): guidance at calls with t_lo ≤ t ≤ t_hi, c elsewhere. ``variance``: the outputs
    are [B, 2D] (mean | variance channel): the mean is guided, the variance channel is c's.
    """
    labels = np.asarray(labels, dtype=np.int64)
    null = np.full_like(labels, int(null_label))

    def f(x, t):
        c = np.asarray(model(x, t, labels))
        w = scale
        if interval is not None and not interval[0] <= int(t) <= interval[1]:
            w = 1.0
        if w == 1.0:
            return c
        u = np.asarray(model(x, t, null))
        if w == 0.0:
            return u
        d = x.shape[1]
        cm, um = (c[:, :d], u[:, :d]) if variance else (c, u)
        f32 = cm.dtype.type
        m = um + f32(w) * (cm - um)
        if rescale:
            sc = cm.astype(np.float64).std(axis=1, ddof=1, keepdims=True) if d > 1 else np.ones((len(m), 1))
            sm = m.astype(np.float64).std(axis=1, ddof=1, keepdims=True) if d > 1 else np.ones((len(m), 1))
            ratio = np.where(sm > 0, sc / np.where(sm > 0, sm, 1.0), 1.0)
            m = (rescale * (m * ratio) + (1.0 - rescale) * m).astype(cm.dtype)
        return np.concatenate([m, c[:, d:]], axis=1) if variance else m
    return f
