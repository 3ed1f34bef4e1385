"""Reduced precision chosen by measured accuracy (cnnzoo.precision): the gate refuses a configuration that breaks
agreement, export records its choice and predict/serve reuse it without measuring, every precision path predicts
the digits' classes, bf16 follows what this CPU can do, and the service's batched answers equal unbatched ones.

All on the LeNet-5 trained on scikit-learn's digits (PNG files in an ImageFolder) shared with test_export."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnzoo.exporting as exporting
import cnnzoo.precision as precision
from cnnzoo.checkpoint import build_model, load_checkpoint
from cnnzoo.cli import main
from cnnzoo.errors import UserError
from cnnzoo.exporting import ExportError, export
from cnnzoo.images import open_image, preprocess
from cnnzoo.precision import Candidate, Deployment, Gate, load_gate_images, run_trials
from cnnzoo.runtime import open_runtime, softmax
from test_export import DIGITS_SPEC, digits_run


def cpu_flags() -> set[str]:
    """The CPU's feature flags, read from /proc/cpuinfo: the oracle for what bf16 should do here."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


HAS_BF16 = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    monkeypatch.setattr(precision, "SPEED_BUDGET_S", 0.02)  # speed is the benchmark's business, not the tests'


@pytest.fixture(scope="module")
def digits() -> dict:
    run = digits_run()
    net = build_model(load_checkpoint(run["ckpt"]))
    paths = sorted(Path(run["val"]).rglob("*.png"))
    labels = np.array([int(p.parent.name) for p in paths])
    x = np.stack([preprocess(open_image(p, channels=1), DIGITS_SPEC) for p in paths])
    with torch.inference_mode():
        torch_top1 = net(torch.from_numpy(x)).argmax(1).numpy()
    return {**run, "paths": paths, "labels": labels, "x": x, "torch_top1": torch_top1}


@pytest.fixture(scope="module")
def fp32_onnx(digits, tmp_path_factory) -> Path:
    return export(digits["ckpt"], tmp_path_factory.mktemp("fp32") / "digits.onnx").path


def data(digits) -> dict:
    return {"calib_data": digits["train"], "val_data": digits["val"]}


# ------------------------------------------------------------------------------------------------------------
# The gate
# ------------------------------------------------------------------------------------------------------------


def test_gate_judges_agreement_and_drop():
    labels = np.arange(200) % 10
    reference = np.eye(10, dtype=np.float32)[labels]  # fp32 right on every image
    one_off = reference.copy()
    one_off[0] = np.roll(one_off[0], 1)  # 1 of 200 images changes class: 99.5% agreement, 0.5 points lost
    verdict = Gate().judge(reference, one_off, labels)
    assert (verdict.agreement, verdict.top1_fp32, verdict.top1, verdict.drop) == (99.5, 100.0, 99.5, 0.5)
    assert verdict.reason is None  # both limits are inclusive
    two_off = one_off.copy()
    two_off[1] = np.roll(two_off[1], 1)
    verdict = Gate().judge(reference, two_off, labels)
    assert verdict.agreement == 99.0 and verdict.drop == 1.0
    assert verdict.reason == ("top-1 agrees with fp32 on 99.00% of 200 images (limit 99.5%); top-1 drops 1.00 points "
                              "(100.00% -> 99.00%; limit 0.5)")
    assert Gate(min_agreement=98, max_drop=1).judge(reference, two_off, labels).reason is None
    with pytest.raises(UserError, match="--min-agreement must lie in 0..100"):
        Gate(min_agreement=101)
    with pytest.raises(UserError, match="--max-drop must lie in 0..100"):
        Gate(max_drop=float("nan"))


class Corrupted:
    """A runtime whose top-1 class is wrong on every 20th image: it breaks agreement (95%)."""

    def __init__(self, runtime):
        self.runtime, self.input_size, self.seen = runtime, runtime.input_size, 0

    def logits(self, batch):
        out = self.runtime.logits(batch)
        rows = [i for i in range(len(out)) if (self.seen + i) % 20 == 0]
        out[rows] = np.roll(out[rows], 1, axis=1)
        self.seen += len(out)
        return out


def test_a_candidate_that_breaks_agreement_is_refused(digits, fp32_onnx):
    images = load_gate_images(digits["train"], digits["val"], open_runtime(fp32_onnx).card)
    openers = [(Candidate("onnxruntime", "fp32", "onnx"), lambda: open_runtime(fp32_onnx, "onnxruntime")),
               (Candidate("openvino", "bf16", "onnx"), lambda: Corrupted(open_runtime(fp32_onnx, "onnxruntime")))]
    reference, corrupted = run_trials(openers, images, Gate(), (1, 4))
    assert reference.passed and reference.agreement == 100.0 and set(reference.images_per_s) == {1, 4}
    assert corrupted.agreement == pytest.approx(95.0) and not corrupted.passed
    assert corrupted.reason.startswith("fails the gate: top-1 agrees with fp32 on 95.00% of 300 images")
    assert corrupted.images_per_s == {}  # a refused configuration is not even timed
    assert precision.choose([reference, corrupted], "auto") is reference
    with pytest.raises(UserError, match="no bf16 configuration passes: openvino bf16: fails the gate"):
        precision.choose([reference, corrupted], "bf16")


