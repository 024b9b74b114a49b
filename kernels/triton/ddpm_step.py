"""ddpm_step: one fused ancestral step x_t → x_{prev_t}: x̂0 → clip → posterior mean → + σ·z."""
from __future__ import annotations

from ..samplers.ddpm import step_rows
from .update import step_update
from .utils import step_launch


def ddpm_step(schedule, x_t, model_output, t, prev_t, prediction, variance, clip, noise, seed, stream,
              offset, out, check_finite):
    """x_t, model_output [B, …] (float32/float16/bfloat16, same device, contiguous); t int or int
    tensor [B]; prev_t None (t − 1), int or int tensor [B] in [−1, t). ``out`` may be x_t.
    With ``check_finite`` also range-checks tensor t/prev_t (one host sync). Bytes per element: 12.
    """
    out, launch = step_launch(schedule, x_t, model_output, t, prev_t, noise, seed, stream, offset, out,
                              check_finite, noise_wanted=True)
    if launch is not None:
        step_update(step_rows, launch, prediction=prediction, variance=variance, clip=clip)
    return out
