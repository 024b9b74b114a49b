"""Quality versus NETWORK CALLS for every sampler × spacing on one checkpoint (issue 23 item 7).

Usage:
    python bench/quality_vs_calls.py CKPT DATASET [--n N] [--seed S] [--calls 4,6,8,10,15,20,50]
        [--only LABEL,...] [--spacings S,...] [--reference ddpm-1000[,ddpm-250] | none] [--knobs]
        [--no-grid] [--jsonl FILE] [--md FILE] [--batch-size B]
    python bench/quality_vs_calls.py - DATASET --report FILE.jsonl [...]   # tables of stored rows

The runs of docs/sampling.md ("Quality vs network calls"): ``CKPT butterfly --knobs`` (n = 10,000)
and ``CKPT digits --n 600``; their rows are in bench/results/.

For each sampler variant (every sampler at its default options; unipc and deis also at order 3)
and each spacing in {the sampler's default, leading, trailing, logsnr, karras}, draws N samples
(sample seed S, default 1) at each network-call budget with ``fastddpm.sample`` on the
checkpoint's EMA net (one torch thread), plus the reference rows (ddpm-1000 leading; for
digits also ddpm-250). Heun makes 2N − 1 calls for N steps: it runs N = (calls + 1) // 2 and
the row reports the actual calls (the plan's table rows). ``--knobs`` adds the cheap options the
samplers already have (final="sigma_min", solver_type, eta, lower_order_final) at 6-20 calls.

Scores (fastddpm.metrics): for datasets with a closed-form support (the butterfly) the distance
of each sample to it, quantiles p50 / p90 / p99 / p99.9, the share beyond ``metrics.FAR`` (0.5
data units) and the max; for digits ``digit_scores`` (share classified with confidence ≥ 0.9,
max class-share deviation from 10 %, Fréchet distance in the classifier's features); for both
``evaluate(...)["sw_ratio"]`` (sliced Wasserstein to fresh data / the data-vs-data floor at the
same size; for digits the two halves of the real digits). Wall: the ``fastddpm.sample`` call
alone, with the 1-minute load average before it (the machine is shared: read walls as ratios
within one run).

Every row is appended to ``--jsonl`` as soon as it is scored; a rerun with the same file skips
the rows already there (so a killed run continues), then prints the markdown table of all rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fastddpm
from fastddpm import metrics
from fastddpm.kernels import samplers as KS
from fastddpm.sampling.options import SAMPLER_OPTION_FIELDS
from fastddpm.sampling.plan import make_plan

CALLS = (4, 6, 8, 10, 15, 20, 50)
SPACINGS = ("leading", "trailing", "logsnr", "karras")
# (label, sampler, options): every sampler at its defaults, plus the third-order unipc and deis.
VARIANTS = (
    ("ddpm", "ddpm", {}),
    ("ddim", "ddim", {}),
    ("dpmpp2m", "dpmpp2m", {}),
    ("dpmpp3m", "dpmpp3m", {}),
    ("dpmpp2m-sde", "dpmpp2m-sde", {}),
    ("dpmpp3m-sde", "dpmpp3m-sde", {}),
    ("unipc", "unipc", {}),
    ("unipc-o3", "unipc", {"order": 3}),
    ("deis", "deis", {}),
    ("deis-o3", "deis", {"order": 3}),
    ("euler", "euler", {}),
    ("euler-ancestral", "euler-ancestral", {}),
    ("heun", "heun", {}),
)
# The cheap knobs the samplers already have, each a row (label, sampler, spacing, options, final).
KNOB_CALLS = (6, 8, 10, 15, 20)
KNOBS = (
    ("dpmpp2m final=sigma_min", "dpmpp2m", "logsnr", {}, "sigma_min"),
    ("dpmpp2m solver_type=heun", "dpmpp2m", "logsnr", {"solver_type": "heun"}, None),
    ("dpmpp3m lower_order_final=False", "dpmpp3m", "logsnr", {"lower_order_final": False}, None),
    ("unipc final=sigma_min", "unipc", "logsnr", {}, "sigma_min"),
    ("unipc solver_type=bh1", "unipc", "logsnr", {"solver_type": "bh1"}, None),
    ("unipc-o3 solver_type=bh1", "unipc", "logsnr", {"order": 3, "solver_type": "bh1"}, None),
    ("ddim eta=1", "ddim", "logsnr", {"eta": 1.0}, None),
    ("euler-ancestral eta=0.5", "euler-ancestral", "karras", {"eta": 0.5}, None),
    ("dpmpp2m-sde final=sigma_min", "dpmpp2m-sde", "logsnr", {}, "sigma_min"),
    ("dpmpp2m-sde solver_type=heun", "dpmpp2m-sde", "logsnr", {"solver_type": "heun"}, None),
)


def spacings_of(sampler: str) -> list[str]:
    default = KS.defaults(sampler)["spacing"]
    return [default] + [s for s in SPACINGS if s != default]


def grid_configs(calls=CALLS, variants=VARIANTS):
    out = []
    for label, sampler, opts in variants:
        for spacing in spacings_of(sampler):
            for c in calls:
                steps = (c + 1) // 2 if sampler == "heun" else c
                out.append({"label": label, "sampler": sampler, "spacing": spacing, "steps": steps,
                            "options": dict(opts), "final": None, "group": "grid"})
    return out


def knob_configs(calls=KNOB_CALLS):
    return [{"label": label, "sampler": sampler, "spacing": spacing, "steps": c, "options": dict(opts),
             "final": final, "group": "knob"}
            for label, sampler, spacing, opts, final in KNOBS for c in calls]


def reference_configs(names):
    out = []
    for name in names:
        sampler, steps = name.rsplit("-", 1)
        out.append({"label": name, "sampler": sampler, "spacing": "leading", "steps": int(steps), "options": {},
                    "final": None, "group": "reference"})
    return out


def key(cfg, n, seed) -> str:
    opts = ",".join(f"{k}={v}" for k, v in sorted(cfg["options"].items()))
    return f"{cfg['label']}|{cfg['sampler']}|{cfg['spacing']}|{cfg['steps']}|{opts}|{cfg['final']}|{n}|{seed}"


class References:
    """The two reference sets of ``metrics.evaluate(x, dataset, n_ref=n, seed=0)`` (fresh draws for
    the analytic sets, the two halves of the real digits) and their SW floor, made once per run:
    ``sw_ratio`` is evaluate's to the last bit (checked on the first row) without redoing its
    references and k-NN precision/recall for every row (5 s per digits row)."""

    def __init__(self, dataset: str, n: int):
        from fastddpm.data import load_dataset

        if dataset == "digits":
            full = load_dataset("digits").raw().reshape(1797, -1).astype(np.float64)
            perm = np.random.default_rng(0).permutation(len(full))
            half = len(full) // 2
            self.a, self.b = full[perm[:half]], full[perm[half:2 * half]]
        else:
            self.a = load_dataset(dataset, n, seed=10**6).raw().astype(np.float64)
            self.b = load_dataset(dataset, n, seed=2 * 10**6).raw().astype(np.float64)
        self.floor = metrics.sliced_wasserstein(self.b, self.a, 500, 0)
        self.checked = False

    def sw(self, x, dataset: str, n: int) -> dict:
        sw = metrics.sliced_wasserstein(x, self.a, 500, 0)
        out = {"sw": sw, "sw_floor": self.floor, "sw_ratio": sw / self.floor}
        if not self.checked:
            ev = metrics.evaluate(x, dataset, n_ref=None if dataset == "digits" else n, seed=0)
            assert (ev["sliced_wasserstein"], ev["sw_baseline"]) == (sw, self.floor), (ev, out)
            self.checked = True
        return out


def score(x, dataset: str, n: int, refs: References) -> dict:
    row = dict(refs.sw(x, dataset, n))
    if dataset in metrics.SUPPORT_DATASETS:
        d = metrics.support_distance(x, dataset)
        for q in metrics.QUANTILES:
            row[metrics.quantile_key(q)] = float(np.quantile(d, q))
        row["far"] = float((d > metrics.FAR).mean())
        row["far_count"] = int((d > metrics.FAR).sum())
        row["max"] = float(d.max())
    if dataset == "digits":
        s = metrics.digit_scores(x)
        row.update(confident=s["confident"], hist_dev=s["class_hist_max_dev"], frechet=s["frechet"],
                   frechet_floor=s["frechet_floor"])
    return row


def run_one(ck, cfg, n, seed, dataset, batch_size, refs):
    try:
        calls = int(make_plan(ck.schedule, cfg["sampler"], cfg["steps"], cfg["spacing"], prediction=ck.prediction,
                              final=cfg["final"], **cfg["options"]).num_steps)
    except Exception as exc:  # noqa: BLE001 - a configuration the sampler refuses is a row, not the end of the run
        calls, error = (cfg["steps"] * 2 - 1 if cfg["sampler"] == "heun" else cfg["steps"]), f"{type(exc).__name__}: {exc}"
    else:
        error = None
    kw = {k: v for k, v in cfg["options"].items() if k in SAMPLER_OPTION_FIELDS}
    other = {k: v for k, v in cfg["options"].items() if k not in SAMPLER_OPTION_FIELDS}
    if other:
        kw["sampler_options"] = other
    if cfg["final"] is not None:
        kw["final"] = cfg["final"]
    if batch_size:
        kw["batch_size"] = batch_size
    row = {"label": cfg["label"], "sampler": cfg["sampler"], "spacing": cfg["spacing"], "steps": cfg["steps"],
           "calls": calls, "options": cfg["options"], "final": cfg["final"] or KS.defaults(cfg["sampler"])["final"],
           "group": cfg["group"], "n": n, "seed": seed}
    if error:
        row.update(wall_s=0.0, error=error)
        return row
    common = dict(sampler=cfg["sampler"], steps=cfg["steps"], spacing=cfg["spacing"], prediction=ck.prediction,
                  sample_shape=ck.sample_shape, seed=seed, progress=False, **kw)
    try:  # compile the kernels this table needs (Numba, first use) outside the timed call
        fastddpm.sample(ck.model, ck.schedule, min(n, 64), **common)
    except Exception:  # noqa: BLE001 - reported by the timed call below
        pass
    load = os.getloadavg()[0]
    row["load"] = round(load, 2)
    tic = time.perf_counter()
    try:
        x = fastddpm.sample(ck.model, ck.schedule, n, **common)
    except Exception as exc:  # noqa: BLE001 - a failing configuration is a row, not the end of the run
        row.update(wall_s=round(time.perf_counter() - tic, 3), error=f"{type(exc).__name__}: {exc}")
        return row
    row["wall_s"] = round(time.perf_counter() - tic, 3)
    row["load_after"] = round(os.getloadavg()[0], 2)
    x = ck.normalization.denormalize(np.asarray(x))
    if not np.isfinite(x).all():
        row["error"] = f"{int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())} non-finite samples"
        return row
    row.update(score(x, dataset, n, refs))
    return row


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def markdown(rows, dataset) -> str:
    refs = [r for r in rows if r["group"] == "reference" and "error" not in r]
    sw_ref = refs[0]["sw"] if refs else None
    name = row_name
    lines = []
    if dataset == "digits":
        lines.append(f"| sampler | spacing | calls | confident ≥ 0.9 | max class dev | Fréchet | SW / floor | "
                     f"SW / {refs[0]['label'] if refs else 'ref'}'s | wall s (load) |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if "error" in r:
                lines.append(f"| {name(r)} | {r['spacing']} | {r['calls']} | error: {r['error'][:60]} ||||||")
                continue
            lines.append(f"| {name(r)} | {r['spacing']} | {r['calls']} | {r['confident']:.3f} | {r['hist_dev']:.3f} | "
                         f"{r['frechet']:.3f} | {r['sw_ratio']:.2f} | {fmt(r['sw'] / sw_ref if sw_ref else None, '.2f')} | "
                         f"{r['wall_s']:.1f} ({r['load']:.1f}) |")
        return "\n".join(lines)
    lines.append("| sampler | spacing | calls | p50 | p90 | p99 | p99.9 | far % | max | SW / floor | "
                 f"SW / {refs[0]['label'] if refs else 'ref'}'s | wall s (load) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            lines.append(f"| {name(r)} | {r['spacing']} | {r['calls']} | error: {r['error'][:60]} |||||||||")
            continue
        lines.append(f"| {name(r)} | {r['spacing']} | {r['calls']} | {r['p50']:.4f} | {r['p90']:.4f} | {r['p99']:.3f} | "
                     f"{r['p99.9']:.3f} | {100 * r['far']:.2f} | {r['max']:.2f} | {r['sw_ratio']:.2f} | "
                     f"{fmt(r['sw'] / sw_ref if sw_ref else None, '.2f')} | {r['wall_s']:.2f} ({r['load']:.1f}) |")
    return "\n".join(lines)


def row_name(r) -> str:
    """sampler[-o3] plus the options and end point a row sets beyond its sampler's defaults."""
    name = r["sampler"] + ("-o3" if r["options"].get("order") == 3 else "")
    extra = [f"{k}={v}" for k, v in sorted(r["options"].items()) if k != "order"]
    if r["group"] == "knob" and r["final"] != KS.defaults(r["sampler"])["final"]:
        extra.append(f"final={r['final']}")
    return " ".join([name, *extra])


