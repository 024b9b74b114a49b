"""``fastddpm eval FILE --dataset NAME``: sample-quality metrics of a .npy file as JSON."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .. import metrics as m
from . import library_default
from .._io import write_text
from ..data import load_dataset
from ..metrics import evaluate


def add_parser(subparsers, parents):
    p = subparsers.add_parser("eval", parents=parents, help="metrics of samples (.npy) against a dataset, as JSON",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("file", metavar="FILE", help="samples in data space, a .npy of shape [n, ...]")
    p.add_argument("--dataset", required=True, help="reference dataset name (e.g. butterfly) or a .npy of held-out data")
    p.add_argument("--n-ref", type=int, default=None, help="reference points (default: as many as samples)")
    p.add_argument("--seed", type=int, default=library_default(evaluate, "seed"), help="seed of the reference data and the projections")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    return p


def run(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (write it with `fastddpm sample ... --out {path}`)")
    try:
        samples = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # e.g. "mmap length is greater than file size"
        raise ValueError(f"{path} is not a readable .npy file (truncated or corrupt: {exc}); write it again with "
                         f"`fastddpm sample ... --out {path}`") from exc
    if samples.ndim < 2 or samples.shape[0] < 1:
        raise ValueError(f"{path} must hold samples of shape [n, ...] with n >= 1, got {samples.shape}")
    n_ref = samples.shape[0] if args.n_ref is None else args.n_ref
    probe = load_dataset(args.dataset, 2) if not args.dataset.endswith(".npy") else load_dataset(args.dataset)
    if tuple(probe.sample_shape) != tuple(samples.shape[1:]):
        raise ValueError(f"{path} holds samples of shape {tuple(samples.shape[1:])} but dataset {args.dataset!r} "
                         f"has shape {tuple(probe.sample_shape)}")
    x = np.asarray(samples)
    metrics = evaluate(x, args.dataset, n_ref=n_ref, seed=args.seed)
    metrics["knn_k"] = m.KNN_K
    if args.dataset in m.SUPPORT_DATASETS:  # distance to the closed-form support, and the data's own
        metrics["support_distance"] = m.support_quantiles(x, args.dataset)
        metrics["support_distance_data"] = m.support_quantiles(
            load_dataset(args.dataset, n_ref, seed=10**6 + args.seed).raw(), args.dataset)
    if args.dataset == "digits":
        metrics["digits"] = m.digit_scores(x, seed=args.seed)
    text = json.dumps({"file": str(path), "dataset": args.dataset, "n": int(samples.shape[0]),
                       "n_ref": int(n_ref), **metrics}, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text)
    sys.stdout.flush()
    return 0
