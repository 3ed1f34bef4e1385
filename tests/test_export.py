"""Export: ONNX (parity with PyTorch, metadata, dynamic batch), TorchScript trace/script, OpenVINO IR, int8
quantisation with its accuracy gate, adaptive-pool heads at other sizes, and the registry-wide sweeps."""

from __future__ import annotations

import atexit
import copy
import functools
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cnnzoo.artifact import InputSpec, ModelCard
from cnnzoo.checkpoint import save_checkpoint
from cnnzoo.cli import main
from cnnzoo.exporting import ExportError, export
from cnnzoo.errors import InputSizeError, UserError
from cnnzoo.registry import create_model, list_models
from cnnzoo.runtime import META_KEY, open_runtime
from modelsizes import heavy, smallest_input
from modelsizes import sweep as slow_if_heavy

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
# CNNZOO_SLOW=1 adds the slow cases: vgg11's adaptive-pool head at 224 with its full classifier.
FULL_SWEEP = os.environ.get("CNNZOO_SLOW") == "1"


# The digits' contract, as `cnnzoo train --data digits` writes it: the 8x8 images stretched to 32x32, grey 0.5/0.5.
DIGITS_SPEC = InputSpec(1, 32, 32, (0.5,), (0.5,), "stretch")
DIGITS_CARD = ModelCard("lenet5_relu", {"num_classes": 10}, tuple(str(c) for c in range(10)), DIGITS_SPEC)


# ------------------------------------------------------------------------------------------------------------
# A small trained network (LeNet-5 on scikit-learn's digits) as a real checkpoint with an ImageFolder beside it:
# shared by test_serve.py and test_browser.py.
# ------------------------------------------------------------------------------------------------------------


