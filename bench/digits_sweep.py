"""Digits (issue 13): the metric's classifier and the default U-Net recipe, measured.

Usage:
  python bench/digits_sweep.py classifier
      Candidate scikit-learn classifiers on a 70/30 split (seed 0) of the bundled digits: held-out
      accuracy and the share called confident (top probability >= 0.9) on held-out real digits,
      uniform noise, held-out digits + N(0, s^2) pixel noise (s = 0.1, 0.25; pixels in [0, 1],
      clipped), 50/50 blends of two held-out digits of different classes, and each class's mean
      image; fit seconds. One JSON line per candidate.
  python bench/digits_sweep.py train NAME [key=value ...]
      Train the digits U-Net with fastddpm.training.train (the library defaults, overridden by
      key=value: iters, batch_size, lr, lr_schedule, lr_warmup, ema, prediction, schedule, seed,
      base_channels, channel_mults (e.g. 1,2), num_res_blocks, attention, dropout), then draw N
      samples (n=2000) with each of samplers= (default ddpm-1000,dpmpp2m-20; EMA weights) and score
      them with fastddpm.metrics.digit_scores. Prints one JSON line; saves runs/digits/NAME/ (the
      checkpoint) and runs/digits/NAME-SAMPLER.npy (samples, data space) and .png (a grid).
Run one configuration per process with one thread (OMP_NUM_THREADS=1); load average is recorded.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _share_confident(clf, x, thr=0.9):
    return float((clf.predict_proba(x).max(1) >= thr).mean())


def candidates():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    out = {}
    for c in (1, 3, 10, 30, 100):
        for g in ("scale", 0.02, 0.05):
            out[f"svc01 C={c} g={g}"] = lambda c=c, g=g: SVC(C=c, gamma=g, probability=True, random_state=0)
    for c in (1, 10, 100):
        out[f"svc-std C={c}"] = lambda c=c: make_pipeline(StandardScaler(),
                                                          SVC(C=c, probability=True, random_state=0))
    for c in (0.1, 1, 10):
        out[f"logreg C={c}"] = lambda c=c: LogisticRegression(C=c, max_iter=5000)
    for c in (1, 10):
        for m in ("sigmoid", "isotonic"):
            out[f"calib-{m} svc C={c}"] = lambda c=c, m=m: CalibratedClassifierCV(
                SVC(C=c, random_state=0), method=m, cv=5)
    from fastddpm.metrics import TemperatureOvRSVC
    for c in (1, 10):
        for g in ("scale", 0.2):
            out[f"temp-ovr-svc C={c} g={g}"] = lambda c=c, g=g: TemperatureOvRSVC(C=c, gamma=g)
    out["vote svc C=10 + logreg C=1"] = lambda: VotingClassifier(
        [("svc", SVC(C=10, probability=True, random_state=0)), ("lr", LogisticRegression(C=1, max_iter=5000))],
        voting="soft")
    return out


def classifier_main():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data / 16.0
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, (2000, 64))
    noisy = {s: np.clip(xte + rng.normal(0, s, xte.shape), 0, 1) for s in (0.1, 0.25)}
    i, j = rng.integers(0, len(xte), (2, 4000))
    keep = yte[i] != yte[j]
    blends = 0.5 * (xte[i[keep]] + xte[j[keep]])
    means = np.stack([xtr[ytr == k].mean(0) for k in range(10)])
    print(json.dumps({"load": os.getloadavg()[0], "n_test": len(xte), "n_blends": len(blends)}), flush=True)
    only = os.environ.get("ONLY")
    for name, make in candidates().items():
        if only and only not in name:
            continue
        tic = time.perf_counter()
        clf = make().fit(xtr, ytr)
        fit_s = time.perf_counter() - tic
        row = {"clf": name, "fit_s": round(fit_s, 2), "acc": round(float((clf.predict(xte) == yte).mean()), 4),
               "real": _share_confident(clf, xte), "uniform": _share_confident(clf, noise),
               "noisy0.1": _share_confident(clf, noisy[0.1]), "noisy0.25": _share_confident(clf, noisy[0.25]),
               "blend": _share_confident(clf, blends), "class_means": _share_confident(clf, means)}
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def _parse(kv):
    out = {}
    for item in kv:
        k, v = item.split("=", 1)
        if k in ("channel_mults", "samplers"):
            out[k] = v
        elif v in ("True", "False"):
            out[k] = v == "True"
        elif v == "None":
            out[k] = None
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def train_main(name, kv):
    import torch

    import fastddpm
    from fastddpm import metrics
    from fastddpm.training import DEFAULT_NET, train

    torch.set_num_threads(1)
    args = _parse(kv)
    n = args.pop("n", 2000)
    samplers = args.pop("samplers", "ddpm-1000,dpmpp2m-20").split(",")
    net_keys = ("base_channels", "channel_mults", "num_res_blocks", "attention", "dropout")
    net_kwargs = {k: args.pop(k) for k in net_keys if k in args}
    if "channel_mults" in net_kwargs:
        net_kwargs["channel_mults"] = tuple(int(m) for m in str(net_kwargs["channel_mults"]).split(","))
    out = Path("runs/digits") / name
    load0 = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    r = train("digits", out, net_kwargs=net_kwargs or None, progress=False, num_threads=1, **args)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    params = sum(p.numel() for p in r.model.parameters())
    row = {"name": name, "net": {**DEFAULT_NET["image"][1], **net_kwargs}, "train": r.train_config,
           "params": params, "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
           "samples_per_s": round(r.samples_per_s, 1), "final_loss": round(float(np.mean(r.losses[-200:])), 4),
           "load_start": round(load0, 2), "load_end_train": round(os.getloadavg()[0], 2)}
    row["train"] = {k: v for k, v in row["train"].items() if not isinstance(v, (dict, list))}
    model = r.ema_model if r.ema_model is not None else r.model
    for spec in samplers:
        sampler, steps = spec.split("-")
        tic = time.perf_counter()
        x = fastddpm.sample(model, r.schedule, n, sampler=sampler, steps=int(steps), seed=1, progress=False,
                            sample_shape=r.dataset.sample_shape,
                            prediction=r.prediction)
        x = r.dataset.normalization.denormalize(np.asarray(x))
        sample_s = time.perf_counter() - tic
        np.save(f"runs/digits/{name}-{spec}.npy", x)
        s = metrics.digit_scores(x)
        row[spec] = {"sample_s": round(sample_s, 1), "confident": round(s["confident"], 4),
                     "class_hist_max_dev": round(s["class_hist_max_dev"], 4), "frechet": round(s["frechet"], 3),
                     "frechet_floor": round(s["frechet_floor"], 3),
                     "class_hist": [round(h, 3) for h in s["class_hist"]]}
        _grid(x[:100], f"runs/digits/{name}-{spec}.png")
    row["load_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(row), flush=True)


def _grid(x, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(x).reshape(-1, 8, 8)
    k = int(np.ceil(np.sqrt(len(x))))
    fig, axes = plt.subplots(k, k, figsize=(k * 0.6, k * 0.6))
    for ax, img in zip(axes.ravel(), list(x) + [None] * (k * k - len(x))):
        ax.axis("off")
        if img is not None:
            ax.imshow(np.clip(img, 0, 16), cmap="gray_r", vmin=0, vmax=16)
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:2] == ["classifier"]:
        classifier_main()
    elif sys.argv[1:2] == ["train"] and len(sys.argv) > 2:
        train_main(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
