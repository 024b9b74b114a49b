"""Figures for schedules, the forward and reverse processes, samples and training (PNG, Agg).

Every function takes plain arrays (NumPy or CPU torch), draws one figure, writes it atomically
to ``path`` (temp file in the same folder, then rename: no half PNG under the final name) and
returns the path. Data layouts, chosen from the shape of one sample:

- 1-D data, ``[N]`` or ``[N, 1]``: histograms;
- 2-D points, ``[N, 2]``: scatter panels;
- images, ``[N, H, W]`` or ``[N, C, H, W]`` (C = 1 or 3): image grids.

matplotlib is the ``plots`` extra: ``pip install fastddpm[plots]``.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from . import ops
from ._io import atomic_open
from .schedule import Schedule

__all__ = [
    "plot_schedules", "plot_forward", "plot_forward_path_1d", "plot_reverse", "plot_paths_1d",
    "plot_samples", "plot_loss", "data_kind", "save_figure",
]

SCHEDULE_NAMES = ("linear", "cosine", "quadratic", "sigmoid")
_DATA_COLOR = "#45b97c"   # the green of the butterfly walkthrough
_MODEL_COLOR = "#3b6fb6"
_COLORS = {"linear": "#1f77b4", "cosine": "#d62728", "quadratic": "#2ca02c", "sigmoid": "#9467bd"}


def _plt():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastddpm.plots needs matplotlib: pip install 'fastddpm[plots]'") from exc
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> str:
    """Write ``fig`` as PNG to ``path`` atomically and close it; returns ``str(path)``."""
    plt = _plt()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=fig.get_dpi())
    finally:
        plt.close(fig)
    return os.fspath(path)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def data_kind(x) -> str:
    """"1d", "2d" or "image" for a batch ``x`` (see the module docstring)."""
    shape = np.shape(x)
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return "1d"
    if len(shape) == 2 and shape[1] == 2:
        return "2d"
    if len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, 3)):
        return "image"
    raise ValueError(
        f"cannot plot samples of shape {tuple(shape)}: expected [N] or [N, 1] (1-D), [N, 2] "
        "(points), [N, H, W] or [N, C, H, W] with C in (1, 3) (images)")


def _images(x, n: int, vrange=None) -> np.ndarray:
    """First n images as [n, H, W] or [n, H, W, 3] mapped from ``vrange`` to [0, 1].

    vrange None: [-1, 1] (model space) when the batch lies within it, else its own min..max.
    """
    x = _np(x)[:n]
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else np.moveaxis(x, 1, -1)
    if vrange is None:
        lo, hi = float(np.min(x)), float(np.max(x))
        vrange = (-1.0, 1.0) if lo >= -1.05 and hi <= 1.05 else (lo, hi if hi > lo else lo + 1.0)
    lo, hi = vrange
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _grid(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile [n, H, W(, 3)] into one array with a 1-pixel white gutter."""
    n, h, w = images.shape[:3]
    rows = -(-n // cols)
    extra = images.shape[3:]
    out = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, *extra))
    for k in range(n):
        r, c = divmod(k, cols)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = images[k]
    return out


