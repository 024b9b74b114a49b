"""``fastddpm export CKPT --out model.onnx``: the ε-network of a checkpoint as an ONNX file."""
from __future__ import annotations

import argparse
import os
from ..onnx_export import export_onnx


def add_parser(subparsers, parents):
    p = subparsers.add_parser(
        "export", parents=parents, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="export a checkpoint's network to ONNX (samples without torch: fastddpm sample FILE.onnx)",
        description="Export the ε-network of a checkpoint to ONNX. The file stores the schedule, prediction "
                    "type, data normalisation and sample shape, so `fastddpm sample model.onnx` and "
                    "fastddpm.OnnxSampler need nothing else.",
    )
    p.add_argument("checkpoint", metavar="CKPT",
                   help="checkpoint directory (from fastddpm train), or a local diffusers DDPMPipeline directory")
    p.add_argument("--out", "-o", required=True, help="ONNX file to write (replaced atomically)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: fastddpm's tested opset, 17)")
    p.add_argument("--fixed-batch", action="store_true",
                   help="fix the batch axis to 1 instead of a dynamic batch axis")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def run(args) -> int:
    if os.path.exists(args.out) and not args.force:
        raise FileExistsError(f"{args.out!r} exists; pass --force to overwrite it")
    path = export_onnx(args.checkpoint, args.out, opset=args.opset, dynamic_batch=not args.fixed_batch)
    if not args.quiet:
        size = os.path.getsize(path)
        print(f"wrote {path} ({size / 1024:.1f} KiB); sample with: fastddpm sample {path} --n 1000")
    return 0
