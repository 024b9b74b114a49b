"""What a sampler compiles to: a :class:`Grid` in, a :class:`Table` out.

A Grid is where a run evaluates the network: ``t`` int64 [N] (the timesteps fed to the network,
descending) and ``alpha_bar`` float64 [N + 1] (ᾱ at each of those points and, last, at the
target the run ends in: 1 for a clean sample — σ = 0 — or ᾱ_0 for diffusers'
``final_sigmas_type="sigma_min"`` / ``set_alpha_to_one=False``). The math uses ``alpha_bar``; the
network only ever sees ``t``, so a spacing that places points between integer timesteps (karras,
exponential) keeps its exact ᾱ in the math while the network is fed the nearest integer
(k-diffusion's ``quantize=True``; diffusers' DPM-Solver does the same).

A Table is the run: row k (kernels.coefficients.COLUMNS) is network call k at timestep
``t[k]``, and ``push[k]`` says whether the row pushes its q onto the history ring. Everything
a loop needs besides the rows is derived here from the table itself, never from the sampler's
name: the ring depth, each row's ring slots, which buffers the run reads and writes, whether it
draws noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import coefficients as KC

VARIANCE_MODES = (None, "log", "sqrt")


@dataclass(frozen=True)
class Grid:
    """Network timesteps ``t`` int64 [N] and ᾱ at those points plus the final one, float64 [N + 1]."""

    t: np.ndarray
    alpha_bar: np.ndarray

    def __post_init__(self):
        t = np.ascontiguousarray(self.t, dtype=np.int64)
        ab = np.ascontiguousarray(self.alpha_bar, dtype=np.float64)
        if t.ndim != 1 or t.size == 0 or ab.shape != (t.size + 1,):
            raise ValueError(f"a Grid needs t [N] and alpha_bar [N + 1], got {t.shape} and {ab.shape}")
        if not np.all((ab >= 0) & (ab <= 1)) or np.any(np.diff(ab) < 0):
            raise ValueError("alpha_bar must lie in [0, 1] and not decrease along the run (noise goes down)")
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "alpha_bar", ab)

    @property
    def steps(self) -> int:
        return int(self.t.size)

    # Per-point quantities (float64 [N + 1]): α = √ᾱ, σ = √(1 − ᾱ), λ = log α − log σ (±inf at the ends).
    @property
    def alpha(self) -> np.ndarray:
        return np.sqrt(self.alpha_bar)

    @property
    def sigma(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alpha_bar)

    @property
    def lam(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return 0.5 * (np.log(self.alpha_bar) - np.log1p(-self.alpha_bar))

    @property
    def sigma_ve(self) -> np.ndarray:
        """σ of the variance-exploding parametrisation x/α: √((1 − ᾱ)/ᾱ) (k-diffusion's σ)."""
        with np.errstate(divide="ignore"):
            return np.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)


@dataclass(frozen=True)
class Table:
    """Row k: network call k at timestep ``t[k]``; ``push[k]``: it pushes q onto the history ring."""

    t: np.ndarray                                  # int64 [K]
    rows: np.ndarray                               # float64 [K, NUM_COLUMNS]
    push: np.ndarray = field(default=None)         # bool [K] (None: no row pushes)
    variance: str | None = None                    # variance channel v: "log" σ = yz·exp(vg·v + vb), "sqrt" σ = yz·√v

    def __post_init__(self):
        t = np.ascontiguousarray(self.t, dtype=np.int64)
        rows = np.ascontiguousarray(self.rows, dtype=np.float64)
        push = np.zeros(t.size, dtype=bool) if self.push is None else np.asarray(self.push, dtype=bool)
        if rows.shape != (t.size, KC.NUM_COLUMNS) or push.shape != t.shape:
            raise ValueError(f"a Table needs t [K], rows [K, {KC.NUM_COLUMNS}], push [K]; got {t.shape}, "
                             f"{rows.shape}, {push.shape}")
        if self.variance not in VARIANCE_MODES:
            raise ValueError(f"variance must be one of {VARIANCE_MODES}, got {self.variance!r}")
        if not np.all(np.isfinite(rows)):
            bad = int(np.argwhere(~np.isfinite(rows))[0][0])
            raise ValueError(f"row {bad} of the table is not finite: {dict(zip(KC.COLUMNS, rows[bad]))}")
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "push", push)

    @property
    def calls(self) -> int:
        """Network calls of a run (= rows)."""
        return int(self.t.size)

    def _used(self, cols) -> bool:
        return bool(np.any(self.rows[:, list(cols)] != 0.0))

    @property
    def depth(self) -> int:
        """History ring slots the run reads: the largest j with a non-zero y_j or s_j."""
        for j in (3, 2, 1):
            if self._used((KC.COL[f"y{j}"], KC.COL[f"s{j}"])):
                return j
        return 0

    @property
    def reads_state(self) -> bool:
        return self._used((KC.COL["ys"], KC.COL["ss"]))

    @property
    def writes_state(self) -> bool:
        return self._used(KC.S_COLS)

    @property
    def noisy(self) -> bool:
        """Whether any row adds noise (row k draws stream k + 1)."""
        return self._used((KC.COL["yz"],))

    @property
    def variance_channel(self) -> bool:
        """Whether the network's output carries a variance channel (learned / learned_range)."""
        return self.variance is not None

    @property
    def pushes(self) -> bool:
        return bool(self.push.any()) and self.depth > 0

    @property
    def ring(self) -> int:
        """Buffers of the history ring: depth + 1, so that the slot a row pushes to is never one it
        reads (the kernels then read and write distinct buffers, which they vectorise); 0 when
        no row reads history."""
        return self.depth + 1 if self.depth else 0

    def slots(self) -> np.ndarray:
        """int64 [K, 4]: row k's ring slot to write (−1: none) and the slots holding h1, h2, h3
        (−1 beyond the depth).

        After p pushes the next push goes to slot p mod ring, and h_j (the j-th most recent push)
        sits in slot (p − j) mod ring. Slots of pushes that have not happened yet are read as
        zeros: the loop zero-fills the ring per batch, and a table gives them coefficient 0.
        """
        R, ring = self.depth, self.ring
        out = np.full((self.calls, 4), -1, dtype=np.int64)
        if R == 0:
            return out
        p = 0
        for k in range(self.calls):
            for j in range(1, R + 1):
                out[k, j] = (p - j) % ring
            if self.push[k]:
                out[k, 0] = p % ring
                p += 1
        return out

    def describe(self) -> str:
        """The non-zero columns of every row, one line each (for docstrings and debugging)."""
        lines = []
        for k in range(self.calls):
            cells = [f"{name}={v:.6g}" for name, v in zip(KC.COLUMNS, self.rows[k]) if v != 0.0]
            lines.append(f"k={k} t={self.t[k]}{' push' if self.push[k] else ''}: " + " ".join(cells))
        return "\n".join(lines)


def stack(t, cx, cm, forms, push=None) -> Table:
    """A Table from per-row values: ``forms`` is a list of (y, s, q, var) per row (s, q, var may
    be None); cx, cm [K]."""
    rows = np.concatenate([KC.rows(np.array([cx[k]], dtype=np.float64), np.array([cm[k]], dtype=np.float64), y, s, q,
                                   var) for k, (y, s, q, var) in enumerate(forms)])
    return Table(t=np.asarray(t), rows=rows, push=push)