def _limits(arrays, q=0.001):
    """Common axis limits covering all but the extreme q tails of every array."""
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    flat = flat[np.isfinite(flat)]
    lo, hi = np.quantile(flat, [q, 1 - q]) if flat.size else (-1.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _draw(ax, x, kind, *, lims=None, color=_DATA_COLOR, bins=None, max_points=5000, label=None,
          cols=None):
    """One panel of a batch: histogram, scatter or image grid."""
    if kind == "1d":
        v = _np(x).reshape(-1)
        ax.hist(v, bins=bins if bins is not None else 60, range=lims, color=color, alpha=0.75,
                density=True, label=label)
        ax.set_yticks([])
    elif kind == "2d":
        p = _np(x)[:max_points]
        ax.scatter(p[:, 0], p[:, 1], s=1.5, color=color, alpha=0.6, linewidths=0, label=label,
                   rasterized=True)
        if lims is not None:
            ax.set_xlim(lims[0])
            ax.set_ylim(lims[1])
        ax.set_aspect("equal", adjustable="box")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        imgs = _images(x, 16 if cols is None else cols * cols, lims)
        grid = _grid(imgs, cols or 4)
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_axis_off()


def _panel_limits(arrays, kind, ref: int = 0):
    """Shared limits of all panels; images use the value range of ``arrays[ref]`` (the data)."""
    if kind == "1d":
        return _limits([_np(a) for a in arrays])
    if kind == "2d":
        xs = [_np(a)[:, 0] for a in arrays]
        ys = [_np(a)[:, 1] for a in arrays]
        (x0, x1), (y0, y1) = _limits(xs), _limits(ys)
        return (x0, x1), (y0, y1)
    lo, hi = float(np.min(_np(arrays[ref]))), float(np.max(_np(arrays[ref])))
    return (-1.0, 1.0) if lo >= -1.05 and hi <= 1.05 else (lo, hi if hi > lo else lo + 1.0)


# ------------------------------------------------------------------------------ schedules


def plot_schedules(path, *, num_steps: int = 1000, schedules: Mapping[str, Schedule] | None = None,
                   title: str | None = None) -> str:
    """Compare noise schedules: β_t, ᾱ_t, √ᾱ_t and √(1−ᾱ_t), and SNR = ᾱ/(1−ᾱ) (log axis).

    ``schedules`` maps a label to a :class:`Schedule`; by default linear, cosine, quadratic and
    sigmoid with ``num_steps`` steps and their default parameters.
    """
    plt = _plt()
    if schedules is None:
        schedules = {n: Schedule.create(n, num_steps) for n in SCHEDULE_NAMES}
    if not schedules:
        raise ValueError("schedules must name at least one schedule")
    fig, axs = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110)
    (a_beta, a_abar), (a_sig, a_snr) = axs
    for k, (name, s) in enumerate(schedules.items()):
        if not isinstance(s, Schedule):
            raise TypeError(f"schedules[{name!r}] must be a fastddpm.Schedule, got {type(s).__name__}")
        color = _COLORS.get(name, f"C{k}")
        t = np.arange(s.num_steps)
        a_beta.plot(t, s.betas, color=color, label=name, lw=1.6)
        a_abar.plot(t, s.alphas_cumprod, color=color, label=name, lw=1.6)
        a_sig.plot(t, s.sqrt_alphas_cumprod, color=color, lw=1.6, label=f"{name} √ᾱ")
        a_sig.plot(t, s.sqrt_one_minus_alphas_cumprod, color=color, lw=1.6, ls="--")
        a_snr.plot(t, s.snr, color=color, label=name, lw=1.6)
    a_beta.set_yscale("log")
    a_beta.set_title("β_t (noise added per step)")
    a_abar.set_title("ᾱ_t = ∏(1 − β_s)")
    a_sig.set_title("signal √ᾱ_t (solid) and noise √(1 − ᾱ_t) (dashed)")
    a_snr.set_yscale("log")
    a_snr.set_title("SNR_t = ᾱ_t / (1 − ᾱ_t)")
    for ax in axs.flat:
        ax.set_xlabel("t")
        ax.grid(True, alpha=0.3, which="both" if ax in (a_beta, a_snr) else "major")
    a_beta.legend(loc="lower right")
    a_abar.legend(loc="upper right")
    a_snr.legend(loc="upper right")
    steps = sorted({s.num_steps for s in schedules.values()})
    fig.suptitle(title or f"Noise schedules, T = {', '.join(map(str, steps))}", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ forward


def plot_forward(path, schedule: Schedule, x0, ts: Sequence[int], *, seed: int = 0,
                 max_points: int = 5000, title: str | None = None) -> str:
    """The forward process q(x_t | x_0) at each t in ``ts`` (x_t drawn with fastddpm.q_sample).

    x0: a data batch (see the module docstring for layouts). One panel per t plus x_0 first;
    1-D data as histograms with N(0, 1) drawn for reference, points as scatter plots, images as
    a grid (4×4 images per t).
    """
    plt = _plt()
    ts = [int(t) for t in ts]
    if not ts:
        raise ValueError("ts must list at least one time step")
    for t in ts:
        if not 0 <= t < schedule.num_steps:
            raise ValueError(f"ts: every t must be in [0, {schedule.num_steps}), got {t}")
    x0 = np.ascontiguousarray(_np(x0), dtype=np.float32)
    kind = data_kind(x0)
    if kind == "image":
        x0 = x0[:16]
    elif len(x0) > max_points:
        x0 = x0[:max_points]
    panels = [("x₀ (data)", x0)]
    for t in ts:
        xt, _ = ops.q_sample(schedule, x0, np.full(len(x0), t, dtype=np.int64), seed=seed, stream=t + 1)
        panels.append((f"t = {t}   √ᾱ = {schedule.sqrt_alphas_cumprod[t]:.3f}", xt))
    _panels(plt, panels, kind, title or f"Forward process q(x_t | x_0), {_schedule_label(schedule)}",
            normal_ref=kind == "1d")
    return save_figure(plt.gcf(), path)


def plot_forward_path_1d(path, schedule: Schedule, x0: float = 5.0, *, n_paths: int = 5,
                         seed: int = 0, title: str | None = None) -> str:
    """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε for t = 0 … T−1 for one scalar x_0 (the constant-5.0 example).

    Draws ``n_paths`` noise paths (the sequence x_0, x_1, … of the Markov chain, each step
    x_t = √α_t·x_{t−1} + √β_t·ε_t) and the band mean ± 2 std of the closed form.
    """
    plt = _plt()
    T = schedule.num_steps
    eps = ops.randn((T, n_paths), seed=seed, stream=0, dtype=np.float64)
    x = np.empty((T + 1, n_paths))
    x[0] = x0
    a, b = np.sqrt(schedule.alphas), np.sqrt(schedule.betas)
    for t in range(T):
        x[t + 1] = a[t] * x[t] + b[t] * eps[t]
    steps = np.arange(T + 1)
    mean = np.concatenate([[x0], schedule.sqrt_alphas_cumprod * x0])
    std = np.concatenate([[0.0], schedule.sqrt_one_minus_alphas_cumprod])
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ax.fill_between(steps, mean - 2 * std, mean + 2 * std, color="0.85", label="closed form: mean ± 2 std")
    ax.plot(steps, mean, color="0.4", lw=1.2, ls=":", label="√ᾱ_t · x₀")
    for k in range(n_paths):
        ax.plot(steps, x[:, k], lw=1.1, color=f"C{k}", alpha=0.9)
    ax.axhline(x0, color="#d62728", ls="--", lw=1.2, label=f"x₀ = {x0:g}")
    ax.set_xlabel("step t (x₀ at 0, x_T at the right)")
    ax.set_ylabel("value")
    ax.set_xlim(0, T)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    ax.set_title(title or f"Forward process from x₀ = {x0:g}: {n_paths} noise paths, {_schedule_label(schedule)}")
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ reverse


def plot_reverse(path, trajectory: Sequence, steps: Sequence[int], *, data=None,
                 title: str | None = None) -> str:
    """Panels of the reverse process: x_t at each recorded step, from x_T (left) to x_0.

    trajectory: a list of batches (or an array [P, N, …]), one per entry of ``steps``: the t
    each batch is fed to the network at, −1 for the final samples (as
    ``fastddpm.sample(..., return_trajectory=True)`` returns them in ``Trajectory.timesteps``). ``data``, if given, is drawn faintly behind the
    last panel for comparison.
    """
    plt = _plt()
    trajectory = [np.asarray(_np(x)) for x in trajectory]
    steps = [int(s) for s in steps]
    if len(trajectory) != len(steps) or not steps:
        raise ValueError(f"trajectory has {len(trajectory)} entries but steps has {len(steps)}; "
                         "give one step per recorded batch")
    kind = data_kind(trajectory[0])

    def label(k, s):
        if s < 0:
            return "x₀ (the samples)"
        return f"x_T, t = {s}" if k == 0 else f"t = {s}"

    panels = [(label(k, s), x) for k, (s, x) in enumerate(zip(steps, trajectory))]
    if data is not None:
        panels.append(("data", _np(data)))
    _panels(plt, panels, kind, title or "Reverse process p_θ(x_{t−1} | x_t), from noise to data",
            color=_MODEL_COLOR, data_last=data is not None)
    return save_figure(plt.gcf(), path)


def plot_paths_1d(path, trajectory: Sequence, steps: Sequence[int], *, target: float | None = None,
                  n_paths: int = 20, title: str | None = None) -> str:
    """Per-sample paths of a 1-D model from x_T to x_0 (the constant-5.0 example).

    trajectory: [P, N] or [P, N, 1] values at ``steps`` (descending t as in
    ``Trajectory.timesteps``, −1 for the final x_0). Draws ``n_paths`` individual paths, the mean ± std band of all N, and the target.
    """
    plt = _plt()
    traj = np.stack([_np(x).reshape(len(_np(x)), -1)[:, 0] for x in trajectory])
    steps = np.asarray([int(s) for s in steps])
    if traj.shape[0] != len(steps):
        raise ValueError(f"trajectory has {traj.shape[0]} entries but steps has {len(steps)}")
    # Plot against "steps done" so x_T is at the left and x_0 at the right, as in the seed.
    x_axis = steps.max() - steps
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    mean, std = traj.mean(axis=1), traj.std(axis=1)
    ax.fill_between(x_axis, mean - std, mean + std, color=_MODEL_COLOR, alpha=0.15,
                    label=f"mean ± std of {traj.shape[1]} samples")
    for k in range(min(n_paths, traj.shape[1])):
        ax.plot(x_axis, traj[:, k], lw=0.9, alpha=0.7, color=f"C{k % 10}")
    if target is not None:
        ax.axhline(target, color="#d62728", ls="--", lw=1.3, label=f"target x₀ = {target:g}")
    final = traj[-1]
    ax.set_xlabel(f"reverse steps done (x_T at 0, x₀ at {x_axis.max()})")
    ax.set_ylabel("value")
    ax.set_xlim(x_axis.min(), x_axis.max())
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    ax.set_title(title or f"Reverse process, per-sample paths: final mean {final.mean():.4f}, "
                          f"std {final.std():.4f}")
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ samples


def plot_samples(path, samples: Mapping[str, object], data=None, *, max_points: int = 5000,
                 title: str | None = None) -> str:
    """Generated samples next to data: one panel per entry of ``samples`` plus the data.

    Points: scatter on common axes; 1-D: histograms with the data histogram overlaid; images:
    grids of the first 16.
    """
    plt = _plt()
    if not samples:
        raise ValueError("samples must hold at least one named batch")
    items = [(str(k), _np(v)) for k, v in samples.items()]
    kind = data_kind(items[0][1])
    panels = ([("data", _np(data))] if data is not None else []) + items
    arrays = [a for _, a in panels]
    # Axes follow the data when there is data (a stray sample far out would shrink it to a
    # dot); samples outside are cut off, which the comparison shows anyway.
    ref = arrays[:1] if data is not None and kind == "2d" else arrays
    lims = _panel_limits([a[:max_points] for a in ref], kind)
    if data is not None and kind == "2d":
        lims = tuple((lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo)) for lo, hi in lims)
    n = len(panels)
    size = 3.6 if kind != "1d" else 3.4
    fig, axs = plt.subplots(1, n, figsize=(size * n, size + 0.6), dpi=110, squeeze=False)
    for ax, (label, x) in zip(axs[0], panels):
        is_data = data is not None and label == "data" and x is arrays[0]
        if kind == "1d" and data is not None and not is_data:
            _draw(ax, arrays[0], kind, lims=lims, color=_DATA_COLOR, label="data")
        _draw(ax, x, kind, lims=lims, color=_DATA_COLOR if is_data else _MODEL_COLOR,
              max_points=max_points, label=label)
        ax.set_title(label if kind == "image" else f"{label}  (n = {len(x):,})", fontsize=10)
        if kind == "1d" and data is not None and not is_data:
            ax.legend(fontsize=8)
    fig.suptitle(title or "Generated samples vs data", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss(path, losses, *, smooth: int | None = None, title: str | None = None) -> str:
    """Training loss per iteration (faint) and its moving average; log y axis.

    losses: a sequence of per-iteration losses, or a mapping with "step" and "loss" lists.
    """
    plt = _plt()
    if isinstance(losses, Mapping):
        steps, vals = np.asarray(losses["step"]), _np(losses["loss"])
    else:
        vals = _np(losses).reshape(-1)
        steps = np.arange(1, len(vals) + 1)
    if vals.size == 0:
        raise ValueError("losses is empty: nothing to plot")
    w = smooth or max(1, len(vals) // 50)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    ax.plot(steps, vals, color=_MODEL_COLOR, alpha=0.25, lw=0.8, label="per iteration")
    if len(vals) >= w > 1:
        kernel = np.ones(w) / w
        ax.plot(steps[w - 1:], np.convolve(vals, kernel, mode="valid"), color=_MODEL_COLOR, lw=2,
                label=f"moving average ({w})")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend()
    ax.set_title(title or f"Training loss (last {min(w, len(vals))}: {vals[-min(w, len(vals)):].mean():.4f})")
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ helpers


def _schedule_label(s: Schedule) -> str:
    name = getattr(s, "name", None) or "custom"
    return f"{name} schedule, T = {s.num_steps}"


def _panels(plt, panels, kind, title, *, color=_DATA_COLOR, normal_ref=False, data_last=False,
            per_row: int = 5):
    n = len(panels)
    arrays = [a for _, a in panels]
    lims = _panel_limits(arrays, kind, ref=-1 if data_last or color != _DATA_COLOR else 0)
    rows = -(-n // per_row)
    cols = -(-n // rows)   # balanced rows: 7 panels as 4 + 3, not 5 + 2
    size = 2.9
    fig, axs = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.35) * rows + 0.5), dpi=110,
                            squeeze=False)
    for ax in axs.flat[n:]:
        ax.set_axis_off()
    for k, (ax, (label, x)) in enumerate(zip(axs.flat, panels)):
        is_data = (k == n - 1) if data_last else (k == 0 and color == _DATA_COLOR)
        _draw(ax, x, kind, lims=lims, color=_DATA_COLOR if is_data else color)
        if kind == "1d" and normal_ref and lims[0] < 1 and lims[1] > -1:
            g = np.linspace(*lims, 200)
            ax.plot(g, np.exp(-g ** 2 / 2) / np.sqrt(2 * np.pi), color="0.3", lw=1, ls="--",
                    label="N(0, 1)")
            if k == n - 1:
                ax.legend(fontsize=8, loc="upper right")
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
