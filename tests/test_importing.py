"""`cnnzoo import`: a torchvision or timm weight file becomes a cnnzoo model that every consumer (predict, export and
the runtimes after it) feeds with its publisher's own preprocessing. The oracles are the publishers' code, not
cnnzoo's: torchvision's weights.transforms() and networks, timm's pretrained configurations and data transforms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch
import torchvision
from PIL import Image
from torch import nn

from cnnzoo.cli import main
from cnnzoo.images import open_image, preprocess
from cnnzoo.importing import TIMM_EVAL, import_weights, published_preprocessing
from cnnzoo.runtime import open_runtime

PHOTO = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"  # 640 x 427: the resize and crop both act


def _torchvision_file(folder: Path, name: str, weights, num_classes: int = 1000) -> tuple[nn.Module, Path]:
    """torchvision's network ``name`` (random weights, the last layer scaled so that the probabilities have clear
    margins), saved under the file name torchvision publishes ``weights`` as."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=num_classes).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(50)
    path = folder / Path(weights.url).name
    torch.save(model.state_dict(), path)
    return model, path


def _top5(capsys, model: Path, backend: str = "auto") -> list[tuple[str, float]]:
    capsys.readouterr()
    assert main(["predict", str(model), str(PHOTO), "--json", "--topk", "5", "--backend", backend]) == 0
    document = json.loads(capsys.readouterr().out)
    (result,) = document["predictions"]
    return [(p["class"], p["probability"]) for p in result["topk"]]