def test_export_refuses_a_failing_precision_and_auto_skips_it(digits, tmp_path, monkeypatch, capsys):
    real = exporting.open_runtime

    def corrupt_int8(path, backend, **kw):
        runtime = real(path, backend, **kw)
        return Corrupted(runtime) if kw.get("precision") == "int8" else runtime

    monkeypatch.setattr(exporting, "open_runtime", corrupt_int8)
    refused = tmp_path / "refused.onnx"
    with pytest.raises(ExportError, match=r"no int8 configuration passes: onnxruntime int8: fails the gate: .*; "
                                          r"openvino int8: fails the gate"):
        export(digits["ckpt"], refused, precision="int8", **data(digits))
    assert not list(tmp_path.iterdir())  # nothing half-made: no file, no work folder
    # auto through the command line: the int8 rows are shown with their reason, never chosen
    out = tmp_path / "auto.onnx"
    assert main(["export", str(digits["ckpt"]), "--out", str(out), "--precision", "auto",
                 "--data", str(digits["root"])]) == 0
    printed = capsys.readouterr().out
    rows = {line[2:26].split()[0] + " " + line[2:26].split()[1]: line for line in printed.splitlines()
            if line[:1] in "* " and line[2:14].strip() in ("onnxruntime", "openvino")}
    assert set(rows) == {"onnxruntime fp32", "openvino fp32", "openvino bf16", "onnxruntime int8", "openvino int8"}
    assert "fails the gate: top-1 agrees with fp32 on 95.00%" in rows["onnxruntime int8"]
    record = Deployment.of(real(out).card)
    assert record.precision != "int8" and rows[f"{record.backend} {record.precision}"].startswith("* ")
    assert main(["export", str(digits["ckpt"]), "--out", str(out), "--precision", "auto", "--data",
                 str(digits["root"]), "--min-agreement", "101"]) == 2
    assert capsys.readouterr().err.strip() == "cnnzoo export: error: --min-agreement must lie in 0..100 %, got 101.0"


# ------------------------------------------------------------------------------------------------------------
# The record, reused without measuring
# ------------------------------------------------------------------------------------------------------------


def test_recorded_choice_is_reused_without_measuring(digits, tmp_path, monkeypatch):
    calls = []
    measure = precision.measure_speed

    def measure_once(*args, **kwargs):  # export measures; nothing after it may
        assert not calls or calls[-1] != "done", "measured again after the export"
        calls.append("export")
        return measure(*args, **kwargs)

    monkeypatch.setattr(precision, "measure_speed", measure_once)
    report = export(digits["ckpt"], tmp_path / "auto", precision="auto", **data(digits))
    calls.append("done")
    record = report.deploy
    assert record is not None and report.path.suffix in (".onnx", ".xml") and report.path.exists()
    assert {(t.backend, t.precision) for t in record.alternatives} >= {("onnxruntime", "fp32"), ("openvino", "int8")}
    chosen = max((t for t in record.alternatives if t.passed), key=lambda t: t.score)
    assert (record.backend, record.precision) == (chosen.backend, chosen.precision)
    assert set(record.images_per_s) == {1, 16} and record.gate == Gate() and "val" in record.images
    # the file carries the record; open_runtime, predict and serve run its choice
    runtime = open_runtime(report.path)
    assert Deployment.of(runtime.card).to_dict() == record.to_dict()
    assert (runtime.backend, runtime.precision) == (record.backend, record.precision)
    from cnnzoo.prediction import predict
    from cnnzoo.serving import create_app
    from fastapi.testclient import TestClient

    results = predict(report.path, digits["paths"][:40], topk=1)
    assert np.mean([int(r.topk[0][0]) == y for r, y in zip(results, digits["labels"][:40])]) >= 0.9
    app = create_app(report.path)
    with TestClient(app) as client:
        assert app.state.service.ready.wait(30)
        assert client.get("/v1/model").json()["backend"] == record.backend
    assert calls[-1] == "done"


# ------------------------------------------------------------------------------------------------------------
# Each precision path predicts the digits
# ------------------------------------------------------------------------------------------------------------

PATHS = [  # format, precision, the backends that may run it (the faster one here wins), the gate it is held to
    ("onnx", "int8", ("onnxruntime", "openvino"), Gate()),  # ONNX Runtime's QDQ, which OpenVINO also runs
    # NNCF's int8 moves 2 of the 300 validation digits on this small 3-epoch network: checked at a looser gate
    ("openvino", "int8", ("openvino",), Gate(min_agreement=98, max_drop=2)),
    ("onnx", "bf16", ("openvino",), Gate()),
    ("torchscript", "bf16", ("torch",), Gate()),
]


