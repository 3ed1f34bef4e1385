"""Runtimes (torch, ONNX Runtime, OpenVINO) agree with PyTorch; predict and `cnnzoo predict` end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import cnnzoo
from cnnzoo import runtime as rt
from cnnzoo.artifact import InputSpec, ModelCard, photo_spec
from cnnzoo.checkpoint import build_model, load_checkpoint, save_checkpoint
from cnnzoo.cli import main
from cnnzoo.cli.predict import BACKENDS
from cnnzoo.errors import UserError
from cnnzoo.exporting import export
from cnnzoo.prediction import Prediction, expand_sources, predict
from cnnzoo.registry import create_model
from cnnzoo.runtime import META_KEY, open_runtime

CLASSES = ["airplane", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "golden retriever"]
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
SPEC = InputSpec(3, 32, 32, MEAN, STD, "crop", 36)


def picture(seed: int, size=(40, 36), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0])[None, :, None] * rng.uniform(0.2, 1, 3) + rng.uniform(0, 60, (size[1], 1, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB").convert(mode)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A lenet5 checkpoint (3 channels, 32x32 crop of a 36 resize) and its ONNX, OpenVINO and TorchScript exports."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = create_model("lenet5_relu", num_classes=10, in_chans=3)
    card = ModelCard("lenet5_relu", {"num_classes": 10, "in_chans": 3}, tuple(CLASSES), SPEC)
    save_checkpoint(folder / "last.pt", card, net.state_dict(), epoch=1, step=1, best_metric=0.0, metrics={},
                    config={})
    paths = {"pt": folder / "last.pt"}
    for key, fmt, name, kw in [
        ("onnx", "onnx", "model.onnx", {}),
        ("xml", "openvino", "model.xml", {}),
        ("ts", "torchscript", "model.torchscript.pt", {}),
        ("static", "onnx", "static.onnx", {"dynamic_batch": False}),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save/load "deprecated", inside export
            assert export(paths["pt"], folder / name, format=fmt, **kw).max_abs_diff < 1e-4
        paths[key] = folder / name
    paths["folder"] = folder
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of good images of several formats and modes, and bad files beside them."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    (folder / ".hidden").mkdir()
    picture(1).save(folder / "a.png")
    picture(2, (50, 30)).save(folder / "b.jpg", quality=95)
    picture(3, mode="RGBA").save(folder / "sub" / "c.webp", lossless=True)
    picture(4, mode="P").save(folder / "sub" / "d.gif")
    picture(5, mode="L").save(folder / "e.tiff")
    picture(6).save(folder / ".hidden" / "f.png")  # hidden: skipped
    (folder / "notes.jpg").write_text("not an image\n")  # reported by name
    picture(7, (16, 16)).save(folder / "icon.ico")  # outside the allowlist: reported
    (folder / "labels.csv").write_text("a.png,cat\n")  # not an image extension: skipped
    return folder


GOOD = ["a.png", "b.jpg", "e.tiff", "sub/c.webp", "sub/d.gif"]
BAD = ["icon.ico", "notes.jpg"]


def test_expand_sources(images, tmp_path):
    found = [p.relative_to(images).as_posix() for p in expand_sources(images)]
    assert found == sorted(GOOD + BAD)
    assert expand_sources([images / "a.png", str(images / "labels.csv")]) == [images / "a.png", images / "labels.csv"]
    with pytest.raises(UserError, match="no such file or folder"):
        expand_sources([images / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        expand_sources(tmp_path / "empty")


def test_runtimes_agree_with_pytorch(models, images):
    from torchvision import transforms as T

    net = build_model(load_checkpoint(models["pt"]))
    pil = [Image.open(images / name).convert("RGB") for name in ("a.png", "b.jpg", "e.tiff")]
    preset = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), T.Normalize(MEAN, STD)])
    batch = torch.stack([preset(im) for im in pil])
    with torch.inference_mode():
        reference = net(batch).numpy()
    runs = [("pt", "torch"), ("ts", "torch"), ("onnx", "onnxruntime"), ("onnx", "openvino"), ("xml", "openvino"),
            ("static", "onnxruntime"), ("static", "openvino")]
    for key, backend in runs:
        runtime = open_runtime(models[key], backend, trust_torchscript=key == "ts")
        assert runtime.backend == backend and runtime.classes == CLASSES and runtime.input_size == (3, 32, 32)
        assert runtime.spec == SPEC and runtime.card.input == SPEC
        assert (runtime.spec.mean, runtime.spec.std, runtime.spec.resize, runtime.spec.resize_size) == (
            tuple(MEAN), tuple(STD), "crop", 36)
        ours = np.stack([runtime.preprocess(im) for im in pil])
        np.testing.assert_allclose(ours, batch.numpy(), atol=1e-6, rtol=0)
        logits = runtime.logits(ours)
        assert logits.shape == (3, 10) and logits.dtype == np.float32
        diff = float(np.abs(logits - reference).max())
        assert diff < 1e-4, f"{key} on {backend}: max abs diff {diff:.2e}"
        top = runtime.predict(pil, topk=3)
        probs = torch.softmax(torch.from_numpy(reference), 1)
        for row, expect in zip(top, probs):
            best = torch.topk(expect, 3)
            assert [name for name, _ in row] == [CLASSES[i] for i in best.indices]
            np.testing.assert_allclose([p for _, p in row], best.values.numpy(), atol=1e-5)
    fast = open_runtime(models["xml"], precision="auto")  # no deploy record (cnnzoo.precision): fp32
    assert fast.precision == "fp32"
    assert np.abs(fast.logits(batch.numpy()) - reference).max() <= 0.05 * (1 + np.abs(reference).max())
    assert open_runtime(models["static"], "onnxruntime").fixed_batch == 1
    assert open_runtime(models["onnx"], "onnxruntime").fixed_batch is None


def test_auto_backend(models, monkeypatch):
    assert open_runtime(models["pt"]).backend == "torch"
    assert open_runtime(models["folder"]).backend == "torch"  # a run folder: its checkpoint
    assert open_runtime(models["onnx"]).backend == "onnxruntime"
    assert open_runtime(models["xml"]).backend == "openvino"
    monkeypatch.setattr(rt, "_available", lambda backend: backend != "onnxruntime")
    assert open_runtime(models["onnx"]).backend == "openvino"
    monkeypatch.setattr(rt, "_available", lambda backend: backend != "openvino")
    with pytest.raises(UserError, match="needs one of openvino, and none is installed"):
        open_runtime(models["xml"])


def test_open_runtime_errors(models, tmp_path, monkeypatch):
    cases = [
        (models["onnx"], "tensorrt", "unknown backend 'tensorrt'"),
        (tmp_path / "missing.onnx", "auto", "no such model file"),
        (models["onnx"], "torch", "cannot run .*model.onnx, which is an ONNX model: use --backend onnxruntime or openvino"),
        (models["xml"], "onnxruntime", "which is an OpenVINO IR: use --backend openvino"),
        (models["pt"], "onnxruntime", "which is a PyTorch checkpoint: export it first"),
        (models["ts"], "openvino", "which is a TorchScript program: use --backend torch"),
    ]
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    cases.append((tmp_path / "model.h5", "auto", "unknown model file type '.h5'"))
    (tmp_path / "garbage.onnx").write_bytes(b"this is not a protobuf")
    cases += [(tmp_path / "garbage.onnx", b, "not a loadable ONNX model") for b in ("onnxruntime", "openvino")]
    proto = onnx.load(str(models["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    cases += [(tmp_path / "bare.onnx", b, "carries no cnnzoo metadata; export it with")
              for b in ("onnxruntime", "openvino")]
    proto.metadata_props.add(key=META_KEY, value="{not json")
    onnx.save(proto, str(tmp_path / "badmeta.onnx"))
    cases.append((tmp_path / "badmeta.onnx", "onnxruntime", "not valid JSON"))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=META_KEY, value=json.dumps({"model_name": "lenet5", "classes": ["a"]}))
    onnx.save(proto, str(tmp_path / "partial.onnx"))
    cases.append((tmp_path / "partial.onnx", "onnxruntime", "partial.onnx: the model metadata lacks input"))
    card = ModelCard("lenet5_relu", {}, tuple(CLASSES), SPEC).to_dict()
    for name, spec, message in [  # a version-2 card with a missing or invalid input contract
        ("nostd", {k: v for k, v in card["input"].items() if k != "std"}, "the model metadata lacks std"),
        ("zerostd", {**card["input"], "std": [0.2, 0.0, 0.2]}, "invalid input spec: std must be positive"),
        ("policy", {**card["input"], "resize": "zoom"}, "invalid input spec: unknown resize policy 'zoom'"),
    ]:
        del proto.metadata_props[:]
        proto.metadata_props.add(key=META_KEY, value=json.dumps({**card, "input": spec}))
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
        cases.append((tmp_path / f"{name}.onnx", "onnxruntime", f"{name}.onnx: {message}"))
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 truncated")
    cases.append((tmp_path / "broken.pt", "torch", "not a readable checkpoint"))
    for path, backend, message in cases:
        with pytest.raises(UserError, match=message):
            open_runtime(path, backend)
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        open_runtime(models["xml"], precision="fp8")
    # torch is installed: what is missing is an int8 file, which the message says how to make
    with pytest.raises(UserError, match=r"cannot run at int8 here: torch computes fp32 and bf16 \(cnnzoo export"):
        open_runtime(models["pt"], precision="int8")
    monkeypatch.setitem(rt._PACKAGES, "openvino", "openvino_not_installed_here")
    with pytest.raises(UserError, match="the openvino backend is not installed"):
        open_runtime(models["xml"], "openvino")


def test_openvino_load_failures_name_their_cause_in_one_line(models, tmp_path, capfd):
    # OpenVINO's message starts with "Exception from src/inference/src/cpp/core.cpp:84:", its cause comes last;
    # and a file it cannot read is offered to every frontend, whose TensorFlow parser logs to the C stderr.
    lone = tmp_path / "lone.xml"
    lone.write_bytes(models["xml"].read_bytes())  # copied without its model.bin
    (tmp_path / "page.xml").write_text("<html><body>not a network</body></html>\n")
    (tmp_path / "garbage.onnx").write_text("hi\nthere\n")
    cases = [(lone, "lone.bin"), (tmp_path / "page.xml", "page.xml: not an OpenVINO IR"),
             (tmp_path / "garbage.onnx", "garbage.onnx: not a loadable ONNX model")]
    for path, cause in cases:
        with pytest.raises(UserError) as err:
            open_runtime(path, "openvino")
        message = str(err.value)
        assert cause in message and "core.cpp" not in message and "\n" not in message, message
    assert "tensorflow" not in capfd.readouterr().err


def test_metadata_must_match_the_graph(models, tmp_path):
    proto = onnx.load(str(models["onnx"]))
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == META_KEY))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=META_KEY, value=json.dumps({**meta, "classes": CLASSES[:5]}))
    onnx.save(proto, str(tmp_path / "five.onnx"))
    del proto.metadata_props[:]
    assert meta == ModelCard("lenet5_relu", {"num_classes": 10, "in_chans": 3}, tuple(CLASSES), SPEC).to_dict()
    proto.metadata_props.add(key=META_KEY, value=json.dumps({**meta, "input": {**meta["input"], "height": 64,
                                                                                   "width": 64}}))
    onnx.save(proto, str(tmp_path / "size.onnx"))
    # the flat metadata of version-1 exports still loads, with the same input contract
    del proto.metadata_props[:]
    flat = {"model_name": "lenet5_relu", "classes": CLASSES, "input_size": [3, 32, 32], "mean": MEAN, "std": STD,
            "resize_size": 36}
    proto.metadata_props.add(key=META_KEY, value=json.dumps(flat))
    onnx.save(proto, str(tmp_path / "flat.onnx"))
    assert open_runtime(tmp_path / "flat.onnx", "onnxruntime").spec == SPEC
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(UserError, match="10 outputs but its metadata 5 classes"):
            open_runtime(tmp_path / "five.onnx", backend)
        with pytest.raises(UserError, match="disagrees with its metadata"):
            open_runtime(tmp_path / "size.onnx", backend)
    with pytest.raises(UserError, match="takes N x 3 x 32 x 32 input"):
        open_runtime(models["onnx"], "onnxruntime").logits(np.zeros((1, 1, 32, 32), np.float32))


def test_predict_reports_bad_files_and_predicts_the_rest(models, images):
    results = predict(models["onnx"], [images], topk=3, batch_size=2)  # batches straddle good and bad files
    assert [r.path for r in results] == [str(images / n) for n in sorted(GOOD + BAD)]
    bad = {r.path: r.error for r in results if not r.ok}
    assert set(bad) == {str(images / n) for n in BAD}
    assert "notes.jpg: not an image" in bad[str(images / "notes.jpg")]
    assert "ICO images are not accepted" in bad[str(images / "icon.ico")]
    by_torch = {r.path: r for r in cnnzoo.predict(models["pt"], images, topk=20, backend="torch")}
    for r in results:
        if r.ok:
            assert len(r.topk) == 3 and all(name in CLASSES for name, _ in r.topk)
            probs = [p for _, p in r.topk]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
            other = by_torch[r.path]
            assert len(other.topk) == 10 and abs(sum(p for _, p in other.topk) - 1) < 1e-6  # topk capped at K
            assert [n for n, _ in other.topk[:3]] == [n for n, _ in r.topk]
            np.testing.assert_allclose([p for _, p in other.topk[:3]], probs, atol=1e-5)
    with pytest.raises(UserError, match="at least 1"):
        predict(models["onnx"], images, topk=0)


def test_cli_predict(models, images, capsys):
    assert main(["predict", str(models["onnx"]), str(images / "a.png"), str(images / "sub"), "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(images / "a.png"), str(images / "sub/c.webp"),
                                                       str(images / "sub/d.gif")]
    assert all(line.count("%)") == 2 for line in lines)
    # a folder with bad files: good predictions printed, bad files named on stderr, exit code 2
    assert main(["predict", str(models["xml"]), str(images), "--json", "--topk", "1"]) == 2
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["model"] == "lenet5_relu" and payload["backend"] == "openvino"
    assert sum("topk" in p for p in payload["predictions"]) == len(GOOD)
    assert {p["path"] for p in payload["predictions"] if "error" in p} == {str(images / n) for n in BAD}
    assert "notes.jpg: not an image" in captured.err and "icon.ico" in captured.err
    assert main(["predict", str(models["pt"]), str(images / "missing.png")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(models["pt"]), str(images), "--topk", "0"])
    assert BACKENDS == rt.BACKENDS


def test_onnx_paths_never_import_torch(models, images):
    code = (
        "import sys\n"
        "from cnnzoo.cli import main\n"
        "for backend in ('auto', 'onnxruntime', 'openvino'):\n"
        f"    assert main(['predict', {str(models['onnx'])!r}, {str(images)!r}, '--backend', backend]) == 2\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "ok", done.stderr[-2000:]


def test_openvino_runtimes_freed_in_any_order_leave_signal_handling_working(models):
    """OpenVINO's CPU plugin gives the thread that loads it a signal stack and unmaps it when freed, putting the old
    one back only when freed last-in-first-out: runtimes on Cores of their own, freed in creation order, left the
    main thread's signal stack unmapped, and the next handled signal (here a child's exit, watched as torch's
    DataLoader watches it) killed the process with a SIGSEGV nothing could report (an intermittent pytest-xdist
    worker crash, at this file's subprocess test)."""
    code = (
        "import gc, signal, subprocess, sys\n"
        "from cnnzoo.runtime import open_runtime\n"
        "signal.signal(signal.SIGCHLD, lambda *args: None)\n"
        f"first, second = (open_runtime({str(models['xml'])!r}, 'openvino') for _ in range(2))\n"
        "del first; gc.collect(); del second; gc.collect()\n"
        "subprocess.run(['true'])\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_prediction_formats():
    good = Prediction("x.png", [("golden retriever", 0.91234), ("cat", 0.05)])
    assert str(good) == "x.png: golden retriever (91.2%), cat (5.0%)"
    assert good.to_dict() == {"path": "x.png", "topk": [{"class": "golden retriever", "probability": 0.91234},
                                                        {"class": "cat", "probability": 0.05}]}
    bad = Prediction("y.jpg", error="y.jpg: not an image")
    assert not bad.ok and bad.to_dict() == {"path": "y.jpg", "error": "y.jpg: not an image"}


def test_csv_goes_into_a_new_folder_as_every_other_output_does(tmp_path):
    # explain --out, evaluate --out, export --out and plot --out create their folder; --csv failed after the
    # whole prediction had run, with "no such file".
    import csv

    results = [Prediction("x.png", [("cat", 0.75), ("dog", 0.25)]), Prediction("y.jpg", error="y.jpg: not an image")]
    out = cnnzoo.prediction.write_csv(results, tmp_path / "new" / "deeper" / "p.csv")
    rows = list(csv.reader(out.open()))
    assert rows == [["path", "class_1", "probability_1", "class_2", "probability_2", "error"],
                    ["x.png", "cat", "0.750000", "dog", "0.250000", ""], ["y.jpg", "", "", "", "", "y.jpg: not an image"]]


def test_default_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert rt.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= rt.default_threads() <= (len(rt.os.sched_getaffinity(0)))


def test_softmax_is_stable():
    probs = rt.softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0]])


