"""Export a trained network to ONNX, TorchScript or OpenVINO IR, and check the result against PyTorch.

    export(source, out, format="onnx")          -> ExportReport
        source: a checkpoint path, a loaded Checkpoint, or a network (nn.Module) with ``card=`` or ``input_size=``
        onnx         torch.onnx.export, named input/logits, dynamic batch axis, the model card under "cnnzoo"
        torchscript  torch.jit.trace or torch.jit.script, the card in the archive's extra file "cnnzoo.json"
        openvino     the checked ONNX graph through OpenVINO's ONNX frontend, the card in rt_info["cnnzoo"]
        precision="bf16" | "int8" | "auto": the configurations of that precision (every one for auto) measured on
        this machine, each reduced precision gated on validation images (cnnzoo.precision), the fastest that
        passes written with its deploy record; int8 is ONNX Runtime's QDQ in an .onnx, NNCF's in an IR
        quantize="int8" (ONNX only, the older spelling): ONNX Runtime's QDQ, refused when validation top-1 drops
        by more than max_drop points; written with the int8 card and deploy record precision="int8" writes.

Every export is compared with the PyTorch model on random inputs (two batch sizes when the batch axis is
dynamic) and written atomically: a file that fails its check is never left behind.

Which ONNX exporter: the legacy TorchScript-based one (``dynamo=False``). Measured on torch 2.14.1 here, it exports
ResNet-18 in about 1 s and every registered network with it; the torch.export-based exporter (the default since
torch 2.9) needs the onnxscript package, which is not a dependency of this project (it fails at once with
"No module named 'onnxscript'"), traces through torch.export (several times slower, and it refuses
data-dependent shapes the legacy tracer records as constants), and gains nothing for these static CNN graphs.
The one classic weakness of the legacy exporter, adaptive pooling whose output size does not divide its input
(AlexNet's and VGG's heads away from 224x224), is handled here by swapping in an exact fixed-size equivalent.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnzoo.artifact import CHECKPOINT_SUFFIXES, EXPORTED_FILES, ModelCard, photo_spec, resolve_input_size
from cnnzoo.choices import EXPORT_FORMATS, TORCHSCRIPT_METHODS
from cnnzoo.checkpoint import Checkpoint, build_model, load_checkpoint
from cnnzoo.errors import UserError
from cnnzoo.precision import (DEFAULT_BATCH, Candidate, Deployment, Gate, GateImages, candidates_for,
                              check_precision, choose, int8_card, load_gate_images, openvino_core, run_trials,
                              trials_table)
from cnnzoo.registry import check_input_size
from cnnzoo.runtime import META_KEY, default_threads, onnx_session, open_runtime, read_ov_model

__all__ = ["FORMATS", "METHODS", "ExportError", "ExportReport", "export"]

FORMATS, METHODS = EXPORT_FORMATS, TORCHSCRIPT_METHODS
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "openvino": ".xml"}
# The format --out's suffix asks for when --format is not given, and the suffixes predict and serve know each by.
KINDS = {suffix: kind for suffix, (kind, _) in EXPORTED_FILES.items()}
OUT_SUFFIXES = {"torchscript": CHECKPOINT_SUFFIXES, **{kind: (suffix,) for suffix, kind in KINDS.items()}}


class ExportError(UserError):
    """A network that cannot be exported in the asked format, or an export that fails its output check."""


@dataclass
class ExportReport:
    """What an export wrote and how closely the exported model reproduces PyTorch."""

    path: Path
    format: str
    input_size: tuple[int, int, int]
    max_abs_diff: float  # largest |exported - PyTorch| over the checked logits
    batch_sizes: tuple[int, ...]  # batch sizes the check ran at
    seconds: float
    notes: list[str] = field(default_factory=list)  # tracer warnings, quantisation details
    top1_fp32: float | None = None  # validation top-1 (%) before and after int8 quantisation
    top1_int8: float | None = None
    deploy: Deployment | None = None  # precision != fp32: the configuration chosen, with every alternative measured

    def __str__(self) -> str:
        sizes = "x".join(map(str, self.input_size))
        line = (
            f"exported {self.format} to {self.path} (input {sizes}) in {self.seconds:.1f}s; max abs diff vs PyTorch "
            f"{self.max_abs_diff:.2e} at batch {', '.join(map(str, self.batch_sizes))}"
        )
        if self.top1_int8 is not None:
            line += f"; int8 top-1 {self.top1_int8:.2f}% (fp32 {self.top1_fp32:.2f}%)"
        deploy = []
        if self.deploy is not None:
            chosen = next(t for t in self.deploy.alternatives if t.name == self.deploy.backend + " " +
                          self.deploy.precision)
            deploy = [self.deploy.describe(), trials_table(self.deploy.alternatives, chosen)]
        return "\n".join([line, *self.notes, *deploy])


def _bare_card(model: nn.Module, input_size) -> ModelCard:
    """The card of a bare network: class names 0..K-1 and the photo contract (ImageNet statistics, crop 224/256)."""
    if input_size is None:
        raise UserError("exporting a bare network needs input_size (C, H, W) or a card")
    classes = [str(i) for i in range(int(getattr(model, "num_classes", 0)))]
    return ModelCard(type(model).__name__.lower(), {}, tuple(classes), photo_spec(input_size))


def _resolve(source: str | Path | Checkpoint | nn.Module, input_size, card: ModelCard | None
             ) -> tuple[nn.Module, ModelCard, str]:
    """(network in eval mode, its card at the export's input size, the default output file stem)."""
    if isinstance(source, nn.Module):
        card = card or _bare_card(source, resolve_input_size(input_size, (3, 224, 224)))
        if input_size is not None:
            card = card.with_input(card.input.at_size(resolve_input_size(input_size, card.input.size)))
        return source.eval(), card, type(source).__name__.lower()
    ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    named = isinstance(source, (str, os.PathLike)) and not Path(source).is_dir()
    card = card or ckpt.card
    if input_size is not None:
        card = card.with_input(card.input.at_size(resolve_input_size(input_size, card.input.size)))
        check_input_size(card.model_name, card.input.size, **card.model_kwargs)  # before any real arithmetic
    return build_model(ckpt), card, Path(source).stem if named else card.model_name


# ---------------------------------------------------------------------------------------------------------------
# Adaptive pooling at sizes the legacy exporter refuses
# ---------------------------------------------------------------------------------------------------------------


def _bins(size_in: int, size_out: int) -> list[tuple[int, int]]:
    # PyTorch's adaptive pooling bins: [floor(i*in/out), ceil((i+1)*in/out)).
    return [((i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)) for i in range(size_out)]


class _FixedAdaptiveAvgPool2d(nn.Module):
    """AdaptiveAvgPool2d for one fixed input H x W as two averaging matrices: out = P_h @ x @ P_w^T (exact bins)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        mats = []
        for size_in, size_out in zip(in_hw, out_hw):
            mat = torch.zeros(size_out, size_in)
            for i, (lo, hi) in enumerate(_bins(size_in, size_out)):
                mat[i, lo:hi] = 1.0 / (hi - lo)
            mats.append(mat)
        self.register_buffer("rows", mats[0], persistent=False)
        self.register_buffer("cols_t", mats[1].t().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)  # N x C x oh x ow


class _FixedAdaptiveMaxPool2d(nn.Module):
    """AdaptiveMaxPool2d for one fixed input H x W: max is separable, so rows first, then columns."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        self.row_bins, self.col_bins = _bins(in_hw[0], out_hw[0]), _bins(in_hw[1], out_hw[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, lo:hi, :].amax(2, keepdim=True) for lo, hi in self.row_bins], 2)
        return torch.cat([x[:, :, :, lo:hi].amax(3, keepdim=True) for lo, hi in self.col_bins], 3)


def _out_hw(pool: nn.Module, in_hw: tuple[int, int]) -> tuple[int, int]:
    size = pool.output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return tuple(i if o is None else o for o, i in zip(size, in_hw))  # type: ignore[return-value]


@contextmanager
def _exportable_pools(model: nn.Module, example: torch.Tensor):
    """Temporarily replace the adaptive pools whose output size does not divide their input at this input size
    (the legacy exporter's "output size that are not factor of input size"); the model is restored afterwards."""
    pools = {n: m for n, m in model.named_modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))}
    shapes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: shapes.__setitem__(n, tuple(a[0].shape[-2:])))
             for n, m in pools.items()]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    swapped = []
    for name, pool in pools.items():
        in_hw = shapes.get(name)
        if in_hw is None:
            continue
        out_hw = _out_hw(pool, in_hw)
        if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
            continue
        fixed = (_FixedAdaptiveAvgPool2d if isinstance(pool, nn.AdaptiveAvgPool2d) else _FixedAdaptiveMaxPool2d)
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, fixed(in_hw, out_hw))
        swapped.append((parent, leaf, pool))
    try:
        yield
    finally:
        for parent, leaf, pool in swapped:
            setattr(parent, leaf, pool)


