"""`cnnzoo export`: a checkpoint to ONNX, TorchScript or OpenVINO IR, checked against PyTorch; with --precision, the
fastest configuration that keeps its accuracy (cnnzoo.precision), measured on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnzoo.choices import EXPORT_FORMATS as FORMATS
from cnnzoo.choices import TORCHSCRIPT_METHODS as METHODS
from cnnzoo.cli import input_size_arg
from cnnzoo.precision import DEFAULT_BATCH, PRECISION_CHOICES, Gate


def cmd_export(args: argparse.Namespace) -> int:
    from cnnzoo.exporting import export

    calib, val = args.calib_data, args.val_data
    if args.data:  # DIR/train and DIR/val; a folder of class folders alone is the training images
        train = Path(args.data) / "train"
        calib = calib or str(train if train.is_dir() else args.data)
        val = val or (str(Path(args.data) / "val") if (Path(args.data) / "val").is_dir() else None)
    legacy_drop = 1.0 if args.max_drop is None else args.max_drop  # --quantize's own default
    gate = Gate(args.min_agreement, Gate.max_drop if args.max_drop is None else args.max_drop)
    report = export(
        args.checkpoint, args.out, args.format, opset=args.opset, dynamic_batch=args.dynamic_batch,
        input_size=args.input_size, method=args.method, quantize=args.quantize, calib_data=calib, val_data=val,
        calib_images=args.calib_images, max_drop=legacy_drop, precision=args.precision, gate=gate,
        batch=args.batch, val_images=args.val_images,
    )
    print(report)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX, TorchScript or OpenVINO IR",
                              description="Export a checkpoint and check the result against PyTorch on random "
                                          "inputs (max abs diff printed; the export fails above 1e-4).")
    p.add_argument("checkpoint", help="a cnnzoo checkpoint (.pt) or a run folder")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="default onnx; with --precision bf16/int8/auto: the kind of file the chosen configuration "
                        "runs (an OpenVINO IR for NNCF's int8), unless --out ends in .onnx or .xml")
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--dynamic-batch", dest="dynamic_batch", action="store_true", default=True,
                       help="a dynamic batch axis (default)")
    batch.add_argument("--static", dest="dynamic_batch", action="store_false", help="a fixed batch of 1")
    p.add_argument("--input-size", type=input_size_arg, default=None, metavar="CxHxW",
                   help="export at another input size: CxHxW, HxW or H (HxW and H keep the model's channels)")
    p.add_argument("--method", choices=METHODS, default="trace", help="TorchScript: trace (default) or script")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="fp32 (default); bf16, int8: the fastest configuration of that precision that passes its "
                        "accuracy gate; auto: the fastest that passes of all (needs --data); a table of the "
                        "alternatives is printed")
    p.add_argument("--min-agreement", type=float, default=Gate.min_agreement, metavar="PCT",
                   help=f"gate: %% of validation images whose top-1 must equal fp32's (default {Gate.min_agreement:g})")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"the service's batch: speed is measured at batch 1 and N (default {DEFAULT_BATCH})")
    p.add_argument("--val-images", type=int, default=500, metavar="N",
                   help="validation images the gate judges on (default 500)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="older spelling: int8 with ONNX Runtime's QDQ (onnx only), gated by --max-drop alone")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset root with train/ and val/ image folders (without val/, every 5th training image "
                        "is held out for the gate)")
    p.add_argument("--calib-data", default=None, metavar="DIR", help="calibration images (default DATA/train)")
    p.add_argument("--val-data", default=None, metavar="DIR", help="validation split (default DATA/val)")
    p.add_argument("--calib-images", type=int, default=100, metavar="N", help="calibration images (default 100)")
    p.add_argument("--max-drop", type=float, default=None, metavar="POINTS",
                   help=f"gate: refuse a reduced precision whose validation top-1 drops by more (default "
                        f"{Gate.max_drop:g}; 1 for --quantize)")
    p.set_defaults(handler=cmd_export)
