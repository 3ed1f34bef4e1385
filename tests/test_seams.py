"""The seams between commands (issue #10): for every built-in dataset kind, at the network's native input size and
at another one, the same images give the same probabilities on every path: the trainer's own validation,
`evaluate`, `predict` on the images saved as files of the dataset's own kind (8x8 digits, 28x28 MNIST digits,
32x32 CIFAR images, photos), the ONNX Runtime and OpenVINO exports, and the HTTP service.

The oracle for each path is the trained network itself applied to the validation loader of training (what
`fit` reported), so every consumer is checked against what the model was trained and validated on."""

from __future__ import annotations

import io
import tarfile
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnzoo.cli import main
from cnnzoo.data import load_data
from cnnzoo.evaluation import evaluate
from cnnzoo.exporting import export
from cnnzoo.prediction import predict
from cnnzoo.serving import create_app
from cnnzoo.train import TrainConfig, build_for_data, fit
from test_data import _idx

VAL = 24  # validation images per case: enough to exercise batching, few enough to keep the sweep fast


def _digits(tmp, size):
    return load_data("digits", input_size=size, limit=60)


def _mnist(tmp, size):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 60), ("t10k", VAL)):
        strokes = (rng.random((n, 28, 28)) > 0.8) * rng.integers(100, 256, (n, 28, 28))
        _idx(tmp / f"{prefix}-images-idx3-ubyte.gz", strokes)
        _idx(tmp / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return load_data("mnist", tmp, input_size=size)


def _cifar(tmp, size):
    import pickle

    rng = np.random.default_rng(2)
    with tarfile.open(tmp / "cifar-10-python.tar.gz", "w:gz") as tar:
        def add(name: str, obj) -> None:
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            n = VAL if name == "test_batch" else 12
            add(name, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))})
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return load_data("cifar10", tmp, input_size=size)


def _photos(tmp, size):
    rng = np.random.default_rng(3)
    for part, n in (("train", 12), ("val", VAL // 2)):
        for label, colour in enumerate(("red", "blue")):
            folder = tmp / part / colour
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = rng.integers(24, 90, 2)  # photos of any size and aspect ratio
                pixels = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
                pixels[..., 0 if label == 0 else 2] += 120
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return load_data("imagefolder", tmp, input_size=size, default_input_size=(3, 32, 32))


def _save_val_files(data, folder) -> list:
    """The validation images as image files of the dataset's own kind (ImageFolder: the files themselves)."""
    if hasattr(data.val, "samples"):
        return [p for p, _ in data.val.samples]
    folder.mkdir()
    paths = []
    for i, image in enumerate(data.val.images.numpy()):
        pil = Image.fromarray(image[0]) if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0))
        paths.append(folder / f"{i:03d}.png")
        pil.save(paths[-1])
    return paths


def _probabilities(results, classes) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    out = np.zeros((len(results), len(classes)))
    for row, result in zip(out, results):
        assert result.ok, result.error
        for name, p in result.topk:
            row[index[name]] = p
    return out


# (dataset builder, network, input size): native sizes with LeNet-5, other sizes with the CIFAR ResNet-20
# (global pooling takes any size): the digits stretched to 40, MNIST padded onto 40 (the 28/32 framing kept),
# CIFAR upsampled to 40, photos cropped to 48 instead of 32.
CASES = {
    "digits-native": (_digits, "lenet5", None),
    "digits-40": (_digits, "resnet20", (40, 40)),
    "mnist-native": (_mnist, "lenet5", None),
    "mnist-40": (_mnist, "resnet20", (40, 40)),
    "cifar10-native": (_cifar, "lenet5", None),
    "cifar10-40": (_cifar, "resnet20", (40, 40)),
    "photos-32": (_photos, "lenet5", (32, 32)),
    "photos-48": (_photos, "resnet20", (48, 48)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_path_gives_the_same_probabilities(case, tmp_path):
    make, name, size = CASES[case]
    (tmp_path / "data").mkdir()
    data = make(tmp_path / "data", size)
    model = build_for_data(name, data, seed=0)
    config = TrainConfig(epochs=1, batch_size=12, lr=0.01, opt="adamw", progress=False, workers=0,
                         out=str(tmp_path / "run"))
    history = fit(model, data, config)
    ckpt = tmp_path / "run" / "last.pt"
    classes = data.classes

    # The oracle: the trained network on the trainer's own validation batches.
    model.eval()
    with torch.inference_mode():
        batches = list(data.loader("val", 64, train=False, workers=0))
        reference = torch.cat([model(x.contiguous()).softmax(1) for x, _, _ in batches]).double().numpy()
    labels = torch.cat([y for _, y, _ in batches]).numpy()
    assert history.epochs[-1]["val_top1"] == pytest.approx((reference.argmax(1) == labels).mean())

    files = _save_val_files(data, tmp_path / "files")
    report = evaluate(ckpt, data, workers=0)
    k = len(classes)
    paths = {
        "predict (torch)": _probabilities(predict(ckpt, files, topk=k, backend="torch"), classes),
    }
    export(ckpt, tmp_path / "model.onnx")
    for backend in ("onnxruntime", "openvino"):
        paths[f"predict ({backend})"] = _probabilities(predict(tmp_path / "model.onnx", files, topk=k,
                                                               backend=backend), classes)
    with TestClient(create_app(tmp_path / "model.onnx", backend="onnxruntime")) as client:
        while client.get("/readyz").status_code != 200:  # loaded and warmed up in the background
            time.sleep(0.02)
        served = []
        for path in files:
            with open(path, "rb") as f:
                answer = client.post(f"/v1/predict?topk={k}", files={"file": (str(path), f.read())})
            assert answer.status_code == 200, answer.text
            row = np.zeros(k)
            for entry in answer.json()["predictions"]:
                row[entry["index"]] = entry["probability"]
            served.append(row)
        paths["service"] = np.array(served)

    for what, probs in paths.items():
        np.testing.assert_allclose(probs, reference, atol=1e-4, rtol=0, err_msg=f"{case}: {what}")
    # evaluate's top-1 is the fraction predict gets right on the same files.
    right = (paths["predict (torch)"].argmax(1) == labels).mean()
    assert report.top1 == pytest.approx(right) == pytest.approx(history.epochs[-1]["val_top1"])


def test_evaluate_on_the_digits_saved_as_an_image_folder(tmp_path, capsys):
    """A digits checkpoint evaluated on the same digits saved as PNG files in class folders gives the number it
    gives on the built-in loader, which is the fraction `cnnzoo predict` gets right (the checkpoint's
    normalisation and resize apply, never the folder's defaults)."""
    data = load_data("digits", limit=80)
    fit(build_for_data("lenet5", data, seed=0), data,
        TrainConfig(epochs=2, batch_size=16, progress=False, out=str(tmp_path / "run")))
    ckpt = tmp_path / "run" / "last.pt"
    for part, split in (("train", data.train), ("val", data.val)):
        for i, (image, label) in enumerate(zip(split.images.numpy(), split.labels.tolist())):
            folder = tmp_path / "png" / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0]).save(folder / f"{i:03d}.png")
    built_in = evaluate(ckpt, data)
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--data", "imagefolder", "--data-dir", str(tmp_path / "png"), "--json",
                 "--out", str(tmp_path / "eval")]) == 0
    import json

    from_files = json.loads(capsys.readouterr().out)
    predictions = predict(ckpt, tmp_path / "png" / "val", topk=1)
    right = np.mean([p.topk[0][0] == p.path.split("/")[-2] for p in predictions])
    assert from_files["top1"] == pytest.approx(built_in.top1) == pytest.approx(right)
