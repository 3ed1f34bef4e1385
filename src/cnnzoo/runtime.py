"""Inference runtimes: one interface over PyTorch, ONNX Runtime and OpenVINO, for predict, explain and serve.

    open_runtime("runs/x/best.pt")              -> TorchRuntime     (a cnnzoo checkpoint, or a TorchScript export)
    open_runtime("model.onnx")                  -> OnnxRuntime      (auto: ONNX Runtime, else OpenVINO)
    open_runtime("model.onnx", "onnxruntime")   -> OnnxRuntime
    open_runtime("model.xml")                   -> OpenVINORuntime  (OpenVINO IR)

An exported file carries the model card (cnnzoo.artifact.ModelCard: model name, classes, the input contract) as a
JSON string under META_KEY: in the ONNX model's metadata_props, in the OpenVINO IR's rt_info, or in a TorchScript
archive's extra file. So the file alone is enough to predict, and every runtime preprocesses an image with the
same cnnzoo.images.preprocess under the same InputSpec as training-time validation did.

Backend and precision "auto": an export made with ``--precision`` carries a deploy record (cnnzoo.precision.Deployment:
the fastest backend x precision that passed its accuracy gate on the export machine), and "auto" runs that choice.
Without a record, "auto" is fp32 on the fastest runtime available on CPU: ONNX Runtime, then OpenVINO for .onnx
files (in fp32 ONNX Runtime was the fastest or within 3% of OpenVINO on every row of benchmarks/inference.py, and
OpenVINO up to 2x slower on the smallest networks, where its per-call overhead dominates).

Importing this module does not import torch, and neither do the ONNX Runtime and OpenVINO paths: a service
running an .onnx starts fast and small. Only TorchRuntime imports torch, when it is opened.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import threading
import warnings
import zipfile
from abc import ABC, abstractmethod
from contextlib import nullcontext
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cnnzoo.artifact import CHECKPOINT_SUFFIXES, EXPORTED_FILES, ModelCard, is_torchscript
from cnnzoo.choices import BACKENDS
from cnnzoo.errors import UserError
from cnnzoo.images import preprocess
from cnnzoo.precision import (PRECISION_CHOICES, PRECISIONS, Deployment, bf16_refusal, check_precision,
                              openvino_core, stored_precision)

__all__ = [
    "META_KEY",
    "BACKENDS",
    "Runtime",
    "TorchRuntime",
    "OnnxRuntime",
    "OpenVINORuntime",
    "open_runtime",
    "read_ov_model",
    "onnx_session",
    "softmax",
    "top_classes",
    "default_threads",
    "PRECISIONS",
    "PRECISION_CHOICES",
]

META_KEY = "cnnzoo"
# The precisions each backend computes (cnnzoo.precision): ONNX Runtime's CPU provider has no bf16 kernels, and
# int8 on torch would need its own quantisation flow; int8 runs on a quantised export.
_RUNS_AT = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": PRECISIONS}
_PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def default_threads() -> int:
    """Intra-op threads for inference: OMP_NUM_THREADS when set, else the CPUs this process may really use.

    ONNX Runtime and OpenVINO default to every core of the host; in a container limited by affinity or a cgroup
    CPU quota that oversubscribes the cores the process actually gets, and latency suffers.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # cgroup v2: "max 100000" (no limit) or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 and stable for large logits."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_classes(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most probable (class name, probability) of each row, most probable first (ties: lower index)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[i], float(row[i])) for i in idx] for row, idx in zip(probs, order)]


def _import(backend: str):
    try:
        return importlib.import_module(_PACKAGES[backend])
    except ImportError:
        raise UserError(f"the {backend} backend is not installed (pip install {_PACKAGES[backend]})") from None