def test_imported_torchvision_weights_predict_and_export_as_torchvision_evaluates_them(tmp_path, capsys):
    weights = torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V2  # resize 232, not cnnzoo's default 256
    model, path = _torchvision_file(tmp_path, "regnet_x_400mf", weights)
    ckpt = tmp_path / "regnet.pt"
    assert main(["import", "regnet_x_400mf", str(path), "--out", str(ckpt)]) == 0
    assert "IMAGENET1K_V2" in capsys.readouterr().out
    with torch.no_grad():
        probs = model(weights.transforms()(Image.open(PHOTO).convert("RGB"))[None]).softmax(1)[0]
    top = probs.topk(5)
    expected = [(weights.meta["categories"][i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
    assert min(np.diff([-p for _, p in expected])) > 1e-3  # margins: the order below is not float noise

    onnx = tmp_path / "regnet.onnx"
    assert main(["export", str(ckpt), "--out", str(onnx)]) == 0
    # the card's own notes (the weight file's name) are nothing a runtime reads
    for artifact, backend in ((ckpt, "torch"), (onnx, "onnxruntime"), (onnx, "openvino")):
        got = _top5(capsys, artifact, backend)
        assert [c for c, _ in got] == [c for c, _ in expected], backend
        np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], atol=1e-4)


@pytest.mark.parametrize("weights", list(torchvision.models.EfficientNet_B1_Weights), ids=lambda w: w.name)
def test_each_torchvision_file_gets_its_own_transforms(tmp_path, weights):
    # efficientnet_b1's two files were evaluated differently: V1 resize 256 bicubic, V2 resize 255 bilinear
    _, path = _torchvision_file(tmp_path, "efficientnet_b1", weights)
    report = import_weights("efficientnet_b1", path, tmp_path / "b1.pt")
    assert weights.name in report.preprocessing.source
    assert report.preprocessing.top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    runtime = open_runtime(report.path)
    ours = runtime.preprocess(open_image(PHOTO))
    theirs = weights.transforms()(Image.open(PHOTO).convert("RGB")).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_a_renamed_torchvision_file_falls_back_to_the_original_weights_and_says_so(tmp_path):
    _, path = _torchvision_file(tmp_path, "efficientnet_b1", torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2)
    renamed = path.rename(tmp_path / "my_b1.pth")
    report = import_weights("efficientnet_b1", renamed)
    assert report.path == tmp_path / "efficientnet_b1.pt"
    assert "IMAGENET1K_V1" in report.preprocessing.source and "assumed" in report.preprocessing.source
    stated = import_weights("efficientnet_b1", renamed, tmp_path / "stated.pt",
                            preprocessing={"resize_size": 255, "interpolation": "bilinear"})
    assert (stated.card.input.resize_size, stated.card.input.interpolation) == (255, "bilinear")
    assert stated.preprocessing.top1 is None  # the published figure was for the published preprocessing


@pytest.mark.parametrize("tag", list(TIMM_EVAL))
def test_timm_table_is_timms_configuration_and_gives_timms_tensor(tag):
    pytest.importorskip("timm")
    from timm.data import create_transform
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    network, side, crop_pct, crop_mode, interpolation, (mean, std) = TIMM_EVAL[tag]
    assert (side, crop_pct, crop_mode, interpolation) == (cfg.input_size[1], cfg.crop_pct, cfg.crop_mode,
                                                          cfg.interpolation)
    assert (mean, std) == (tuple(cfg.mean), tuple(cfg.std)) and cfg.num_classes == 1000
    hub = Path(f"hub/models--timm--{tag}/snapshots/0/model.safetensors")  # where timm's hub puts the file
    spec = published_preprocessing(network, hub).spec
    transform = create_transform(input_size=cfg.input_size, crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode,
                                 interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    np.testing.assert_allclose(preprocess(open_image(PHOTO), spec), transform(Image.open(PHOTO).convert("RGB")),
                               atol=1e-6)


def test_a_timm_file_of_a_timm_only_network_gets_the_tag_its_path_names(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    tag = "tf_efficientnet_b0.ap_in1k"  # AdvProp: inputs in [-1, 1], unlike the network's default tag
    folder = tmp_path / f"models--timm--{tag}" / "snapshots" / "0"
    folder.mkdir(parents=True)
    save_file(timm.create_model("tf_efficientnet_b0").state_dict(), folder / "model.safetensors")
    report = import_weights("tf_efficientnet_b0", folder / "model.safetensors", tmp_path / "b0.pt")
    assert tag in report.preprocessing.source and report.card.input.mean == (0.5, 0.5, 0.5)
    assert report.load.layout.startswith("timm")


def test_class_names_and_refusals(tmp_path, capsys):
    _, path = _torchvision_file(tmp_path, "resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1, 3)
    out = tmp_path / "three.pt"
    assert main(["import", "resnet18", str(path), "--out", str(out)]) == 2
    assert "--classes" in capsys.readouterr().err and not out.exists()
    names = tmp_path / "classes.txt"
    names.write_text("cat\n dog \n\nbird\n")
    assert main(["import", "resnet18", str(path), "--out", str(out), "--classes", str(names)]) == 0
    assert open_runtime(out).classes == ["cat", "dog", "bird"]
    failures = {
        "class count": ["import", "resnet18", str(path), "--out", str(tmp_path / "a.pt"), "--classes", str(PHOTO)],
        "wrong network": ["import", "vgg11", str(path), "--out", str(tmp_path / "b.pt")],
        "onto itself": ["import", "resnet18", str(path), "--out", str(path)],
        "a checkpoint": ["import", "resnet18", str(out), "--out", str(tmp_path / "c.pt")],
        "no file": ["import", "resnet18", str(tmp_path / "none.pth"), "--out", str(tmp_path / "d.pt")],
        "unknown network": ["import", "resnet19", str(path), "--out", str(tmp_path / "e.pt")],
    }
    for what, argv in failures.items():
        capsys.readouterr()
        assert main(argv) == 2, what
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (what, err)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["three.pt"]


def test_fine_tuning_normalises_as_the_initial_weights_were_trained(tmp_path, capsys):
    _, path = _torchvision_file(tmp_path, "resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    inception = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]  # as timm's inception-style weights were
    assert main(["import", "resnet18", str(path), "--out", str(tmp_path / "init.pt"), *inception]) == 0
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for c, name in enumerate(("dark", "light")):
            for i in range(count):
                pixels = np.clip(rng.normal(60 + 120 * c, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                (tmp_path / "data" / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.png")
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", "resnet18", "--data", "imagefolder", "--data-dir", str(tmp_path / "data"), "--init",
                 str(tmp_path / "init.pt"), "--input-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--workers", "0", "--no-progress", "--out", str(run)]) == 0
    assert "normalised as the initial weights were trained" in capsys.readouterr().out
    spec = open_runtime(run / "last.pt").spec
    assert (spec.mean, spec.std, spec.size) == ((0.5,) * 3, (0.5,) * 3, (3, 32, 32))



def test_evaluate_on_a_folder_of_some_of_the_models_classes(tmp_path, capsys):
    """An ImageNet model evaluated on a folder of a few ImageNet classes (Imagenette's situation): top-1 is the
    model's over all its classes; the oracle is torchvision's model on its own transforms."""
    weights = torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V2
    model, path = _torchvision_file(tmp_path, "regnet_x_400mf", weights)
    ckpt = import_weights("regnet_x_400mf", path, tmp_path / "regnet.pt").path
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTO.parent.glob("*.jpg"))]
    crops = [photo.crop((x, y, x + 300, y + 260)) for photo in photos for x, y in ((0, 0), (300, 150), (150, 60))]
    with torch.no_grad():
        top1 = model(torch.stack([weights.transforms()(c) for c in crops])).argmax(1).tolist()
    names = weights.meta["categories"]
    folders = [names[top1[0]], "tench" if names[top1[0]] != "tench" else "goldfish"]  # one the model predicts
    truth = [folders[i % 2] for i in range(len(crops))]
    for split in ("train", "val"):
        for i, (crop, folder) in enumerate(zip(crops, truth)):
            (tmp_path / "data" / split / folder).mkdir(parents=True, exist_ok=True)
            crop.save(tmp_path / "data" / split / folder / f"{i}.png")
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--data", "imagefolder", "--data-dir", str(tmp_path / "data"), "--json",
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    predicted = [names[i] for i in top1]
    assert report["top1"] == pytest.approx(np.mean([p == t for p, t in zip(predicted, truth)]))
    assert sum(report["outside"]) == sum(p not in folders for p in predicted)
    assert sum(map(sum, report["confusion"])) + sum(report["outside"]) == len(crops)
    stranger = tmp_path / "data" / "val" / "not an imagenet class"
    stranger.mkdir()
    crops[0].save(stranger / "x.png")
    (tmp_path / "data" / "train" / stranger.name).mkdir()
    crops[0].save(tmp_path / "data" / "train" / stranger.name / "x.png")
    assert main(["evaluate", str(ckpt), "--data", "imagefolder", "--data-dir", str(tmp_path / "data")]) == 2
    assert "not an imagenet class" in capsys.readouterr().err