def make_digits_run(root: Path, epochs: int = 3) -> dict:
    """Train lenet5_relu on the 8x8 digits (as 32x32 grey PNGs) for a few seconds; returns the paths."""
    from sklearn.datasets import load_digits

    from cnnzoo.images import open_image, preprocess

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.images))
    split = {"train": order[:1200], "val": order[1200:1500]}
    arrays, labels = {}, {}
    for part, idx in split.items():
        xs = []
        for i in idx:
            path = root / part / str(digits.target[i]) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L").save(path)
            xs.append(preprocess(open_image(path, channels=1), DIGITS_SPEC))
        arrays[part], labels[part] = torch.from_numpy(np.stack(xs)), torch.from_numpy(digits.target[idx])
    torch.manual_seed(0)
    model = create_model("lenet5_relu", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(epochs):
        for start in range(0, len(arrays["train"]), 64):
            x, y = arrays["train"][start : start + 64], labels["train"][start : start + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        acc = float((model(arrays["val"]).argmax(1) == labels["val"]).float().mean())
    ckpt = root / "lenet5_relu.pt"
    save_checkpoint(ckpt, DIGITS_CARD, model.state_dict(), epoch=epochs, step=0, best_metric=acc,
                    metrics={"val_top1": acc}, config={})
    return {"root": root, "ckpt": ckpt, "train": root / "train", "val": root / "val", "val_top1": acc}


@functools.cache
def digits_run() -> dict:
    """One trained run per test process, shared by test_export, test_serve and test_browser."""
    root = Path(tempfile.mkdtemp(prefix="cnnzoo-digits-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_digits_run(root)


@pytest.fixture(scope="module")
def digits() -> dict:
    return digits_run()


def test_digits_network_learned(digits):
    assert digits["val_top1"] > 0.9  # otherwise the accuracy comparisons below would say little


def test_onnx_export_parity_metadata_dynamic_batch(digits, tmp_path):
    report = export(digits["ckpt"], tmp_path / "m.onnx")
    assert report.path.is_file() and report.batch_sizes == (1, 2)
    assert report.max_abs_diff <= 1e-4
    proto = onnx.load(str(report.path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[META_KEY])
    assert meta == DIGITS_CARD.to_dict() and ModelCard.from_dict(meta) == DIGITS_CARD
    assert meta["input"] == {"channels": 1, "height": 32, "width": 32, "mean": [0.5], "std": [0.5],
                             "resize": "stretch", "resize_size": 32, "interpolation": "bilinear"}
    # the file alone predicts: the same classes as the checkpoint on PyTorch, at a third batch size
    images = [Image.open(p).copy() for p in sorted((digits["val"] / "3").glob("*.png"))[:3]]
    onnx_rt, torch_rt = open_runtime(report.path, "onnxruntime"), open_runtime(digits["ckpt"], "torch")
    x = np.stack([torch_rt.preprocess(im) for im in images])
    np.testing.assert_allclose(onnx_rt.logits(x), torch_rt.logits(x), atol=1e-4)
    assert [p[0][0] for p in onnx_rt.predict(images)] == [p[0][0] for p in torch_rt.predict(images)]


def test_static_batch(digits, tmp_path):
    report = export(digits["ckpt"], tmp_path / "s.onnx", dynamic_batch=False)
    assert report.batch_sizes == (1,)
    dims = onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 32, 32]
    runtime = open_runtime(report.path, "onnxruntime")
    assert runtime.logits(np.zeros((3, 1, 32, 32), np.float32)).shape == (3, 10)  # the runtime feeds it in chunks


def test_too_small_input_is_a_clear_error(digits, tmp_path):
    with pytest.raises(InputSizeError, match=r"lenet5_relu cannot take a 1x16x16 input"):
        export(digits["ckpt"], tmp_path / "s.onnx", input_size="1x16x16")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method", ["trace", "script"])
def test_torchscript(digits, tmp_path, method):
    report = export(digits["ckpt"], tmp_path / f"m-{method}.torchscript.pt", "torchscript", method=method)
    assert report.max_abs_diff <= 1e-4
    extra = {f"{META_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(report.path), _extra_files=extra)
    assert ModelCard.from_json(extra[f"{META_KEY}.json"], "torchscript") == DIGITS_CARD
    runtime = open_runtime(report.path, trust_torchscript=True)  # the file is a program: opened only when asked
    assert runtime.backend == "torch" and runtime.card == DIGITS_CARD


def test_openvino_ir(digits, tmp_path):
    report = export(digits["ckpt"], tmp_path / "m.xml", "openvino")
    assert report.max_abs_diff <= 1e-4
    assert report.path.with_suffix(".bin").is_file()
    runtime = open_runtime(report.path)
    assert runtime.backend == "openvino" and runtime.classes == [str(c) for c in range(10)]
    assert runtime.card == DIGITS_CARD and runtime.spec == DIGITS_SPEC
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_openvino_export_does_not_go_through_the_conversion_tool(digits, tmp_path, monkeypatch):
    """openvino.convert_model is OpenVINO's ovc tool, whose telemetry reports each conversion from a background
    thread that forks the whole process (a server's, a test worker's); the ONNX frontend converts the same graph."""
    import openvino

    def refused(*args, **kwargs):
        raise AssertionError("openvino.convert_model was called")

    monkeypatch.setattr(openvino, "convert_model", refused)
    assert export(digits["ckpt"], tmp_path / "m.xml", "openvino").max_abs_diff <= 1e-4


def test_int8_quantisation_gate(digits, tmp_path, monkeypatch):
    from cnnzoo.precision import Deployment
    from cnnzoo.runtime import OnnxRuntime

    out = tmp_path / "q.onnx"
    report = export(digits["ckpt"], out, quantize="int8", calib_data=digits["train"], val_data=digits["val"],
                    calib_images=64, max_drop=1.0)
    assert out.is_file() and report.top1_int8 is not None
    assert report.top1_fp32 - report.top1_int8 <= 1.0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the older spelling writes what --precision int8 writes: the int8 card and the deploy record, so predict and
    # serve report int8 for the file, and the network's metadata is kept
    runtime = open_runtime(out)
    assert runtime.backend == "onnxruntime" and runtime.precision == "int8"
    assert runtime.card.extra["weights"] == "int8"
    record = Deployment.of(runtime.card)
    assert (record.backend, record.precision) == ("onnxruntime", "int8")
    assert record.top1 == report.top1_int8 and record.top1_fp32 == report.top1_fp32
    assert set(record.images_per_s) == {1, 16} and record.gate.max_drop == 1.0
    assert [t.name for t in record.alternatives] == ["onnxruntime fp32", "onnxruntime int8"]
    assert replace(runtime.card, extra={}) == DIGITS_CARD
    # an int8 model that predicts the next class (top-1 falls to about 10%): refused, and no file written
    run = OnnxRuntime._run

    def int8_predicts_the_next_class(self, batch):
        logits = run(self, batch)
        return np.roll(logits, 1, axis=1) if self.precision == "int8" else logits

    monkeypatch.setattr(OnnxRuntime, "_run", int8_predicts_the_next_class)
    refused = tmp_path / "refused.onnx"
    with pytest.raises(ExportError, match=r"int8 quantisation refused: validation top-1 drops .* --max-drop 1$"):
        export(digits["ckpt"], refused, quantize="int8", calib_data=digits["train"], val_data=digits["val"],
               calib_images=16, max_drop=1.0)
    assert not refused.exists() and not list(tmp_path.glob(".*tmp*"))
    # a gate no export could pass (top-1 would have to rise) is a mistake in the flag, refused before any work
    with pytest.raises(UserError, match=r"--max-drop must lie in 0\.\.100 points, got -100"):
        export(digits["ckpt"], refused, quantize="int8", calib_data=digits["train"], val_data=digits["val"],
               calib_images=16, max_drop=-100)
    assert not refused.exists()


def test_quantize_without_a_validation_folder_holds_out_training_images(digits, tmp_path):
    report = export(digits["ckpt"], tmp_path / "q.onnx", quantize="int8", calib_data=digits["train"],
                    calib_images=16, max_drop=100)
    assert report.deploy.precision == "int8" and "held out" in report.deploy.images


def test_clear_errors(digits, tmp_path):
    with pytest.raises(UserError, match="unknown export format"):
        export(digits["ckpt"], tmp_path / "x", "tflite")
    with pytest.raises(UserError, match="onnx only"):
        export(digits["ckpt"], tmp_path / "x", "openvino", quantize="int8")
    with pytest.raises(UserError, match="needs calibration images"):
        export(digits["ckpt"], tmp_path / "x.onnx", quantize="int8")
    with pytest.raises(UserError, match="input size must look like 3x224x224, 224x224 or 224, not 'big'"):
        export(digits["ckpt"], tmp_path / "x.onnx", input_size="big")
    with pytest.raises(UserError, match="CxHxW, HxW or H with positive sizes"):
        export(digits["ckpt"], tmp_path / "x.onnx", input_size="1x0x32")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------------------
# AlexNet / VGG: adaptive average pooling heads whose output size does not divide the feature map
# ------------------------------------------------------------------------------------------------------------


def small_head(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the 4096-wide fully connected layers after the pool with 64-wide ones (same input width): the
    features, the adaptive pool and the flatten, which are what the exporter failed on, stay as they are, while
    the export no longer serialises 200-500 MB of classifier weights."""
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(model.classifier):
        if isinstance(m, torch.nn.Linear):
            width_in = m.in_features if m is linears[0] else 64
            model.classifier[i] = torch.nn.Linear(width_in, 64 if m is not linears[-1] else m.out_features)
    return model.eval()


ADAPTIVE = [("alexnet", 224), ("alexnet", 96), ("vgg11", 32), ("vgg11", 64)] + ([("vgg11", 224)] if FULL_SWEEP else [])


@pytest.mark.parametrize("name, size", ADAPTIVE)
def test_adaptive_pool_heads(tmp_path, name, size):
    torch.manual_seed(0)
    model = small_head(create_model(name, num_classes=10))
    report = export(model, tmp_path / f"{name}.onnx", input_size=(3, size, size))
    assert report.max_abs_diff <= 1e-4
    # the model itself is left as it was (the exact fixed-size pool is swapped in only for the export)
    assert any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())


# ------------------------------------------------------------------------------------------------------------
# The registry: every network through ONNX Runtime, and through torch.jit.script
# ------------------------------------------------------------------------------------------------------------


def documented(section: str) -> dict[str, str]:
    """`- `name`: reason` lines under a '## section' heading of docs/export.md."""
    text = DOCS.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/export.md has no '## {section}' section"
    return dict(re.findall(r"^- `([\w.]+)`: (.+)$", match.group(1), re.M))


CANNOT_EXPORT = documented("Networks that cannot be exported to ONNX")
CANNOT_SCRIPT = documented("Networks that cannot be scripted")


def sweep(excluded: dict[str, str]) -> list[str]:
    """Every registered network, the documented failures included (they must fail)."""
    return sorted(set(list_models()) | set(excluded))


def narrow_big_classifier(model: torch.nn.Module) -> torch.nn.Module:
    """AlexNet, ZFNet and VGG carry 100M+ parameters of 4096-wide fully connected layers; serialising them is all
    their export would cost, so the sweep narrows them (small_head). The graph the exporter sees is the same."""
    head = getattr(model, "classifier", None)
    if isinstance(head, torch.nn.Sequential) and sum(p.numel() for p in head.parameters()) > 10_000_000:
        return small_head(model)
    return model


def parity_tolerance(model: torch.nn.Module, size: tuple[int, int, int]) -> float:
    """The export command's 1e-4, widened where PyTorch's own float32 result is less exact than that.

    Randomly initialised deep networks are numerically ill-conditioned in ways trained ones are not: ResNet-110 or
    Inception v3 give logits of 1e2..1e4 (1e-4 is then below float32 rounding), and ResNet-1202 / pre-activation
    ResNet-1001 overflow to NaN with the initial BatchNorm statistics (mean 0, variance 1; those are then set from
    one random batch, as training would) and even after that differ from float64 PyTorch by ~2e-3. The tolerance
    is therefore max(1e-4 x max(1, |logits|), 2 x |PyTorch float32 - PyTorch float64|): the export must be as
    close to PyTorch as PyTorch's float32 is to exact arithmetic."""
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(x)
    if not torch.isfinite(logits).all():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: exactly this batch's statistics
        with torch.no_grad():
            model.train()(torch.randn(8, *size, generator=torch.Generator().manual_seed(1)))
        with torch.inference_mode():
            logits = model.eval()(x)
    assert torch.isfinite(logits).all(), "PyTorch itself gives non-finite logits"
    exact = copy.deepcopy(model).double()
    with torch.inference_mode():
        err32 = float((logits.double() - exact(x.double())).abs().max())
    return max(1e-4 * max(1.0, float(logits.abs().max())), 2 * err32)


def test_documented_failures_are_registered_networks():
    names = set(list_models())
    for listed in (CANNOT_EXPORT, CANNOT_SCRIPT):
        assert set(listed) <= names, f"docs/export.md names unregistered networks: {sorted(set(listed) - names)}"


# Serialising the weights is what a big network's export costs (convnext_large: 46 s to write and reload 800 MB),
# and its graph is made of the blocks of a smaller sibling that the default sweep exports (convnext_tiny,
# efficientnet_v2_s, regnet_y_400mf, ...). So the default suite exports every network up to this many parameters
# (after narrowing 4096-wide classifiers) and the smallest of each family, and CNNZOO_SLOW=1 exports every network.
SWEEP_PARAMS = 40_000_000


@functools.cache
def _exported_params(name: str) -> int:
    with torch.device("meta"):
        model = narrow_big_classifier(create_model(name, num_classes=10))
    return sum(p.numel() for p in model.parameters())


@functools.cache
def _default_sweep() -> frozenset[str]:
    from cnnzoo.registry import model_info

    smallest = {}
    for name in list_models():
        family = model_info(name).family
        if family not in smallest or _exported_params(name) < _exported_params(smallest[family]):
            smallest[family] = name
    return frozenset(n for n in list_models() if n in smallest.values() or
                     (_exported_params(n) <= SWEEP_PARAMS and not heavy(n)))


def onnx_sweep() -> list:
    slow = pytest.mark.skipif(not FULL_SWEEP, reason="above SWEEP_PARAMS or heavy: exported with CNNZOO_SLOW=1")
    return [pytest.param(n, marks=slow) if n not in CANNOT_EXPORT and n not in _default_sweep() else n
            for n in sweep(CANNOT_EXPORT)]


def test_every_family_is_exported_by_the_default_sweep():
    """No family is left to CNNZOO_SLOW=1 alone: each has a member the default sweep exports."""
    from cnnzoo.registry import model_info

    families = {model_info(n).family for n in list_models()}
    assert families == {model_info(n).family for n in _default_sweep()}


@pytest.mark.parametrize("name", onnx_sweep())
def test_registry_onnx_parity(name, tmp_path):
    torch.manual_seed(0)
    model = narrow_big_classifier(create_model(name, num_classes=10)).eval()
    size = smallest_input(name, train=False)
    if name in CANNOT_EXPORT:
        with pytest.raises(ExportError):
            export(model, tmp_path / "m.onnx", input_size=size)
    else:
        export(model, tmp_path / "m.onnx", input_size=size, atol=parity_tolerance(model, size))


@pytest.mark.parametrize("name", slow_if_heavy(sweep(CANNOT_SCRIPT)))
def test_registry_torchscript_script(name):
    with torch.device("meta"):  # scripting compiles the code; no weights are needed
        model = create_model(name, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if name in CANNOT_SCRIPT:
            with pytest.raises(Exception):
                torch.jit.script(model)
        else:
            torch.jit.script(model)


def test_cli_export(digits, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(digits["ckpt"]), "--out", str(out), "--opset", "17"]) == 0
    assert out.is_file() and "max abs diff vs PyTorch" in capsys.readouterr().out
    assert main(["export", str(digits["ckpt"]), "--out", str(tmp_path / "x.onnx"), "--input-size", "1x8x8"]) == 2
    assert "lenet5_relu cannot take a 1x8x8 input" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def one_line_error(capsys, *args: str) -> str:
    """`cnnzoo export ARGS` exits 2 with a one-line message on stderr and nothing on stdout; the message."""
    assert main(["export", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnzoo export: error: "), captured.err
    assert not captured.out
    return lines[0]


def test_cli_refuses_bad_out_and_numbers_with_one_line(digits, tmp_path, capsys):
    ckpt = tmp_path / "own.pt"
    shutil.copy(digits["ckpt"], ckpt)  # a copy: a refusal that failed would overwrite it
    original = ckpt.read_bytes()
    written = lambda: sorted(p.name for p in tmp_path.iterdir() if p != ckpt)  # noqa: E731
    # an OpenVINO IR is NAME.xml + NAME.bin: any other --out is refused, not silently renamed
    for out in ("m.onnx", "m", "m.bin"):
        assert "does not end in .xml" in one_line_error(capsys, str(ckpt), "--format", "openvino", "--out",
                                                          str(tmp_path / out))
    # a suffix by which predict and serve would not know the file (they refused it after the export ran)
    for fmt, out in (("onnx", "m.txt"), ("onnx", "m"), ("torchscript", "m.onnx")):
        assert "does not end in" in one_line_error(capsys, str(ckpt), "--format", fmt, "--out", str(tmp_path / out))
    # the checkpoint itself, however it is spelled
    for out in (ckpt, tmp_path / "sub" / ".." / "own.pt"):
        assert "is the checkpoint being exported" in one_line_error(capsys, str(ckpt), "--out", str(out))
    assert "is the checkpoint being exported" in one_line_error(capsys, str(ckpt), "--out", str(ckpt), "--format",
                                                                "torchscript")
    run = tmp_path / "run"  # a run folder exports its last.pt
    run.mkdir()
    shutil.copy(ckpt, run / "last.pt")
    assert "is the checkpoint being exported" in one_line_error(capsys, str(run), "--out", str(run / "last.pt"))
    assert (run / "last.pt").read_bytes() == original and sorted(p.name for p in run.iterdir()) == ["last.pt"]
    shutil.rmtree(run)
    for flag, value, message in [("--opset", "5", "--opset must lie in 7..20, got 5"),
                                 ("--opset", "99", "--opset must lie in 7..20, got 99"),
                                 ("--max-drop", "nan", "--max-drop must lie in 0..100 points, got nan"),
                                 ("--max-drop", "-1", "--max-drop must lie in 0..100 points, got -1.0"),
                                 ("--calib-images", "0", "--calib-images must be at least 1, got 0")]:
        line = one_line_error(capsys, str(ckpt), "--out", str(tmp_path / "n.onnx"), flag, value)
        assert line.endswith(message), line
    assert ckpt.read_bytes() == original and written() == [], written()


def test_cli_input_size_hxw_keeps_the_channels_and_huge_sizes_are_refused_at_once(digits, tmp_path, capsys,
                                                                                   monkeypatch):
    import cnnzoo.exporting as exporting

    for size in ("32x32", "32"):  # H x W and H: the checkpoint's own channel count (1)
        out = tmp_path / f"hw-{size}.onnx"
        assert main(["export", str(digits["ckpt"]), "--out", str(out), "--input-size", size]) == 0, \
            capsys.readouterr().err
        assert "(input 1x32x32)" in capsys.readouterr().out
        dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [1, 32, 32]
        assert open_runtime(out, "onnxruntime").card == DIGITS_CARD
    # a 30000 x 30000 input (3.6 GB of floats per image) is refused on the meta device: no tensor is ever made
    def no_arithmetic(*args, **kwargs):
        raise AssertionError("export made real tensors for an input size it should refuse first")

    monkeypatch.setattr(exporting, "_inputs", no_arithmetic)
    monkeypatch.setattr(exporting, "build_model", no_arithmetic)
    with pytest.raises(SystemExit) as exit_info:  # refused by the one input-size parser, as a usage mistake
        main(["export", str(digits["ckpt"]), "--out", str(tmp_path / "huge.onnx"), "--input-size", "1x30000x30000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "sides above 4096 pixels" in err[0]
    line = one_line_error(capsys, str(digits["ckpt"]), "--out", str(tmp_path / "huge.onnx"), "--input-size",
                          "1x4000x4000")
    assert "lenet5_relu cannot take a 1x4000x4000 input" in line
    assert "takes 1-channel input, not 3" in one_line_error(  # CxHxW: channels as given
        capsys, str(digits["ckpt"]), "--out", str(tmp_path / "rgb.onnx"), "--input-size", "3x32x32")
    assert not (tmp_path / "huge.onnx").exists() and not (tmp_path / "rgb.onnx").exists()