def onnx_session(model: str | Path | bytes, threads: int | None = None, shares_cpu: bool = False):
    """The one ONNX Runtime session factory (CPU provider): export checks, int8 calibration, the runtime.

    ``shares_cpu``: the caller keeps other threads busy while the model runs (the service's decoders). Intra-op
    threads then sleep between operators instead of spinning: spinning is ONNX Runtime's fastest mode on idle
    cores, but on shared ones it burns the CPU time the other threads need (a third more CPU per image measured in
    the service on 2 cores)."""
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1  # one sequential graph: inter-op threads would only compete
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    if shares_cpu:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class Runtime(ABC):
    """A loaded model on one backend, with the preprocessing and class names it was trained with.

    Attributes: backend, card (cnnzoo.artifact.ModelCard), model_name, classes, input_size (C, H, W), spec, path.
    """

    backend = ""

    def __init__(self, path: str | Path, card: ModelCard):
        self.path = str(path)
        self.card = card
        self.model_name: str = card.model_name
        self.classes: list[str] = list(card.classes)
        self.spec = card.input
        self.input_size: tuple[int, int, int] = card.input.size
        self.fixed_batch: int | None = None  # set by exports with a static batch axis: inputs go in chunks of it
        self.precision = "fp32"  # what it computes in: set by each backend from the precision asked (_precision)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path!r}, model={self.model_name}, classes={len(self.classes)}, "
                f"precision={self.precision})")

    def _set_precision(self, asked: str) -> None:
        self.precision = _precision(self.card, self.backend, asked, self.path)

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a contiguous float32 batch the model accepts as it is."""

    def _check_outputs(self, num_outputs: int | None) -> None:
        if isinstance(num_outputs, int) and num_outputs != len(self.classes):
            classes = len(self.classes)
            raise UserError(f"{self.path}: the model has {num_outputs} outputs but its metadata {classes} classes")

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model's evaluation preprocessing of one image: float32 C x H x W."""
        return preprocess(image, self.spec)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw scores, N x K float32, for a preprocessed N x C x H x W batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(self.input_size):
            want = " x ".join(map(str, self.input_size))
            raise UserError(f"{self.model_name} takes N x {want} input, got {' x '.join(map(str, batch.shape))}")
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        step = self.fixed_batch
        if step is None or step == len(batch):
            return np.asarray(self._run(batch), dtype=np.float32)
        chunks = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            padded = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), np.float32)])
            chunks.append(np.asarray(self._run(padded), dtype=np.float32)[: len(chunk)])
        return np.concatenate(chunks)

    def predict(self, images: Sequence[Image.Image], topk: int = 5) -> list[list[tuple[str, float]]]:
        """The top-k (class name, probability) of each image, most probable first."""
        if topk < 1:
            raise UserError(f"topk must be at least 1, got {topk}")
        if not images:
            return []
        probs = softmax(self.logits(np.stack([self.preprocess(image) for image in images])))
        return top_classes(probs, self.classes, topk)


class TorchRuntime(Runtime):
    """PyTorch eager on a cnnzoo checkpoint, read with weights_only=True; or, only with ``trust_torchscript``, a
    `cnnzoo export --format torchscript` file.

    A TorchScript archive is a program, not data: torch.jit.load runs the code it carries (a scripted __setstate__
    can create and overwrite files), so one is refused unless the caller says it trusts the file."""

    backend = "torch"

    def __init__(self, path: str | Path, precision: str = "auto", *, trust_torchscript: bool = False):
        torch = _import("torch")
        self._torch = torch
        source = Path(path) / "last.pt" if Path(path).is_dir() else Path(path)  # a run folder: its last.pt
        if is_torchscript(source):
            if not trust_torchscript:
                raise UserError(f"{source} is a TorchScript program, which runs code when loaded: open it only if you "
                                "trust it, with --trust-torchscript (trust_torchscript=True)")
            extra = {f"{META_KEY}.json": ""}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": still supported
                    self.model = torch.jit.load(str(source), map_location="cpu", _extra_files=extra).eval()
            except RuntimeError as err:
                reason = str(err).strip().splitlines()[0][:200]
                raise UserError(f"{path}: not a loadable TorchScript file ({reason})") from None
            card = ModelCard.from_json(extra[f"{META_KEY}.json"] or None, str(path))
            self.channels_last = False
        else:
            from cnnzoo.checkpoint import build_model, load_checkpoint

            ckpt = load_checkpoint(path)
            card = ckpt.card
            self.model = build_model(ckpt)
            self.channels_last = bool(getattr(self.model, "channels_last", False))
        super().__init__(path, card)
        self._set_precision(precision)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _autocast(self, device: str):
        # bf16: autocast, as training's --amp does (bfloat16 on CPU, float16 on CUDA); fp32: nothing
        if self.precision != "bf16":
            return nullcontext()
        return self._torch.autocast(device, dtype=self._torch.float16 if device == "cuda" else self._torch.bfloat16)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast(x.device.type):
            out = self.model(x)
        return out.float().numpy()


