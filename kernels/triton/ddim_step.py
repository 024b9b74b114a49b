"""ddim_step: one fused DDIM(η) step x_t → x_{prev_t}: x̂0, ε̂ → clip → √ᾱ_p·x̂0 + dir·ε̂ + σ·z."""
from __future__ import annotations

import triton
import triton.language as tl

from .update import per_sample_update
from .utils import NO_SPECIALIZE, PRED_CODE, on_device, step_alphas, step_launch, step_noise, tile, x0_coefficients


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _ddim_step_kernel(x_ptr, m_ptr, out_ptr, noise_ptr, t_ptr, p_ptr, ac_ptr, key_ptr,
                      n, per_sample, last_step, seed_word, stream_word, ctr_lo, ctr_hi, clip, eta,
                      PRED: tl.constexpr, HAS_CLIP: tl.constexpr,
                      T_PER_SAMPLE: tl.constexpr, P_PER_SAMPLE: tl.constexpr,
                      PREV_IS_T_MINUS_1: tl.constexpr, NOISE: tl.constexpr, KEY_ON_DEVICE: tl.constexpr,
                      SHIFT: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    k, mask, counters = tile(n, ctr_lo, ctr_hi, SHIFT, IDX64, BLOCK)
    # Loads first: they do not depend on the coefficients, so their latency overlaps the
    # float64 coefficient chain and the Philox rounds.
    x = tl.load(x_ptr + k, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + k, mask=mask).to(tl.float32)
    ab_t, ab_p, p = step_alphas(t_ptr, p_ptr, ac_ptr, k, mask, per_sample, last_step,
                                T_PER_SAMPLE, P_PER_SAMPLE, PREV_IS_T_MINUS_1)
    beta_c = 1.0 - ab_t / ab_p
    sigma = tl.cast(eta, tl.float64) * tl.sqrt((1.0 - ab_p) / (1.0 - ab_t)) * tl.sqrt(beta_c)
    sigma = tl.where(p >= 0, sigma, 0.0)
    sab_p = tl.sqrt(ab_p).to(tl.float32)
    dirc = tl.sqrt(tl.maximum(1.0 - ab_p - sigma * sigma, 0.0)).to(tl.float32)

    if PRED == 1:
        x0 = m
    else:
        cx, cm = x0_coefficients(ab_t, PRED)
        x0 = cx * x + cm * m
    # ε̂ from the unclipped x̂0 (diffusers' default, use_clipped_model_output=False).
    if PRED == 0:
        eps = m
    else:
        eps = (x - tl.sqrt(ab_t).to(tl.float32) * x0) / tl.sqrt(1.0 - ab_t).to(tl.float32)
    if HAS_CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    y = sab_p * x0 + dirc * eps
    if NOISE != 0:
        z = step_noise(noise_ptr, out_ptr, key_ptr, k, mask, counters, seed_word, stream_word,
                       NOISE, KEY_ON_DEVICE)
        y = y + sigma.to(tl.float32) * z
    tl.store(out_ptr + k, y.to(out_ptr.dtype.element_ty), mask=mask)


def ddim_step(schedule, x_t, model_output, t, prev_t, eta, prediction, clip, noise, seed, stream, offset,
              out, check_finite):
    """Same conventions as ddpm_step; noise is drawn (or read) only when η > 0. Bytes per element: 12."""
    out, launch = step_launch(schedule, x_t, model_output, t, prev_t, noise, seed, stream, offset, out,
                              check_finite, noise_wanted=eta > 0)
    if launch is not None:
        grid, args, kwargs = launch
        if kwargs["T_PER_SAMPLE"] or kwargs["P_PER_SAMPLE"]:  # B float32 rows, not float64 math per element
            per_sample_update("ddim", launch, prediction=prediction, eta=eta, clip=clip)
            return out
        with on_device(x_t):
            _ddim_step_kernel[grid](*args, float(clip or 0.0), float(eta), PRED=PRED_CODE[prediction],
                                    HAS_CLIP=clip is not None, **kwargs)
    return out