def test_predict_from_upload_bytes(models):
    # the service's path: bytes -> open_image -> Runtime.predict
    from cnnzoo.images import open_image

    buf = io.BytesIO()
    picture(9).save(buf, "PNG")
    runtime = open_runtime(models["onnx"], "onnxruntime")
    [[(name, prob), *_]] = runtime.predict([open_image(buf.getvalue(), name="upload.png")], topk=2)
    assert name in CLASSES and 0 < prob <= 1


def test_grey_model_on_colour_images(images, tmp_path):
    # the digits path: a 1-channel network, colour files converted to grey by the loader, as in training
    torch.manual_seed(1)
    net = create_model("lenet5").eval()
    export(net, tmp_path / "grey.onnx", input_size=(1, 32, 32))
    runtime = open_runtime(tmp_path / "grey.onnx", "onnxruntime")
    assert runtime.input_size == (1, 32, 32) and runtime.classes == [str(i) for i in range(10)]
    assert runtime.spec == photo_spec((1, 32, 32))  # a bare network: the photo contract (grey 0.5/0.5, crop 37)
    # a bare network with card=: the card is embedded as given
    card = ModelCard("lenet5", {}, tuple("zero one two three four five six seven eight nine".split()),
                     InputSpec(1, 32, 32, (0.1,), (0.2,), "pad", 28, "bicubic"), extra={"data": {"name": "mnist"}})
    export(net, tmp_path / "card.onnx", card=card)
    assert open_runtime(tmp_path / "card.onnx", "openvino").card == card
    results = predict(runtime, [images / "a.png", images / "sub" / "c.webp"], topk=10)
    grey = [Image.open(images / "a.png").convert("L"), Image.open(images / "sub" / "c.webp").convert("RGB").convert("L")]
    batch = torch.from_numpy(np.stack([runtime.preprocess(im) for im in grey]))
    with torch.inference_mode():
        probs = torch.softmax(net(batch), 1).numpy()
    for result, expect in zip(results, probs):
        got = dict(result.topk)
        np.testing.assert_allclose([got[str(i)] for i in range(10)], expect, atol=1e-5)