class OnnxRuntime(Runtime):
    """ONNX Runtime, CPU execution provider, on an exported .onnx file."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "auto",
                 shares_cpu: bool = False):
        try:
            self.session = onnx_session(path, threads, shares_cpu)
        except UserError:
            raise
        except Exception as err:  # InvalidProtobuf, Fail, ...: all mean the file is not a usable ONNX model
            raise UserError(f"{path}: not a loadable ONNX model ({str(err).strip().splitlines()[0][:200]})") from None
        card = ModelCard.from_json(self.session.get_modelmeta().custom_metadata_map.get(META_KEY), str(path))
        super().__init__(path, card)
        self._set_precision(precision)  # an int8 file is ONNX Runtime's QDQ graph: it runs as it is
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        _check_input_shape(inp.shape, self.input_size, str(path))
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        out_shape = self.session.get_outputs()[0].shape
        self._check_outputs(out_shape[-1] if out_shape else None)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input_name: batch})[0]


def _check_input_shape(shape: Sequence, input_size: tuple[int, int, int], source: str) -> None:
    """Static C, H, W in the graph must be the metadata's: otherwise preprocessing would feed the wrong size."""
    if len(shape) != 4:
        raise UserError(f"{source}: expected an N x C x H x W input, the model's input has shape {list(shape)}")
    for dim, want in zip(shape[1:], input_size):
        if isinstance(dim, int) and dim > 0 and dim != want:
            raise UserError(f"{source}: the model's input {list(shape)} disagrees with its metadata {list(input_size)}")