def pivot(rows, value, title, calls=CALLS) -> str:
    """One line per sampler variant × spacing, one column per call budget: ``value(row)``."""
    grid = {}
    for r in rows:
        if r["group"] == "grid":
            grid.setdefault((row_name(r), r["spacing"]), {})[r["steps"]] = r
    lines = [f"| {title} | spacing | " + " | ".join(str(c) for c in calls) + " |",
             "|---|---|" + "---:|" * len(calls)]
    for (name, spacing), by in grid.items():
        cells = []
        for c in calls:
            r = by.get((c + 1) // 2 if name == "heun" else c)
            cells.append("—" if r is None else ("err" if "error" in r else value(r)))
        lines.append(f"| {name} | {spacing} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(paths, dataset, calls=CALLS) -> str:
    """The markdown of stored rows (JSON lines of one or more runs): the pivots, then every row."""
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.startswith('{"label')]
    seen, uniq = set(), []
    for r in rows:  # a resumed run may repeat a row: keep the first
        if r["key"] not in seen:
            seen.add(r["key"])
            uniq.append(r)
    labels = [v[0] for v in VARIANTS] + [k[0] for k in KNOBS]

    def order(r):
        group = ("reference", "grid", "knob").index(r["group"])
        label = labels.index(r["label"]) if r["label"] in labels else len(labels)
        spacings = spacings_of(r["sampler"])
        return group, label, spacings.index(r["spacing"]) if r["spacing"] in spacings else 9, r["calls"]

    uniq.sort(key=order)
    out = []
    if dataset == "digits":
        out += [pivot(uniq, lambda r: f"{r['confident']:.3f}", "share confident ≥ 0.9", calls), "",
                pivot(uniq, lambda r: f"{r['frechet']:.2f}", "Fréchet (classifier features)", calls)]
    else:
        out += [pivot(uniq, lambda r: f"{r['sw_ratio']:.2f}", "SW / floor", calls), "",
                pivot(uniq, lambda r: f"{r['p99']:.3f} ({r['far_count']})", "p99 (samples > 0.5)", calls)]
    out += ["", markdown(uniq, dataset)]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("dataset")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--calls", default=",".join(map(str, CALLS)))
    p.add_argument("--only", default=None, help="comma-separated variant labels to keep (e.g. dpmpp2m,unipc-o3)")
    p.add_argument("--spacings", default=None, help="comma-separated spacings to keep (grid rows)")
    p.add_argument("--reference", default=None, help="reference runs (default ddpm-1000; digits ddpm-250,ddpm-1000)")
    p.add_argument("--knobs", action="store_true", help="add the knob rows")
    p.add_argument("--no-grid", action="store_true", help="skip the sampler × spacing grid")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--jsonl", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--report", nargs="+", metavar="JSONL", help="print the tables of stored rows and exit")
    a = p.parse_args(argv)
    if a.report:
        print(report(a.report, a.dataset, tuple(int(c) for c in a.calls.split(","))))
        return
    torch.set_num_threads(1)
    ck = fastddpm.load(a.checkpoint)
    refs = (a.reference.split(",") if a.reference else
            (["ddpm-250", "ddpm-1000"] if a.dataset == "digits" else ["ddpm-1000"]))
    configs = reference_configs([r for r in refs if r and r != "none"])
    if not a.no_grid:
        configs += grid_configs(tuple(int(c) for c in a.calls.split(",")))
    if a.knobs:
        configs += knob_configs()
    if a.only:
        keep = a.only.split(",")
        configs = [c for c in configs if c["group"] == "reference" or any(k == c["label"] for k in keep)]
    if a.spacings:
        keep = a.spacings.split(",")
        configs = [c for c in configs if c["group"] != "grid" or c["spacing"] in keep]
    done = {}
    if a.jsonl and Path(a.jsonl).exists():
        for line in Path(a.jsonl).read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                if "sampler" in r:
                    done[r["key"]] = r
    head = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs", "cpu": _cpu(), "torch": torch.__version__,
            "checkpoint": a.checkpoint, "dataset": a.dataset, "n": a.n, "seed": a.seed, "configs": len(configs),
            "loadavg": open("/proc/loadavg").read().strip(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(head), flush=True)
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            f.write(json.dumps({"header": head}) + "\n")
    rows, refs = [], None
    tic = time.perf_counter()
    for cfg in configs:
        k = key(cfg, a.n, a.seed)
        if k in done:
            rows.append(done[k])
            continue
        if refs is None:
            refs = References(a.dataset, a.n)
        row = run_one(ck, cfg, a.n, a.seed, a.dataset, a.batch_size, refs)
        row["key"] = k
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
    table = markdown(rows, a.dataset)
    tail = f"\n{len(rows)} rows, this run {time.perf_counter() - tic:.0f} s; loadavg at the end {open('/proc/loadavg').read().strip()}"
    print("\n" + table + tail)
    if a.md:
        Path(a.md).write_text(table + "\n")


def _cpu() -> str:
    """"AMD EPYC (family 25 model 17, avx512f)" from /proc/cpuinfo (the model name alone is vague on VMs)."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor()
    avx = ", avx512f" if "avx512f" in info.get("flags", "").split() else ""
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}{avx})"


if __name__ == "__main__":
    main(sys.argv[1:])
