"""ddim_step: one fused DDIM(η) step x_t → x_{prev_t}: x̂0, ε̂ → clip → √ᾱ_p·x̂0 + dir·ε̂ + σ·z."""
from __future__ import annotations

from ..samplers.ddim import step_rows
from .update import step_update
from .utils import step_launch


def ddim_step(schedule, x_t, model_output, t, prev_t, eta, prediction, clip, noise, seed, stream, offset,
              out, check_finite):
    """Same conventions as ddpm_step; noise is drawn (or read) only when η > 0. Bytes per element: 12."""
    out, launch = step_launch(schedule, x_t, model_output, t, prev_t, noise, seed, stream, offset, out,
                              check_finite, noise_wanted=eta > 0)
    if launch is not None:
        step_update(step_rows, launch, prediction=prediction, eta=eta, clip=clip)
    return out