class OpenVINORuntime(Runtime):
    """OpenVINO on CPU, on an OpenVINO IR (.xml + .bin) or directly on an .onnx file."""

    backend = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "auto"):
        ov = _import("openvino")
        model = read_ov_model(ov, Path(path))
        super().__init__(path, ModelCard.from_json(_ov_meta(model), str(path)))
        self._set_precision(precision)
        shape = model.inputs[0].get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        _check_input_shape(dims, self.input_size, str(path))
        self.fixed_batch = dims[0]
        out = model.outputs[0].get_partial_shape()
        self._check_outputs(out[-1].get_length() if out.rank.is_static and out[-1].is_static else None)
        config = {
            # one stream with every thread on one request: predict and serve run one batch at a time
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or default_threads(),
        }
        if _OV_HINTS[self.precision]:
            config["INFERENCE_PRECISION_HINT"] = _OV_HINTS[self.precision]
        self.compiled = openvino_core().compile_model(model, "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time; a service may call from threads

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            # Shared buffers skip two copies (half the per-call overhead of a small model); the output view is
            # copied before the request is reused.
            self._request.infer({0: batch}, share_inputs=True, share_outputs=True)
            return self._request.get_output_tensor(0).data.copy()


# Each kind of file read by its own frontend: OpenVINO's read_model offers a file it cannot parse to every frontend,
# and the TensorFlow one logs its parse errors to the process's stderr, around the one-line error.
_OV_FILES = {".xml": ("OpenVINO IR", "ir"), ".onnx": ("ONNX model", "onnx")}


def read_ov_model(ov, path: Path):
    """The ov.Model of an IR (.xml + .bin) or an .onnx; a UserError naming the cause for a file that is neither."""
    kind, framework = _OV_FILES.get(path.suffix, _OV_FILES[".onnx"])
    if framework == "ir":
        with open(path, "rb") as f:
            if b"<net" not in f.read(4096):  # the IR frontend would read another XML as a network without layers
                raise UserError(f"{path}: not an OpenVINO IR (no <net> element)")
    try:
        frontend = _frontend(ov, framework)
        return frontend.convert(frontend.load(str(path)))
    except Exception as err:  # RuntimeError, GeneralFailure, OpConversionFailure: all mean an unusable file
        weights = path.with_suffix(".bin")
        cause = _ov_cause(err) if framework == "onnx" or weights.is_file() else f"{weights} is missing"
        raise UserError(f"{path}: not a loadable {kind} ({cause})") from None


@functools.lru_cache(maxsize=None)
def _frontend_manager(ov):
    return ov.frontend.FrontEndManager()


def _frontend(ov, framework: str):
    """The frontend of ``framework``, from one FrontEndManager kept for the life of the process: a model a frontend
    converted runs code of the frontend's library, which must not be unloaded with a temporary manager while the
    model (or the worker threads that ran it) still exists."""
    return _frontend_manager(ov).load_by_framework(framework)


def _ov_cause(err: Exception) -> str:
    """The last line of an OpenVINO error: the cause, after its chain of "Exception from FILE:LINE:" and
    "Check '...' failed at FILE:LINE:" locations."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("Exception from ", "Check '", "FrontEnd API failed"))]
    return (causes[-1] if causes else type(err).__name__)[:200]


# OpenVINO's CPU plugin computes in bf16 by itself on CPUs with AMX/AVX512-BF16 (logits move by ~1e-2): fp32 asks
# for f32 explicitly. An int8 IR (NNCF) or QDQ graph runs its quantised layers in int8 whatever the hint; the rest
# in OpenVINO's fastest float type, which is what the gate measured on this machine.
_OV_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}


def _precision(card: ModelCard, backend: str, asked: str, source: str) -> str:
    """The precision a runtime computes in. "auto": the deploy record's when it was chosen for this backend (fp32
    where this machine cannot compute a recorded bf16), else the file's own: int8 for a quantised export, fp32
    otherwise. An explicit precision must be one the backend, the file and the machine can compute."""
    asked = check_precision(asked)
    record, stored = Deployment.of(card), stored_precision(card)
    if asked == "auto":
        wanted = record.precision if record is not None and record.backend == backend else stored
        refusal = bf16_refusal(backend) if wanted == "bf16" else None
        if refusal:
            warnings.warn(f"{source}: the recorded bf16 runs as fp32 on this machine ({refusal})", stacklevel=3)
            return "fp32"
        return wanted
    if asked not in _RUNS_AT[backend]:
        raise UserError(f"the {backend} backend computes {' and '.join(_RUNS_AT[backend])}, not {asked}")
    if stored == "int8" and asked != "int8":
        raise UserError(f"{source} is quantised to int8 and runs only as int8; export the checkpoint again for {asked}")
    if asked == "int8" and stored != "int8":
        raise UserError(f"{source} holds float weights; int8 needs a quantised export "
                        "(cnnzoo export CKPT --precision int8 --data DIR)")
    refusal = bf16_refusal(backend) if asked == "bf16" else None
    if refusal:
        raise UserError(f"bf16 on {backend} refused: {refusal}")
    return asked


def _recorded_backend(path: Path) -> str | None:
    """The backend an .onnx file's deploy record chose, read from its metadata without building a session."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        record = Deployment.of(ModelCard.from_json(props.get(META_KEY), str(path)))
    except Exception:  # unreadable or without a card: the runtime's own loader names the problem
        return None
    return record.backend if record is not None else None


def _ov_meta(model) -> str | None:
    # IR written by `cnnzoo export --format openvino`: rt_info["cnnzoo"]; an .onnx read by OpenVINO's ONNX
    # frontend: its metadata_props land in rt_info["framework"]["cnnzoo"].
    for key in ([META_KEY], ["framework", META_KEY]):
        if model.has_rt_info(key):
            return model.get_rt_info(key).astype(str)
    return None


def _available(backend: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[backend]) is not None


