"""ddpm_step: one fused ancestral step x_t → x_{prev_t}: x̂0 → clip → posterior mean → + σ·z."""
from __future__ import annotations

import triton
import triton.language as tl

from .update import per_sample_update
from .utils import NO_SPECIALIZE, PRED_CODE, on_device, step_alphas, step_launch, step_noise, tile, x0_coefficients

_VAR_CODE = {"fixed_small": 0, "fixed_large": 1}


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _ddpm_step_kernel(x_ptr, m_ptr, out_ptr, noise_ptr, t_ptr, p_ptr, ac_ptr, key_ptr,
                      n, per_sample, last_step, seed_word, stream_word, ctr_lo, ctr_hi, clip,
                      PRED: tl.constexpr, VAR: tl.constexpr, HAS_CLIP: tl.constexpr,
                      T_PER_SAMPLE: tl.constexpr, P_PER_SAMPLE: tl.constexpr,
                      PREV_IS_T_MINUS_1: tl.constexpr, NOISE: tl.constexpr, KEY_ON_DEVICE: tl.constexpr,
                      SHIFT: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    k, mask, counters = tile(n, ctr_lo, ctr_hi, SHIFT, IDX64, BLOCK)
    # Loads first: they do not depend on the coefficients, so their latency overlaps the
    # float64 coefficient chain and the Philox rounds.
    x = tl.load(x_ptr + k, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + k, mask=mask).to(tl.float32)
    # Coefficients in float64 from ᾱ, rounded once to float32 (as the reference does); with
    # a scalar t they are computed once per program, with a per-sample t per element.
    ab_t, ab_p, p = step_alphas(t_ptr, p_ptr, ac_ptr, k, mask, per_sample, last_step,
                                T_PER_SAMPLE, P_PER_SAMPLE, PREV_IS_T_MINUS_1)
    alpha_c = ab_t / ab_p
    beta_c = 1.0 - alpha_c
    c1 = (tl.sqrt(ab_p) * beta_c / (1.0 - ab_t)).to(tl.float32)
    c2 = (tl.sqrt(alpha_c) * (1.0 - ab_p) / (1.0 - ab_t)).to(tl.float32)

    if PRED == 1:
        x0 = m
    else:
        cx, cm = x0_coefficients(ab_t, PRED)
        x0 = cx * x + cm * m
    if HAS_CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    y = c1 * x0 + c2 * x
    if NOISE != 0:
        if VAR == 0:
            var = tl.maximum((1.0 - ab_p) / (1.0 - ab_t) * beta_c, 1e-20)
        else:
            var = beta_c
        sigma = tl.where(p >= 0, tl.sqrt(var), 0.0).to(tl.float32)
        z = step_noise(noise_ptr, out_ptr, key_ptr, k, mask, counters, seed_word, stream_word,
                       NOISE, KEY_ON_DEVICE)
        y = y + sigma * z
    tl.store(out_ptr + k, y.to(out_ptr.dtype.element_ty), mask=mask)


def ddpm_step(schedule, x_t, model_output, t, prev_t, prediction, variance, clip, noise, seed, stream,
              offset, out, check_finite):
    """x_t, model_output [B, …] (float32/float16/bfloat16, same device, contiguous); t int or int
    tensor [B]; prev_t None (t − 1), int or int tensor [B] in [−1, t). ``out`` may be x_t.
    With ``check_finite`` also range-checks tensor t/prev_t (one host sync). Bytes per element: 12.
    """
    out, launch = step_launch(schedule, x_t, model_output, t, prev_t, noise, seed, stream, offset, out,
                              check_finite, noise_wanted=True)
    if launch is not None:
        grid, args, kwargs = launch
        if kwargs["T_PER_SAMPLE"] or kwargs["P_PER_SAMPLE"]:  # B float32 rows, not float64 math per element
            per_sample_update("ddpm", launch, prediction=prediction, variance=variance, clip=clip)
            return out
        with on_device(x_t):
            _ddpm_step_kernel[grid](*args, float(clip or 0.0), PRED=PRED_CODE[prediction],
                                    VAR=_VAR_CODE[variance], HAS_CLIP=clip is not None, **kwargs)
    return out
