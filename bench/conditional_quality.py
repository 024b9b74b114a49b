"""Conditional models (issue 25): how often a sample is its requested class, against the guidance scale w.

Usage:
  python bench/conditional_quality.py digits COND_CKPT [UNCOND_CKPT] [n=1000] [sampler=ddpm] [steps=100]
        [w=0,0.5,1,1.5,2,3,4,6,8] [rescale=0] [seed=1] [json=FILE]
      Balanced labels (each block of 10 consecutive samples holds every digit once), one run per w;
      every sample classified by fastddpm.metrics.digits_classifier: "accuracy" = share whose top class
      is the requested label, "confident" = share with top probability >= 0.9 (digit_scores), the
      Fréchet distance to the real digits, the worst class's accuracy, and the wall time. With
      UNCOND_CKPT, the unconditional model's confident share with the same sampler and seed (the
      target: the conditional model's is no lower). A per-class table follows for the best w.
  python bench/conditional_quality.py gaussians COND_CKPT [n=4000] [sampler=dpmpp2m] [steps=20] [w=...]
      8gaussians: share of samples nearest to their requested mode (mode k at angle k·45°, radius 2).

One JSON line per run; a markdown table at the end; the machine (CPU, load) first. One torch thread.
"""
import json
import sys
import time

import numpy as np


def _args(argv):
    pos, kw = [], {}
    for a in argv:
        if "=" in a:
            k, v = a.split("=", 1)
            kw[k] = v
        else:
            pos.append(a)
    return pos, kw


def _machine():
    from fastddpm import machine

    info = machine.describe()
    return f"{machine.cpu_model()}; load {machine.load_average()}; torch threads {info.get('torch', {}).get('threads')}"


def _sample(pipe, n, sampler, steps, seed, labels, w, rescale):
    t0 = time.perf_counter()
    out = pipe.sample(n, sampler=sampler, steps=steps, seed=seed, labels=labels, guidance=w,
                      guidance_rescale=rescale, progress=False)
    return out, time.perf_counter() - t0


def digits(cond, uncond=None, n=1000, sampler="ddpm", steps=100, w="0,0.5,1,1.5,2,3,4,6,8", rescale=0.0, seed=1,
           json_path=None):
    import torch

    import fastddpm
    from fastddpm.metrics import CONFIDENCE, digit_scores, digits_classifier

    torch.set_num_threads(1)
    print(f"# machine: {_machine()}", flush=True)
    clf = digits_classifier()
    pipe = fastddpm.Pipeline.load(cond)
    rows = []
    per_class = {}
    for scale in [float(v) for v in str(w).split(",")]:
        (x, y), secs = _sample(pipe, n, sampler, steps, seed, "balanced", scale, rescale)
        proba = clf.predict_proba(np.clip(x.reshape(n, 64) / 16.0, 0, 1))
        pred = proba.argmax(1)
        scores = digit_scores(x)
        acc_class = [float((pred[y == c] == c).mean()) for c in range(10)]
        row = {"w": scale, "rescale": rescale, "n": n, "sampler": f"{sampler}-{steps}", "accuracy": float((pred == y).mean()),
               "confident": scores["confident"], "confident_and_right": float(((pred == y) & (proba.max(1) >= CONFIDENCE)).mean()),
               "frechet": scores["frechet"], "frechet_floor": scores["frechet_floor"],
               "worst_class_accuracy": min(acc_class), "seconds": round(secs, 1), "load": _load()}
        per_class[scale] = (acc_class, [float((proba.max(1)[y == c] >= CONFIDENCE).mean()) for c in range(10)])
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = None
    if uncond:
        x, secs = _sample(fastddpm.Pipeline.load(uncond), n, sampler, steps, seed, None, 1.0, 0.0)
        s = digit_scores(x)
        base = {"unconditional": uncond, "confident": s["confident"], "frechet": s["frechet"], "seconds": round(secs, 1),
                "load": _load()}
        print(json.dumps(base), flush=True)
    print(f"\n| w | accuracy (= requested label) | confident >= {CONFIDENCE} | worst class | Fréchet (floor) | wall s (load) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['w']:g} | {r['accuracy']:.3f} | {r['confident']:.3f} | {r['worst_class_accuracy']:.3f} | "
              f"{r['frechet']:.3f} ({r['frechet_floor']:.3f}) | {r['seconds']} ({r['load']}) |")
    if base:
        print(f"| unconditional | — | {base['confident']:.3f} | — | {base['frechet']:.3f} | {base['seconds']} ({base['load']}) |")
    best = max(rows, key=lambda r: (r["accuracy"], r["confident"]))
    acc, conf = per_class[best["w"]]
    print(f"\nper class at w = {best['w']:g}:\n\n| digit | " + " | ".join(map(str, range(10))) + " |")
    print("|---|" + "---:|" * 10)
    print("| accuracy | " + " | ".join(f"{a:.3f}" for a in acc) + " |")
    print("| confident | " + " | ".join(f"{c:.3f}" for c in conf) + " |")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "unconditional": base, "per_class": per_class}, f, indent=1)


def gaussians(cond, n=4000, sampler="dpmpp2m", steps=20, w="0,1,2,3", seed=1, rescale=0.0, json_path=None):
    import torch

    import fastddpm

    torch.set_num_threads(1)
    print(f"# machine: {_machine()}", flush=True)
    pipe = fastddpm.Pipeline.load(cond)
    angles = np.arange(8) * (np.pi / 4.0)
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rows = []
    for scale in [float(v) for v in str(w).split(",")]:
        (x, y), secs = _sample(pipe, n, sampler, steps, seed, "balanced", scale, rescale)
        near = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        dist = np.sqrt(((x - centers[y]) ** 2).sum(-1))
        row = {"w": scale, "n": n, "sampler": f"{sampler}-{steps}", "nearest_requested_mode": float((near == y).mean()),
               "median_distance_to_mode": float(np.median(dist)), "p99_distance": float(np.quantile(dist, 0.99)),
               "seconds": round(secs, 2), "load": _load()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| w | nearest the requested mode | median / p99 distance to it | wall s (load) |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['w']:g} | {r['nearest_requested_mode']:.4f} | {r['median_distance_to_mode']:.3f} / "
              f"{r['p99_distance']:.3f} | {r['seconds']} ({r['load']}) |")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)


def _load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main(argv):
    pos, kw = _args(argv)
    if not pos or pos[0] not in ("digits", "gaussians"):
        print(__doc__)
        return 2
    common = dict(n=int(kw.get("n", 1000 if pos[0] == "digits" else 4000)), seed=int(kw.get("seed", 1)),
                  rescale=float(kw.get("rescale", 0.0)), json_path=kw.get("json"))
    if pos[0] == "digits":
        digits(pos[1], pos[2] if len(pos) > 2 else None, sampler=kw.get("sampler", "ddpm"),
               steps=int(kw.get("steps", 100)), w=kw.get("w", "0,0.5,1,1.5,2,3,4,6,8"), **common)
    else:
        gaussians(pos[1], sampler=kw.get("sampler", "dpmpp2m"), steps=int(kw.get("steps", 20)),
                  w=kw.get("w", "0,1,2,3"), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
