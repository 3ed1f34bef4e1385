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
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cnnzoo.checkpoint import save_checkpoint
from cnnzoo.exporting import ExportError, export
from cnnzoo.errors import UserError
from cnnzoo.registry import create_model, list_models
from cnnzoo.runtime import META_KEY, open_runtime
from modelsizes import smallest_input

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
# CNNZOO_SLOW=1 adds the slow cases: vgg11's adaptive-pool head at 224 with its full classifier.
FULL_SWEEP = os.environ.get("CNNZOO_SLOW") == "1"


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
    meta = {"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "resize_size": 32}
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
            xs.append(preprocess(open_image(path, channels=1), meta["input_size"], meta["mean"], meta["std"], 32))
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
    save_checkpoint(ckpt, {
        "model_name": "lenet5_relu", "model_kwargs": {"num_classes": 10}, "state_dict": model.state_dict(),
        "classes": [str(c) for c in range(10)], **meta, "appended_fc": None, "epoch": epochs, "step": 0,
        "best_metric": acc, "metrics": {"val_top1": acc}, "config": {},
    })
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
    assert meta == {"model_name": "lenet5_relu", "classes": [str(c) for c in range(10)], "input_size": [1, 32, 32],
                    "mean": [0.5], "std": [0.5], "resize_size": 32}
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
    with pytest.raises(ExportError, match=r"lenet5_relu does not run at input \(1, 16, 16\)"):
        export(digits["ckpt"], tmp_path / "s.onnx", input_size="1x16x16")


@pytest.mark.parametrize("method", ["trace", "script"])
def test_torchscript(digits, tmp_path, method):
    report = export(digits["ckpt"], tmp_path / f"m-{method}.torchscript.pt", "torchscript", method=method)
    assert report.max_abs_diff <= 1e-4
    extra = {f"{META_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(report.path), _extra_files=extra)
    assert json.loads(extra[f"{META_KEY}.json"])["model_name"] == "lenet5_relu"
    assert open_runtime(report.path).backend == "torch"


def test_openvino_ir(digits, tmp_path):
    report = export(digits["ckpt"], tmp_path / "m.xml", "openvino")
    assert report.max_abs_diff <= 1e-4
    assert report.path.with_suffix(".bin").is_file()
    runtime = open_runtime(report.path)
    assert runtime.backend == "openvino" and runtime.classes == [str(c) for c in range(10)]
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_int8_quantisation_gate(digits, tmp_path):
    out = tmp_path / "q.onnx"
    report = export(digits["ckpt"], out, quantize="int8", calib_data=digits["train"], val_data=digits["val"],
                    calib_images=64, max_drop=1.0)
    assert out.is_file() and report.top1_int8 is not None
    assert report.top1_fp32 - report.top1_int8 <= 1.0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert open_runtime(out, "onnxruntime").classes == [str(c) for c in range(10)]  # metadata kept
    # a gate nothing can pass (top-1 would have to rise by 100 points): refused, and no file written
    refused = tmp_path / "refused.onnx"
    with pytest.raises(ExportError, match=r"int8 quantisation refused: validation top-1 drops .* --max-drop"):
        export(digits["ckpt"], refused, quantize="int8", calib_data=digits["train"], val_data=digits["val"],
               calib_images=16, max_drop=-100)
    assert not refused.exists()


def test_clear_errors(digits, tmp_path):
    with pytest.raises(UserError, match="unknown export format"):
        export(digits["ckpt"], tmp_path / "x", "tflite")
    with pytest.raises(UserError, match="onnx only"):
        export(digits["ckpt"], tmp_path / "x", "openvino", quantize="int8")
    with pytest.raises(UserError, match="needs calibration images"):
        export(digits["ckpt"], tmp_path / "x.onnx", quantize="int8")
    with pytest.raises(UserError, match="CxHxW"):
        export(digits["ckpt"], tmp_path / "x.onnx", input_size="big")


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


@pytest.mark.parametrize("name", sweep(CANNOT_EXPORT))
def test_registry_onnx_parity(name, tmp_path):
    torch.manual_seed(0)
    model = narrow_big_classifier(create_model(name, num_classes=10)).eval()
    size = smallest_input(name, train=False)
    if name in CANNOT_EXPORT:
        with pytest.raises(ExportError):
            export(model, tmp_path / "m.onnx", input_size=size)
    else:
        export(model, tmp_path / "m.onnx", input_size=size, atol=parity_tolerance(model, size))


@pytest.mark.parametrize("name", sweep(CANNOT_SCRIPT))
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
    from cnnzoo.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", str(digits["ckpt"]), "--out", str(out), "--opset", "17"]) == 0
    assert out.is_file() and "max abs diff vs PyTorch" in capsys.readouterr().out
    assert main(["export", str(digits["ckpt"]), "--out", str(tmp_path / "x.onnx"), "--input-size", "1x8x8"]) == 2
    assert "does not run at input (1, 8, 8)" in capsys.readouterr().err
