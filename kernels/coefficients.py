"""The step math's one layout: schedule tables and the generic coefficient row every sampler compiles to.

Everything here is float64 and written with array operators plus the few functions of an
array namespace ``xp`` (``sqrt``, ``where``, ``stack(…, axis=1)``, ``zeros_like``,
``ones_like``, ``clip``, ``maximum(x, scalar)``); NumPy is the default, and kernels/triton passes
a torch shim so that the public ops' per-sample rows are built on the device without a host sync.

The generic row (docs/sampling.md, "Step math"). One network call is one row. With x the state
(what the network was called on), m its output, s an auxiliary state buffer, h1 … h3 the last
three quantities pushed onto the history ring (most recent first) and z a standard normal from
the row's Philox stream, the fused kernel computes, per element:

    x̂0  = cx·x + cm·m,   x̂0c = clip(x̂0)              (the clip, when asked, is the only non-linearity)
    x′  = yx·x + y0·x̂0c + ym·m + ys·s + y1·h1 + y2·h2 + y3·h3 + yz·z
    s′  = sx·x + s0·x̂0c + sm·m + ss·s + s1·h1 + s2·h2 + s3·h3      (written when the table uses s)
    q   = qx·x + q0·x̂0c + qm·m                                        (pushed when the row pushes)

and, for a network with a variance channel v (learned / learned_range DDPM), the noise
coefficient is yz·exp(vg·v + vb) instead of yz. The kernels read the columns by name
(``COL``) and never learn which sampler wrote them; which buffers a run touches follows from
which columns are non-zero anywhere in its table (kernels/samplers/_table.py).

Samplers build rows from linear forms (:class:`Lin`) over the symbols X, X0, M, S, H1, H2, H3, Z,
so that a sampler module reads like the method's formula (kernels/samplers/*.py).
kernels/reference.py is the oracle and restates every sampler independently: it must not
import this module or kernels/samplers.
"""
from __future__ import annotations

import weakref

import numpy as np

from ._checks import check_choice

PREDICTIONS = ("epsilon", "sample", "v_prediction")
PRED_CODE = {name: i for i, name in enumerate(PREDICTIONS)}
PRED_EPSILON, PRED_SAMPLE, PRED_V = (PRED_CODE[p] for p in PREDICTIONS)

# Floor of the fixed_small posterior variance (β̃ is 0 at t = 0): diffusers' clamp.
MIN_VARIANCE = 1e-20

# The symbols of the linear forms, and the columns of a row (see the module docstring).
Y_BASIS = ("x", "x0", "m", "s", "h1", "h2", "h3", "z")
S_BASIS = ("x", "x0", "m", "s", "h1", "h2", "h3")
Q_BASIS = ("x", "x0", "m")
HISTORY = 3  # h1 … h3: third-order multistep
SUFFIX = {"x": "x", "x0": "0", "m": "m", "s": "s", "h1": "1", "h2": "2", "h3": "3", "z": "z"}
COLUMNS = (("cx", "cm") + tuple("y" + SUFFIX[b] for b in Y_BASIS) + tuple("s" + SUFFIX[b] for b in S_BASIS)
           + tuple("q" + SUFFIX[b] for b in Q_BASIS) + ("vg", "vb"))
# = cx cm | yx y0 ym ys y1 y2 y3 yz | sx s0 sm ss s1 s2 s3 | qx q0 qm | vg vb
COL = {name: i for i, name in enumerate(COLUMNS)}
NUM_COLUMNS = len(COLUMNS)
Y_COLS = tuple(COL["y" + SUFFIX[b]] for b in Y_BASIS)
S_COLS = tuple(COL["s" + SUFFIX[b]] for b in S_BASIS)
Q_COLS = tuple(COL["q" + SUFFIX[b]] for b in Q_BASIS)

TABLE_NAMES = (
    "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
    "posterior_mean_coef2", "snr",
)


# ----------------------------------------------------------------------------------------
# Schedule tables
# ----------------------------------------------------------------------------------------