@pytest.mark.parametrize("fmt, prec, backend, gate", PATHS, ids=[f"{f}-{p}" for f, p, _, _ in PATHS])
def test_each_precision_predicts_the_digits(digits, tmp_path, fmt, prec, backend, gate):
    out = tmp_path / f"digits{exporting.SUFFIXES[fmt]}"
    if prec == "bf16" and not HAS_BF16:  # this CPU: the refusal, naming why
        with pytest.raises(ExportError, match=r"no bf16 configuration passes: .* refused: .*no bf16"):
            export(digits["ckpt"], out, fmt, precision=prec, gate=gate, **data(digits))
        return
    report = export(digits["ckpt"], out, fmt, precision=prec, gate=gate, **data(digits))
    assert report.deploy.backend in backend and report.deploy.precision == prec
    runtime = open_runtime(out, trust_torchscript=True) if fmt == "torchscript" else open_runtime(out)
    assert (runtime.backend, runtime.precision) == (report.deploy.backend, prec)  # the recorded choice is used
    top1 = runtime.logits(digits["x"]).argmax(1)
    agreement = 100 * np.mean(top1 == digits["torch_top1"])  # with PyTorch fp32 on the checkpoint
    accuracy, torch_accuracy = 100 * np.mean(top1 == digits["labels"]), 100 * np.mean(
        digits["torch_top1"] == digits["labels"])
    assert agreement >= gate.min_agreement and accuracy >= torch_accuracy - gate.max_drop and accuracy > 90
    if prec == "int8":  # the file is quantised: int8 is all it runs as
        with pytest.raises(UserError, match="is quantised to int8 and runs only as int8"):
            open_runtime(out, report.deploy.backend, precision="fp32")


def test_bf16_follows_what_this_cpu_can_do(digits, fp32_onnx):
    if HAS_BF16:
        runtime = open_runtime(fp32_onnx, precision="bf16")  # auto backend: the one that computes bf16
        assert (runtime.backend, runtime.precision) == ("openvino", "bf16")
        assert open_runtime(digits["ckpt"], "torch", precision="bf16").precision == "bf16"
    else:
        with pytest.raises(UserError, match="bf16 on openvino refused: this CPU has no bf16 arithmetic"):
            open_runtime(fp32_onnx, "openvino", precision="bf16")
    with pytest.raises(UserError, match="the onnxruntime backend computes fp32 and int8, not bf16"):
        open_runtime(fp32_onnx, "onnxruntime", precision="bf16")
    with pytest.raises(UserError, match="holds float weights; int8 needs a quantised export"):
        open_runtime(fp32_onnx, "onnxruntime", precision="int8")
    assert open_runtime(fp32_onnx).precision == "fp32"  # no record: fp32, whatever the CPU


def test_held_out_split_without_a_validation_folder(digits, fp32_onnx):
    card = open_runtime(fp32_onnx).card
    images = load_gate_images(digits["train"], None, card, calib_images=10_000, val_images=None)
    train = len(list(Path(digits["train"]).rglob("*.png")))
    per_class = [len(list((Path(digits["train"]) / str(c)).glob("*.png"))) for c in range(10)]
    assert len(images.labels) == sum(n // precision.HELD_OUT for n in per_class)
    assert len(images.calibration) == train - len(images.labels)
    assert set(images.labels) == set(range(10)) and "held out" in images.source
    # the held-out images are not among the calibration images
    held = {a.tobytes() for a in images.fitted}
    fitted_calibration = images.calibration * 0.5 + 0.5  # undo the digits' normalisation (mean 0.5, std 0.5)
    assert not any(np.rint(c[0] * 255).astype(np.uint8)[..., None].tobytes() in held for c in fitted_calibration)


# ------------------------------------------------------------------------------------------------------------
# The service batches without changing answers
# ------------------------------------------------------------------------------------------------------------


def test_service_batched_answers_equal_unbatched(digits, fp32_onnx):
    from cnnzoo.serving import _Batcher

    runtime = open_runtime(fp32_onnx, "onnxruntime")
    arrays = list(digits["x"][:40])
    alone = [softmax(runtime.logits(a[None]))[0] for a in arrays]

    class Counting:
        input_size = runtime.input_size

        def __init__(self):
            self.sizes = []

        def logits(self, batch):
            self.sizes.append(len(batch))
            return runtime.logits(batch)

    async def go():
        counting = Counting()
        batcher = _Batcher(counting, max_batch=16, wait_s=0.002)
        worker = asyncio.create_task(batcher.run())
        rows = await asyncio.gather(*(batcher.submit(a) for a in arrays))
        worker.cancel()
        return rows, counting.sizes

    rows, sizes = asyncio.run(go())
    assert sum(sizes) == 40 and max(sizes) == 16 and len(sizes) <= 4  # full batches, never above max_batch
    for row, ref in zip(rows, alone):
        np.testing.assert_allclose(row, ref, atol=1e-6)
