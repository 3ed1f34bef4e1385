"""`cnnzoo serve`: the HTTP service and its web page (with an .onnx or .xml model, torch is never imported)."""

from __future__ import annotations

import argparse
import math
import os

from cnnzoo.choices import BACKENDS
from cnnzoo.cli.predict import add_precision_flag, add_trust_flag

MB = 1024 * 1024


def _bytes(megabytes: float) -> float:
    # a size Limits will refuse (0, negative, nan) goes through as typed, so that its message shows the user's value
    return round(megabytes * MB) if math.isfinite(megabytes) and megabytes > 0 else megabytes


def cmd_serve(args: argparse.Namespace) -> int:
    from cnnzoo.serving import Limits, serve

    # every value is range-checked by the library (Limits, serve), before the model is loaded
    limits = Limits(max_body_bytes=_bytes(args.max_body_mb), max_pixels=args.max_pixels,
                    max_in_flight=args.max_in_flight, timeout_s=args.timeout, max_images=args.max_images,
                    batch_wait_ms=args.batch_wait_ms)
    serve(args.model, host=args.host, port=args.port, backend=args.backend, max_batch=args.max_batch,
          token=args.token or None, limits=limits, log_level=args.log_level, trust_torchscript=args.trust_torchscript,
          precision=args.precision)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from cnnzoo.images import DEFAULT_MAX_PIXELS  # torch-free

    p = subparsers.add_parser("serve", help="serve a model over HTTP with a small web page",
                              description="Serve a checkpoint, .onnx or OpenVINO .xml: POST /v1/predict, "
                                          "/v1/predict/batch, GET /v1/model, /livez, /readyz, and a web page at /.")
    p.add_argument("model", help="a cnnzoo checkpoint (.pt), an .onnx or an OpenVINO .xml")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                   help="auto (default): the backend the export recorded; for a float .onnx without a record, ONNX "
                        "Runtime and OpenVINO are timed at start (batch 1 and --max-batch) and the faster serves")
    p.add_argument("--max-batch", type=int, default=16, help="images batched into one inference, 1 to 1024 (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits to fill (default 2)")
    p.add_argument("--token", default=os.environ.get("CNNZOO_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' on /v1/* (default: $CNNZOO_TOKEN, else none)")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="request body limit in MB (default 10)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel limit per image")
    p.add_argument("--max-in-flight", type=int, default=64, help="concurrent requests before 429 (default 64)")
    p.add_argument("--max-images", type=int, default=32, help="images per batch request (default 32)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per request in seconds (default 10)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    add_precision_flag(p)
    add_trust_flag(p)
    p.set_defaults(handler=cmd_serve)