def schedule_tables(betas) -> dict[str, np.ndarray]:
    """Every table of TABLE_NAMES, each float64 [T], from betas [T].

    ᾱ is a sequential product (np.cumprod multiplies left to right), ᾱ_prev is ᾱ shifted by
    one, and the log of the posterior variance takes β̃_1 in place of β̃_0 (which is 0). A
    zero-terminal-SNR schedule (last β = 1, Schedule(zero_terminal_snr=True)) has ᾱ_{T−1} = 0,
    so 1/√ᾱ and √(1/ᾱ − 1) are +inf at T − 1 (a sampler row that needs them is refused there).
    """
    beta = np.ascontiguousarray(betas, dtype=np.float64)
    alpha = 1.0 - beta
    ac = np.cumprod(alpha)
    prev = np.concatenate(([1.0], ac[:-1]))
    one_m = 1.0 - ac
    post_var = beta * (1.0 - prev) / one_m
    log_src = post_var.copy()
    log_src[0] = post_var[1] if beta.shape[0] > 1 else post_var[0]
    with np.errstate(divide="ignore"):  # T = 1: β̃_0 = 0, log −inf (as the reference)
        log_var = np.log(log_src)
    with np.errstate(divide="ignore"):  # a zero-terminal-SNR schedule (β_{T−1} = 1, ᾱ_{T−1} = 0): 1/√ᾱ = inf there
        values = (beta, alpha, ac, prev, np.sqrt(ac), np.sqrt(one_m), np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1.0),
                  post_var, log_var, beta * np.sqrt(prev) / one_m, (1.0 - prev) * np.sqrt(alpha) / one_m,
                  ac / one_m)
    return dict(zip(TABLE_NAMES, values))


# ----------------------------------------------------------------------------------------
# Linear forms and rows
# ----------------------------------------------------------------------------------------


