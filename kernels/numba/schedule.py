"""Schedule tables from betas in float64 (cumulative product is sequential: one thread)."""
import math

import numpy as np
from numba import njit

TABLE_NAMES = (
    "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
    "posterior_mean_coef2", "snr",
)


@njit(cache=True)
def _tables_kernel(betas, out):
    T = betas.shape[0]
    prod = 1.0
    for i in range(T):
        beta = betas[i]
        alpha = 1.0 - beta
        prev = prod
        prod = prod * alpha
        out[0, i] = beta
        out[1, i] = alpha
        out[2, i] = prod
        out[3, i] = prev
        out[4, i] = math.sqrt(prod)
        out[5, i] = math.sqrt(1.0 - prod)
        out[6, i] = math.sqrt(1.0 / prod)
        out[7, i] = math.sqrt(1.0 / prod - 1.0)
        out[8, i] = beta * (1.0 - prev) / (1.0 - prod)
        out[10, i] = beta * math.sqrt(prev) / (1.0 - prod)
        out[11, i] = (1.0 - prev) * math.sqrt(alpha) / (1.0 - prod)
        out[12, i] = prod / (1.0 - prod)
    for i in range(T):
        # log β̃ with β̃_1 in place of β̃_0 (which is 0).
        out[9, i] = math.log(out[8, 1] if (i == 0 and T > 1) else out[8, i])


def schedule_tables(betas: np.ndarray) -> dict:
    """Every table of the design from float64 betas [T]. Bytes: 13·8 per step written."""
    out = np.empty((len(TABLE_NAMES), betas.shape[0]), dtype=np.float64)
    _tables_kernel(np.ascontiguousarray(betas, dtype=np.float64), out)
    return dict(zip(TABLE_NAMES, out))