# ---------------------------------------------------------------------------------------------------------------
# The three formats
# ---------------------------------------------------------------------------------------------------------------


def _inputs(input_size: Sequence[int], batch_sizes: Sequence[int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(b, *input_size, generator=gen) for b in batch_sizes]


def _reference(model: nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [model(x).float().numpy() for x in inputs]


def _max_diff(ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    diffs = []
    for a, b in zip(ours, ref):
        if a.shape != b.shape:
            raise ExportError(f"exported model gives shape {a.shape}, PyTorch {b.shape}")
        diffs.append(float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0)
    return max(diffs)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


# protobuf refuses a message above 2 GiB, and an ONNX file built in memory is one message.
PROTOBUF_LIMIT = 2**31


def _onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool, card: ModelCard) -> bytes:
    import onnx

    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if weights >= PROTOBUF_LIMIT:  # refused at once, before the exporter spends a minute and 9 GB finding out
        raise ExportError(f"{card.model_name}'s {weights / 2**30:.1f} GiB of weights exceed protobuf's 2 GiB limit "
                          "on one ONNX file")

    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        with _exportable_pools(model, example), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, printed on every call
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, export_params=True, opset_version=opset,
                input_names=["input"], output_names=["logits"], dynamic_axes=axes, do_constant_folding=True,
            )
    except Exception as err:  # the exporter's own message is the useful part; its IR dump is not
        raise ExportError(f"{card.model_name} cannot be exported to ONNX: {_first_line(err)}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    _set_card(proto, card)
    proto.doc_string = f"cnnzoo {card.model_name}"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejects the exported {card.model_name}: {_first_line(err)}") from None
    return proto.SerializeToString()


def _set_card(proto, card: ModelCard) -> None:
    """The card as the ONNX model's one cnnzoo metadata entry (replacing any the graph already carries)."""
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, card.to_json()


def _export_onnx(model, out, card, opset, dynamic_batch, inputs, ref) -> float:
    data = _onnx_bytes(model, inputs[0][:1], opset, dynamic_batch, card)
    out.write_bytes(data)
    session = onnx_session(out)
    return _max_diff([session.run(None, {"input": x.numpy()})[0] for x in inputs], ref)


def _export_torchscript(model, out, card, method, inputs, ref, notes) -> float:
    with warnings.catch_warnings(record=True) as caught:
        # torch 2.14 marks torch.jit deprecated on every call; the format is still what libtorch loads
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            if method == "script":
                module = torch.jit.script(model)
            else:
                module = torch.jit.trace(model, inputs[0][:1], check_trace=False)
        except Exception as err:
            raise ExportError(f"{card.model_name} cannot be exported with torch.jit.{method}: "
                              f"{_first_line(err)}") from None
        torch.jit.save(module, str(out), _extra_files={f"{META_KEY}.json": card.to_json()})
        loaded = torch.jit.load(str(out), map_location="cpu").eval()
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning):
            notes.append(f"tracer warning (the trace may not generalise; try --method script): {w.message}")
    with torch.inference_mode():
        return _max_diff([loaded(x).float().numpy() for x in inputs], ref)


def _export_openvino(model, out, card, opset, dynamic_batch, inputs, ref) -> float:
    import openvino as ov

    data = _onnx_bytes(model, inputs[0][:1], opset, dynamic_batch, card)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(data)
        # The ONNX frontend, as predict reads an .onnx, not openvino.convert_model: that goes through the ovc tool,
        # whose telemetry forks this whole process from a background thread to report each conversion.
        ov_model = read_ov_model(ov, onnx_path)
    ov_model.set_rt_info(card.to_json(), META_KEY)
    # fp32 weights: the IR's default fp16 compression alone moves logits by ~1e-3.
    ov.save_model(ov_model, str(out), compress_to_fp16=False)
    core = openvino_core()
    # f32 execution for the check: on CPUs with AMX/AVX512-BF16 OpenVINO otherwise runs in bf16.
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": default_threads()}
    compiled = core.compile_model(core.read_model(str(out)), "CPU", config)
    return _max_diff([compiled(x.numpy())[0] for x in inputs], ref)


# ---------------------------------------------------------------------------------------------------------------
# int8 post-training static quantisation (ONNX Runtime)
# ---------------------------------------------------------------------------------------------------------------


def _qdq(fp32: Path, out: Path, card: ModelCard, samples) -> None:
    """ONNX Runtime's post-training static quantisation of an .onnx, calibrated (min-max) on ``samples`` (1 x C x H x
    W float32 arrays, preprocessed), with ``card`` as its metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference + graph optimisation first, as ONNX Runtime's quantisation guide recommends
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # QDQ with per-channel int8 weights and uint8 activations: the x86 (VNNI) kernels' preferred form
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    proto = onnx.load(str(out))
    _set_card(proto, card)
    onnx.save(proto, str(out))


def _nncf(float_model: Path, out: Path, card: ModelCard, samples) -> None:
    """NNCF's post-training quantisation of the OpenVINO model read from ``float_model`` (an .onnx or IR),
    calibrated on ``samples`` (1 x C x H x W float32 arrays, preprocessed), saved as an IR with ``card``."""
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)
    model = openvino_core().read_model(str(float_model))
    samples = list(samples)
    # its notes and progress bars (rich, on stdout) would fill the export's output
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    quantized.set_rt_info(card.to_json(), META_KEY)
    ov.save_model(quantized, str(out), compress_to_fp16=False)


# How each file kind is quantised (float file, out, card, 1 x C x H x W calibration samples).
QUANTISERS = {"onnx": _qdq, "openvino": _nncf}


def _quantize_int8(fp32: Path, out: Path, card: ModelCard, calib_data, val_data, calib_images: int,
                   max_drop: float, report: ExportReport) -> None:
    """The older --quantize int8: ONNX Runtime's QDQ of the checked float file, judged on the whole validation
    split by its top-1 drop alone, then written with the same int8 card and deploy record as --precision int8 (so
    predict and serve report int8)."""
    if calib_data is None:
        raise UserError("--quantize int8 needs calibration images: --data DIR (or --calib-data DIR)")
    # without a validation folder, every HELD_OUT-th training image is held out to judge it, as --precision does
    images = load_gate_images(calib_data, val_data, card, calib_images, val_images=None)
    _qdq(fp32, out, int8_card(card), images.calibration[:, None])
    gate, threads = Gate(min_agreement=0.0, max_drop=max_drop), default_threads()  # this spelling's gate: drop only
    openers = [(Candidate("onnxruntime", precision, "onnx"),
                partial(open_runtime, path, "onnxruntime", threads=threads, precision=precision))
               for path, precision in ((fp32, "fp32"), (out, "int8"))]
    trials = run_trials(openers, images, gate, (1, DEFAULT_BATCH))
    int8 = trials[1]
    report.top1_fp32, report.top1_int8 = int8.top1_fp32, int8.top1
    drop = int8.top1_fp32 - int8.top1
    report.notes.append(f"int8 calibrated on {len(images.calibration)} training images; validation top-1 on "
                        f"{len(images.labels)} images: fp32 {int8.top1_fp32:.2f}%, int8 {int8.top1:.2f}% "
                        f"(drop {drop:+.2f} points)")
    if not int8.passed:
        raise ExportError(f"int8 quantisation refused: validation top-1 drops {drop:.2f} points "
                          f"({int8.top1_fp32:.2f}% -> {int8.top1:.2f}%), more than --max-drop {max_drop:g}")
    report.deploy = Deployment.from_trials(int8, trials, gate, images.source, threads)
    _with_card(out, "onnx", report.deploy.on(int8_card(card)))


# ---------------------------------------------------------------------------------------------------------------
# Reduced precision: measured candidates, each gated, the fastest that passes written with its record
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Build:
    """What building a file needs: the network, its card, and the checked float export's settings."""

    model: nn.Module
    card: ModelCard
    opset: int
    dynamic_batch: bool
    inputs: list[torch.Tensor]
    ref: list[np.ndarray]
    atol: float
    method: str
    images: GateImages
    report: ExportReport


class _Files:
    """The files the candidates run, made on first use in one work folder: a float file per kind (checked against
    PyTorch like any export), and int8 files quantised from the first float file made (the reference's)."""

    def __init__(self, folder: Path, build: _Build):
        self.folder, self.build, self.made = folder, build, {}

    def path(self, kind: str, precision: str) -> Path:
        key = (kind, "int8" if precision == "int8" else "float")
        if key not in self.made:
            self.made[key] = self._make(*key)
        return self.made[key]

    def _make(self, kind: str, weights: str) -> Path:
        b = self.build
        out = self.folder / f"{kind}-{weights}{SUFFIXES[kind]}"
        if weights == "int8":
            source = next(iter(self.made.values()))  # the reference's float file
            try:
                QUANTISERS[kind](source, out, int8_card(b.card), b.images.calibration[:, None])
            except Exception as err:  # a graph the quantiser cannot handle: this candidate is refused, not the export
                raise UserError(f"int8 quantisation failed: {_first_line(err)}") from None
            return out
        if kind == "onnx":
            diff = _export_onnx(b.model, out, b.card, b.opset, b.dynamic_batch, b.inputs, b.ref)
        elif kind == "openvino":
            diff = _export_openvino(b.model, out, b.card, b.opset, b.dynamic_batch, b.inputs, b.ref)
        else:
            diff = _export_torchscript(b.model, out, b.card, b.method, b.inputs, b.ref, b.report.notes)
        if not diff <= b.atol:
            raise ExportError(f"exported {b.card.model_name} differs from PyTorch by {diff:.2e} (max abs diff, limit "
                              f"{b.atol:g}); not written")
        b.report.max_abs_diff = max(b.report.max_abs_diff, diff)
        return out


def _with_card(path: Path, kind: str, card: ModelCard) -> Path:
    """The file at ``path`` with ``card`` as its metadata: rewritten in place (ONNX, TorchScript) or saved beside
    it (an IR, whose weights OpenVINO may still map)."""
    if kind == "onnx":
        import onnx

        proto = onnx.load(str(path))
        _set_card(proto, card)
        onnx.save(proto, str(path))
        return path
    if kind == "openvino":
        import openvino as ov

        model = openvino_core().read_model(str(path))
        model.set_rt_info(card.to_json(), META_KEY)
        final = path.with_name(f"final-{path.name}")
        ov.save_model(model, str(final), compress_to_fp16=False)
        return final
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit "deprecated": still what libtorch loads
        module = torch.jit.load(str(path), map_location="cpu")
        torch.jit.save(module, str(path), _extra_files={f"{META_KEY}.json": card.to_json()})
    return path


def _deploy(build: _Build, kind: str | None, precision: str, gate: Gate, batch: int, out: Path) -> Path:
    """Measure the candidates of ``precision`` (cnnzoo.precision.candidates_for), keep the fastest that passes its
    gate, write its file at ``out`` (its suffix set by the file kind) with the deploy record in its card."""
    threads = default_threads()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.tmp-") as tmp:
        files = _Files(Path(tmp), build)

        def opener(c: Candidate):
            # the TorchScript file is the one just written here: trusted
            trust = {"trust_torchscript": True} if c.backend == "torch" else {}
            return lambda: open_runtime(files.path(c.kind, c.precision), c.backend, threads=threads,
                                        precision=c.precision, **trust)

        candidates = candidates_for(kind, precision)
        trials = run_trials([(c, opener(c)) for c in candidates], build.images, gate, (1, batch))
        try:
            chosen = choose(trials, precision)
        except UserError as err:
            raise ExportError(str(err)) from None
        record = Deployment.from_trials(chosen, trials, gate, build.images.source, threads)
        card = record.on(build.card if chosen.precision != "int8" else int8_card(build.card))
        written = _with_card(files.path(chosen.kind, chosen.precision), chosen.kind, card)
        final = out
        if kind is None and out.suffix != SUFFIXES[chosen.kind]:  # the winner's kind names the file
            final = out.with_suffix(SUFFIXES[chosen.kind]) if out.suffix in KINDS else out.with_name(
                out.name + SUFFIXES[chosen.kind])
        if chosen.kind == "openvino":
            os.replace(written.with_suffix(".bin"), final.with_suffix(".bin"))
        os.replace(written, final)
    build.report.deploy, build.report.path, build.report.format = record, final, f"{chosen.kind}-{chosen.precision}"
    return final


# ---------------------------------------------------------------------------------------------------------------


def export(
    source: str | Path | Checkpoint | nn.Module,
    out: str | Path | None = None,
    format: str | None = None,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_size: str | Sequence[int] | None = None,
    method: str = "trace",
    quantize: str | None = None,
    calib_data: str | Path | None = None,
    val_data: str | Path | None = None,
    calib_images: int = 100,
    max_drop: float = 1.0,
    atol: float = 1e-4,
    card: ModelCard | None = None,
    precision: str = "fp32",
    gate: Gate | None = None,
    batch: int = DEFAULT_BATCH,
    val_images: int | None = 500,
) -> ExportReport:
    """Export a checkpoint (path or loaded) or a network to ``out`` and check it against PyTorch.

    Args:
        source: a cnnzoo checkpoint path or Checkpoint, or an nn.Module (then ``input_size`` or ``card`` is needed).
        out: output file; default beside the checkpoint: ``.onnx``, ``.torchscript.pt`` or ``.xml`` (+ ``.bin``).
        format: "onnx", "torchscript" or "openvino"; None: "onnx", or for a reduced precision the kind of file the
            chosen configuration runs (``out``'s suffix, .onnx or .xml, restricts it).
        opset: ONNX opset (onnx and openvino).
        dynamic_batch: a dynamic batch axis (default) or a static batch of 1.
        input_size: export at another input size than the checkpoint's: "3x160x160", "160x160" or "160" (the
            model's channels), or a sequence; the card's resize keeps its ratio to the crop.
        method: "trace" or "script" (torchscript).
        quantize: "int8" for ONNX Runtime static quantisation (onnx only; the older spelling of precision="int8",
            gated by max_drop alone).
        calib_data, val_data: ImageFolder directories of training images (calibration) and the validation split;
            for ``precision``, without val_data every 5th training image is held out for the gate.
        calib_images: how many training images calibrate the activation ranges.
        max_drop: refuse the ``quantize`` export when validation top-1 drops by more than this many points.
        precision: "fp32" (the plain export), "bf16", "int8" or "auto": measure the configurations of that
            precision (all of them for auto) on this machine, gate each reduced precision on the validation
            images, and write the fastest that passes with its deploy record (cnnzoo.precision.Deployment) in the
            card; the report shows every alternative and its reason.
        gate: the accuracy each reduced precision must keep (default cnnzoo.precision.Gate(): agreement with fp32
            at least 99.5%, top-1 drop at most 0.5 points).
        batch: the service's batch size; speed is measured at batch 1 and this.
        val_images: at most this many validation images judge the gate.
        atol: the largest max abs difference from PyTorch's logits accepted.
        card: the model card to embed (default: the checkpoint's; for a bare network: classes 0..K-1 and the
            photo contract).

    Raises:
        ExportError: the network cannot be exported, or the exported model differs from PyTorch by more than atol.
    """
    start = time.perf_counter()
    precision = check_precision(precision)
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if method not in METHODS:
        raise UserError(f"unknown TorchScript method {method!r}; choose from {', '.join(METHODS)}")
    if quantize not in (None, "int8"):
        raise UserError(f"unknown quantisation {quantize!r}; only int8 is supported")
    if quantize and (format or "onnx") != "onnx":
        raise UserError("--quantize int8 is available for --format onnx only")
    if quantize and precision != "fp32":
        raise UserError("--quantize int8 is the older spelling of --precision int8; give one of them")
    if precision != "fp32" and calib_data is None:
        raise UserError(f"--precision {precision} needs training images to calibrate and check it: --data DIR")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    _check_numbers(opset, calib_images, max_drop, atol)
    gate = gate or Gate()
    kind = format if format or precision == "fp32" else KINDS.get(Path(out).suffix if out else "")
    format = format or kind or "onnx"  # the file kind a default name and the checks below assume
    model, card, stem = _resolve(source, input_size, card)
    size = card.input.size
    if out is None:
        base = Path.cwd()
        if isinstance(source, (str, os.PathLike)):  # beside the checkpoint, or inside the run folder given
            base = Path(source) if Path(source).is_dir() else Path(source).parent
        tag = "-int8" if quantize else "" if precision in ("fp32", "auto") else f"-{precision}"
        out = base / (stem + tag + SUFFIXES[format])
    out = _check_out(Path(out), format, source, final=kind is not None)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch_sizes = (1, 2) if dynamic_batch else (1,)
    inputs = _inputs(size, batch_sizes)
    try:
        ref = _reference(model, inputs)
    except RuntimeError as err:
        raise ExportError(f"{card.model_name} does not run at input {size}: {_first_line(err)}") from None
    report = ExportReport(out, format + ("-int8" if quantize else ""), size, 0.0, batch_sizes, 0.0)
    if precision != "fp32":
        images = load_gate_images(calib_data, val_data, card, calib_images, val_images)
        build = _Build(model, card, opset, dynamic_batch, inputs, ref, atol, method, images, report)
        _deploy(build, kind, precision, gate, batch, out)
        report.seconds = time.perf_counter() - start
        return report
    # Written beside the target and renamed only once checked; OpenVINO's .bin travels with its .xml.
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        if format == "onnx":
            report.max_abs_diff = _export_onnx(model, tmp, card, opset, dynamic_batch, inputs, ref)
        elif format == "torchscript":
            report.max_abs_diff = _export_torchscript(model, tmp, card, method, inputs, ref, report.notes)
        else:
            report.max_abs_diff = _export_openvino(model, tmp, card, opset, dynamic_batch, inputs, ref)
        if not report.max_abs_diff <= atol:
            raise ExportError(f"exported {card.model_name} differs from PyTorch by {report.max_abs_diff:.2e} "
                              f"(max abs diff, limit {atol:g}); not written")
        if quantize:
            qtmp = out.with_name(f".{out.stem}.tmp-int8{out.suffix}")
            try:
                _quantize_int8(tmp, qtmp, card, calib_data, val_data, calib_images, max_drop, report)
                os.replace(qtmp, out)
            finally:
                qtmp.unlink(missing_ok=True)
        elif format == "openvino":
            os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
            os.replace(tmp, out)
        else:
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    return report


# The ONNX opsets torch's legacy exporter writes (torch 2.14) and ONNX Runtime runs.
OPSETS = range(7, 21)


def _check_numbers(opset: int, calib_images: int, max_drop: float, atol: float) -> None:
    """One line naming the option and its range, before anything is built or written."""
    checks = [
        (opset in OPSETS, f"--opset must lie in {OPSETS.start}..{OPSETS.stop - 1}, got {opset}"),
        (isinstance(calib_images, int) and calib_images >= 1, f"--calib-images must be at least 1, got {calib_images}"),
        (0 <= max_drop <= 100, f"--max-drop must lie in 0..100 points, got {max_drop}"),  # also refuses nan
        (0 < atol < float("inf"), f"atol must be positive and finite, got {atol}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _check_out(out: Path, format: str, source, final: bool) -> Path:
    """Refuse an output that would overwrite the export's own input or, when ``final`` (the file is written under
    that very name), whose suffix is not one by which open_runtime (predict, serve) knows the format."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the file to write")
    # The file the checkpoint was read from (a run folder's last.pt); compared resolved, whether or not --out
    # exists yet (runs/x/new/../best.pt is best.pt once the missing folder is made), and with the IR's .bin too.
    src = source.path if isinstance(source, Checkpoint) else source
    if isinstance(src, (str, os.PathLike)) and Path(src).exists():
        src = Path(src) / "last.pt" if Path(src).is_dir() else Path(src)
        written = [out, out.with_suffix(".bin")] if format == "openvino" else [out]
        if any(path.resolve() == src.resolve() for path in written):
            raise UserError(f"--out {out} is the checkpoint being exported; choose another file")
    wanted = OUT_SUFFIXES[format]
    if final and out.suffix not in wanted:
        raise UserError(f"--out {out} does not end in {' or '.join(wanted)}: predict and serve know a {format} file "
                        "by that suffix" + (" (an OpenVINO IR is NAME.xml + NAME.bin)" if format == "openvino" else ""))
    return out
