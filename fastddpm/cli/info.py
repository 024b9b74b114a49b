"""``fastddpm info``: versions, CPU, threads, GPU, Triton, ONNX Runtime and caches — paste it into a bug report."""
from __future__ import annotations

import argparse
import json


def add_parser(subparsers, parents):
    p = subparsers.add_parser(
        "info", parents=parents, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="versions, CPU features, threads, GPU, Triton, ONNX Runtime providers and cache locations",
        description="Print what this installation and machine are — fastddpm and dependency versions, CPU model "
                    "and features (AVX2, AVX-512, bf16), thread counts, GPU and Triton, ONNX Runtime providers, "
                    "the Numba kernel cache and the ONNX export cache — for a bug report.")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    return p


def run(args) -> int:
    from ..machine import describe, format_text
    from ..pipelines.engines import cache_dir

    info = describe({"caches": {"onnx_export": cache_dir()}})
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