def _kind(path: Path) -> str:
    if path.suffix in CHECKPOINT_SUFFIXES and is_torchscript(path):
        return "torchscript"
    if path.is_dir() or path.suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if path.suffix in EXPORTED_FILES:
        return EXPORTED_FILES[path.suffix][0]
    raise UserError(
        f"{path}: unknown model file type {path.suffix or '(no suffix)'!r}; expected a cnnzoo checkpoint (.pt), "
        "an ONNX model (.onnx) or an OpenVINO IR (.xml)"
    )


# The backends each kind of file can run on, fastest on CPU first: the order "auto" tries them in.
_RUNS_ON = {"checkpoint": ("torch",), "torchscript": ("torch",), "onnx": ("onnxruntime", "openvino"),
            "openvino": ("openvino",)}
_KIND_NAMES = {"checkpoint": "a PyTorch checkpoint", "torchscript": "a TorchScript program",
               **dict(EXPORTED_FILES.values())}
# What to do instead, for a file the chosen backend cannot run (default: name the backends that can).
_HINTS = {"checkpoint": "export it first (cnnzoo export CKPT --format onnx), or use --backend torch",
          "torchscript": "use --backend torch (with --trust-torchscript), or export the checkpoint to ONNX"}


def open_runtime(
    path: str | Path, backend: str = "auto", *, threads: int | None = None, precision: str = "auto",
    trust_torchscript: bool = False, shares_cpu: bool = False,
) -> Runtime:
    """Load a model file on a backend, at a precision.

    Args:
        path: a cnnzoo checkpoint (.pt, or a run folder), a TorchScript export (.pt), an .onnx or an OpenVINO .xml.
        backend: "torch", "onnxruntime", "openvino", or "auto": the backend the file's deploy record chose (see
            cnnzoo.precision), else the fastest installed backend for the file on CPU that computes the precision
            asked (ONNX Runtime, then OpenVINO, for .onnx; torch for a checkpoint).
        threads: intra-op threads for ONNX Runtime and OpenVINO (default: default_threads()).
        precision: "fp32", "bf16", "int8" or "auto": the deploy record's precision when the file has one and runs
            on its backend, else the file's own (int8 for a quantised export, fp32 otherwise).
        trust_torchscript: open a TorchScript archive (.pt), which runs the code it carries when loaded; without
            it such a file is refused (UserError). Checkpoints never need it: they are read as weights only.
        shares_cpu: the caller runs other CPU work beside the model (cnnzoo serve's decoders): ONNX Runtime's
            threads then do not spin between operators (see onnx_session). Off, the fastest for a runtime alone.

    Raises:
        UserError: a missing file, an unknown file type, a backend that cannot run this kind of file or is not
            installed, a file without cnnzoo metadata, a precision the backend, the file or this CPU cannot compute.
    """
    path = Path(path)
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    precision = check_precision(precision)
    if not path.exists():
        raise UserError(f"no such model file: {path}")
    kind = _kind(path)
    candidates = _RUNS_ON[kind]
    if backend == "auto":
        present = [b for b in candidates if _available(b)]
        installed = [b for b in present if precision in ("auto", *_RUNS_AT[b])]
        if not present:
            raise UserError(f"{path} needs one of {', '.join(candidates)}, and none is installed")
        if not installed:
            computes = "; ".join(f"{b} computes {' and '.join(_RUNS_AT[b])}" for b in present)
            hint = " (cnnzoo export CKPT --precision int8 --data DIR makes an int8 file)" if precision == "int8" else ""
            raise UserError(f"{path} cannot run at {precision} here: {computes}{hint}")
        recorded = _recorded_backend(path) if kind == "onnx" and precision == "auto" else None
        backend = recorded if recorded in installed else installed[0]
    elif backend not in candidates:
        hint = _HINTS.get(kind, f"use --backend {' or '.join(candidates)}")
        raise UserError(f"the {backend} backend cannot run {path}, which is {_KIND_NAMES[kind]}: {hint}")
    if backend == "torch":
        return TorchRuntime(path, precision, trust_torchscript=trust_torchscript)
    if backend == "onnxruntime":
        return OnnxRuntime(path, threads, precision, shares_cpu)
    return OpenVINORuntime(path, threads, precision)
