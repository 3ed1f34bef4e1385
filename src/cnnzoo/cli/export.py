"""`cnnzoo export`: a checkpoint to ONNX, TorchScript or OpenVINO IR, checked against PyTorch."""

from __future__ import annotations

import argparse

from cnnzoo.choices import EXPORT_FORMATS as FORMATS
from cnnzoo.choices import TORCHSCRIPT_METHODS as METHODS
from cnnzoo.cli import input_size_arg


def cmd_export(args: argparse.Namespace) -> int:
    from cnnzoo.exporting import export

    calib, val = args.calib_data, args.val_data
    if args.data:
        calib, val = calib or f"{args.data}/train", val or f"{args.data}/val"
    report = export(
        args.checkpoint, args.out, args.format, opset=args.opset, dynamic_batch=args.dynamic_batch,
        input_size=args.input_size, method=args.method, quantize=args.quantize, calib_data=calib, val_data=val,
        calib_images=args.calib_images, max_drop=args.max_drop,
    )
    print(report)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX, TorchScript or OpenVINO IR",
                              description="Export a checkpoint and check the result against PyTorch on random "
                                          "inputs (max abs diff printed; the export fails above 1e-4).")
    p.add_argument("checkpoint", help="a cnnzoo checkpoint (.pt) or a run folder")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True,
                       help="a dynamic batch axis (default)")
    batch.add_argument("--static", dest="dynamic_batch", action="store_false", help="a fixed batch of 1")
    p.add_argument("--input-size", type=input_size_arg, default=None, metavar="CxHxW",
                   help="export at another input size: CxHxW, HxW or H (HxW and H keep the model's channels)")
    p.add_argument("--method", choices=METHODS, default="trace", help="TorchScript: trace (default) or script")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 post-training static quantisation with ONNX Runtime (onnx only)")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset root with train/ and val/ image folders")
    p.add_argument("--calib-data", default=None, metavar="DIR", help="calibration images (default DATA/train)")
    p.add_argument("--val-data", default=None, metavar="DIR", help="validation split (default DATA/val)")
    p.add_argument("--calib-images", type=int, default=100, metavar="N", help="calibration images (default 100)")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="refuse int8 when validation top-1 drops by more (default 1)")
    p.set_defaults(handler=cmd_export)