class Lin:
    """A linear form Σ c_b·b over the symbols of Y_BASIS; coefficients are scalars or arrays (one
    per row). ``+``, ``-`` and multiplication by a scalar/array build new forms."""

    __slots__ = ("c",)

    def __init__(self, **coefficients):
        unknown = set(coefficients) - set(Y_BASIS)
        if unknown:
            raise ValueError(f"unknown symbols {sorted(unknown)}; the basis is {Y_BASIS}")
        self.c = coefficients

    def __add__(self, other: "Lin") -> "Lin":
        out = dict(self.c)
        for k, v in other.c.items():
            out[k] = out[k] + v if k in out else v
        return Lin(**out)

    def __neg__(self) -> "Lin":
        return Lin(**{k: -v for k, v in self.c.items()})

    def __sub__(self, other: "Lin") -> "Lin":
        return self + (-other)

    def __mul__(self, scale) -> "Lin":
        return Lin(**{k: v * scale for k, v in self.c.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale) -> "Lin":
        return Lin(**{k: v / scale for k, v in self.c.items()})

    def get(self, symbol: str, zero=0.0):
        return self.c.get(symbol, zero)

    def __repr__(self) -> str:
        return " + ".join(f"{v!r}·{k}" for k, v in self.c.items()) or "0"


X, X0, M, S, H1, H2, H3, Z = (Lin(**{b: 1.0}) for b in Y_BASIS)
H = (H1, H2, H3)
ZERO = Lin()


def x0_coefficients(ab_t, prediction: str, xp=np):
    """(cx, cm) with x̂0 = cx·x_t + cm·out: epsilon (x_t − √(1−ᾱ)·ε̂)/√ᾱ, v √ᾱ·x_t − √(1−ᾱ)·v̂,
    sample (0, 1) — exact for finite x_t, so a kernel needs no branch on the prediction."""
    if prediction == "epsilon":
        return xp.sqrt(1.0 / ab_t), -xp.sqrt(1.0 / ab_t - 1.0)
    if prediction == "v_prediction":
        return xp.sqrt(ab_t), -xp.sqrt(1.0 - ab_t)
    check_choice(prediction, "prediction", PREDICTIONS)
    return xp.zeros_like(ab_t), xp.ones_like(ab_t)


def eps_hat(ab_t, prediction: str, *, from_clipped: bool = False, xp=np) -> Lin:
    """ε̂ as a linear form. ``from_clipped``: (x − √ᾱ·x̂0c)/√(1−ᾱ) (what a sampler integrating
    ε uses after x̂0 was clipped or thresholded). Otherwise from the network output itself —
    epsilon: m; v: √(1−ᾱ)·x + √ᾱ·m; sample: (x − √ᾱ·m)/√(1−ᾱ) — diffusers' ε̂ from the
    unclipped x̂0 (``use_clipped_model_output=False``)."""
    if from_clipped:
        return (X - X0 * xp.sqrt(ab_t)) / xp.sqrt(1.0 - ab_t)
    if prediction == "epsilon":
        return M * xp.ones_like(ab_t)
    if prediction == "v_prediction":
        return X * xp.sqrt(1.0 - ab_t) + M * xp.sqrt(ab_t)
    check_choice(prediction, "prediction", PREDICTIONS)
    return (X - M * xp.sqrt(ab_t)) / xp.sqrt(1.0 - ab_t)


def rows(cx, cm, y: Lin, s: Lin | None = None, q: Lin | None = None, var=None, xp=np):
    """[N, NUM_COLUMNS] float64 rows from per-row (cx, cm) [N] and the forms of x′, s′ and q
    (coefficients scalars or [N]); ``var`` = (vg, vb) for a variance-channel network."""
    zero = xp.zeros_like(cx)
    full = lambda v: zero + v  # noqa: E731  scalar or [N] → [N]
    s, q = s or ZERO, q or ZERO
    for form, basis, what in ((s, S_BASIS, "s"), (q, Q_BASIS, "q")):
        extra = set(form.c) - set(basis)
        if extra:
            raise ValueError(f"the form of {what} may use {basis} only, got {sorted(extra)}")
    cols = [full(cx), full(cm)]
    cols += [full(y.get(b)) for b in Y_BASIS]
    cols += [full(s.get(b)) for b in S_BASIS]
    cols += [full(q.get(b)) for b in Q_BASIS]
    cols += [full(v) for v in (var if var is not None else (0.0, 0.0))]
    return xp.stack(cols, axis=1)


def rescale_row(row, x_scale, y_scale):
    """The row for a state stored scaled: the caller holds X = x/x_scale and wants X′ = x′/y_scale.

    k-diffusion's samplers (diffusers' Euler family) keep X = x/α, the variance-exploding
    variable, while a row maps the variance-preserving x. Substituting x = x_scale·X scales the
    columns that multiply x (cx, yx, sx, qx) by x_scale, and dividing the output by y_scale scales
    every term of x′ (the y columns, the noise yz included); s′ and q keep their meaning. The
    clip (or threshold) still applies to the same x̂0. float64 [C] in, float64 [C] out.
    """
    out = np.array(row, dtype=np.float64)
    for name in ("cx", "yx", "sx", "qx"):
        out[COL[name]] *= x_scale
    for name in ("yx", "y0", "ym", "ys", "y1", "y2", "y3", "yz"):
        out[COL[name]] /= y_scale
    return out


# Per-table caches: keyed by id() and dropped with the table (arrays and tensors cannot be
# WeakKeyDictionary keys: their == is elementwise).
_CACHES: dict[int, tuple[weakref.ref, dict]] = {}


def cached(owner, key, build):
    """``build()`` once per (``owner`` object, ``key``) while ``owner`` lives; None (not built)
    when ``build`` returns None."""
    entry = _CACHES.get(id(owner))
    if entry is None or entry[0]() is not owner:
        entry = _CACHES[id(owner)] = (weakref.ref(owner, lambda _, k=id(owner): _CACHES.pop(k, None)), {})
    if key not in entry[1]:
        value = build()
        if value is None:
            return None
        entry[1][key] = value
    return entry[1][key]


def apply_row(row, x, m, *, clip=None, s=None, h=(), z=None, v=None, threshold=None, xp=np):
    """One update from a row in array operators (NumPy arrays or torch tensors): (x′, s′, q).

    The torch reference stepper and the plain torch benchmark loop use it; the fused kernels
    restate it in their own languages and are tested against kernels/reference.py. ``row``
    holds scalars of the data dtype; ``h`` the history buffers (most recent first); ``z`` the
    noise (None: no noise term); ``v`` the variance channel; ``threshold``: dynamic
    thresholding's per-sample bounds s (broadcastable to x, e.g. [B, 1]): x̂0c = clip(x̂0, −s, s)/s
    in place of ``clip``. s′ and q are None when the row does not produce them.
    """
    c = lambda name: row[COL[name]]  # noqa: E731
    x0 = c("cx") * x + c("cm") * m
    if threshold is not None:
        x0 = xp.clip(x0, -threshold, threshold) / threshold
    elif clip is not None:
        x0 = xp.clip(x0, -clip, clip)
    terms = {"x": x, "x0": x0, "m": m, "s": s, "h1": h[0] if len(h) > 0 else None,
             "h2": h[1] if len(h) > 1 else None, "h3": h[2] if len(h) > 2 else None}

    def combine(prefix, basis):
        out = None
        for b in basis:
            coef = c(prefix + SUFFIX[b])
            if terms[b] is None or float(coef) == 0.0:
                continue
            out = coef * terms[b] if out is None else out + coef * terms[b]
        return out

    y = combine("y", Y_BASIS[:-1])
    if y is None:
        y = x * 0
    if z is not None:
        sigma = c("yz") if v is None else c("yz") * xp.exp(c("vg") * v + c("vb"))
        y = y + sigma * z
    return y, combine("s", S_BASIS), combine("q", Q_BASIS)
