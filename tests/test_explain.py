"""Explanations on a small GAP network trained on digits: CAM looks at the strokes, CAM and Grad-CAM agree,
every method returns the documented shapes, and wrong layer or method choices fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.cli import main
from cnnzoo.errors import UserError
from cnnzoo.explanation import METHODS, explain
from cnnzoo.models.base import ZooModel
from cnnzoo.registry import create_model

BORDER = 8  # px of empty canvas around each 16x16 digit in a 32x32 input


class TinyGapNet(ZooModel):
    """Three conv-BN-ReLU stages (max pooling between them), global average pooling, one linear layer."""

    stage_names = ("features.0", "features.1", "features.2")
    cam_layer = "features"
    classifier_path = "fc"

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

        self.features = nn.Sequential(stage(1, 16, True), stage(16, 32, True), stage(32, 64, False))
        self.fc = nn.Linear(64, num_classes)
        self.num_classes, self.num_features = num_classes, 64

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def trained():
    """TinyGapNet trained briefly on digits drawn 16x16 in the centre of an empty 32x32 canvas."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16  # N x 1 x 8 x 8 in [0, 1]
    canvas = F.pad(F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False), (BORDER,) * 4)
    labels = torch.from_numpy(digits.target).long()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, held_out = perm[:1200], perm[1200:1220]
    mean, std = float(canvas[train].mean()), float(canvas[train].std())
    x = (canvas - mean) / std
    model = TinyGapNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        model.train()
        for idx in train[torch.randperm(len(train))].split(64):
            # Random shifts of up to 2 px, so that the net cannot tie a class to fixed canvas positions.
            dy, dx = torch.randint(-2, 3, (2,)).tolist()
            loss = F.cross_entropy(model(torch.roll(x[idx], (dy, dx), (2, 3))), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[held_out]).argmax(1) == labels[held_out]).float().mean())
    return model, x[held_out], canvas[held_out], accuracy


def test_cam_concentrates_on_strokes(trained):
    model, inputs, canvas, accuracy = trained
    border = torch.ones(32, 32, dtype=torch.bool)
    border[BORDER:-BORDER, BORDER:-BORDER] = False
    ratios = []
    for x, raw in zip(inputs, canvas):
        cam = explain(model, x, method="cam").map
        stroke = (raw[0] > 0.5).numpy()
        ratios.append(cam[stroke].mean() / max(cam[border.numpy()].mean(), 1e-6))
    print(f"held-out accuracy {accuracy:.2f}; CAM stroke/border ratio median {np.median(ratios):.2f} "
          f"mean {np.mean(ratios):.2f} min {min(ratios):.2f}")
    assert accuracy > 0.5
    assert np.median(ratios) > 2.0


def test_cam_and_gradcam_peak_together(trained):
    model, inputs, _, _ = trained
    same_peak = 0
    for x in inputs:
        cam, grad = explain(model, x, method="cam"), explain(model, x, method="gradcam")
        same_peak += int(np.argmax(cam.raw) == np.argmax(grad.raw))
        # On GAP + linear, Grad-CAM's channel weights are w_ck / (h w): it is ReLU(CAM) / (h w) exactly.
        np.testing.assert_allclose(grad.raw, np.maximum(cam.raw, 0) / cam.raw.size, rtol=1e-3, atol=1e-6)
    print(f"CAM and Grad-CAM peak at the same cell on {same_peak}/{len(inputs)} digits")
    assert same_peak == len(inputs)


def test_every_method_has_its_documented_shape(trained, tmp_path):
    model, inputs, _, _ = trained
    x = inputs[0]
    shapes = {}
    for method in METHODS:
        result = explain(model, x, method=method)
        shapes[method] = result.map.shape
        assert np.isfinite(result.map).all() and np.abs(result.map).max() > 0, method
        assert result.heatmap.shape == (32, 32)
        assert result.save(tmp_path / f"{method}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in ("cam", "gradcam", "gradcam++"):
        assert shapes[method] == (32, 32)
    for method in ("saliency", "guided-backprop", "deconvnet"):
        assert shapes[method] == tuple(x.shape)  # the input's shape: 1 x 32 x 32
    assert shapes["features"] == (64, 8, 8)
    deconv = explain(model, x, method="deconvnet", layer="features.1")
    assert deconv.map.shape == tuple(x.shape) and len(deconv.neuron) == 3 and deconv.layer == "features.1"


def test_target_layer_and_method_choices(trained):
    import cnnzoo

    model, inputs, _, _ = trained
    x = inputs[0]
    assert cnnzoo.explain(model, x, method="cam").map.shape == (32, 32)
    result = explain(model, x, method="gradcam", target=3, layer="features.0")
    assert result.target == 3 and result.layer == "features.0" and result.raw.shape == (16, 16)
    assert result.target_probability <= result.probability
    with pytest.raises(UserError, match=r"unknown layer 'feature\.2'.*did you mean.*valid layers: features, "):
        explain(model, x, method="gradcam", layer="feature.2")
    with pytest.raises(UserError, match="out of range"):
        explain(model, x, target=10)
    with pytest.raises(UserError, match="unknown method"):
        explain(model, x, method="lime")
    with pytest.raises(UserError, match="use gradcam"):
        explain(model, x, method="cam", layer="features.1")
    with pytest.raises(UserError, match="saliency attributes the input pixels"):
        explain(model, x, method="saliency", layer="features.1")


def test_cam_refuses_networks_without_gap_and_one_linear():
    torch.manual_seed(0)
    lenet = create_model("lenet5_relu")  # F6 sits between the feature map and the classifier
    with pytest.raises(UserError, match="global average pooling"):
        explain(lenet, torch.randn(1, 32, 32), method="cam")
    assert explain(lenet, torch.randn(1, 32, 32), method="gradcam", layer="features.c3").raw.shape == (10, 10)


def test_cli_explain(tmp_path, capsys):
    from PIL import Image

    from cnnzoo.artifact import InputSpec, ModelCard
    from cnnzoo.checkpoint import load_checkpoint, save_checkpoint
    from cnnzoo.cli.explain import METHODS as CLI_METHODS

    assert CLI_METHODS == METHODS
    torch.manual_seed(0)
    model = create_model("lenet5_relu")
    classes = [str(i) for i in range(10)]
    spec = InputSpec(1, 32, 32, [0.2], [0.3], "crop", 32)
    save_checkpoint(tmp_path / "best.pt", ModelCard("lenet5_relu", {"num_classes": 10, "in_chans": 1}, classes, spec),
                    model.state_dict())
    pixels = np.zeros((32, 32), np.uint8)
    pixels[8:24, 14:18] = 255  # a "1"
    Image.fromarray(pixels).save(tmp_path / "one.png")
    out = tmp_path / "one_gradcam.png"
    args = [str(tmp_path / "best.pt"), str(tmp_path / "one.png")]
    assert main(["explain", *args, "--layer", "features.c3", "--target", "1", "--out", str(out)]) == 0
    assert "predicted" in capsys.readouterr().out and out.read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", *args, "--method", "cam"]) == 2
    assert "global average pooling" in capsys.readouterr().err
    assert main(["explain", *args, "--layer", "nope"]) == 2
    assert "valid layers: features, features.c1" in capsys.readouterr().err
    # a loaded Checkpoint explains as its path does: the card's classes, the spec's preprocessing (mean 0.2,
    # std 0.3), and the display image de-normalised back to the file's pixels
    by_path = explain(tmp_path / "best.pt", tmp_path / "one.png", layer="features.c3", target="1")
    loaded = explain(load_checkpoint(tmp_path / "best.pt"), tmp_path / "one.png", layer="features.c3", target="1")
    assert loaded.classes == by_path.classes == classes and loaded.target == by_path.target == 1
    np.testing.assert_array_equal(loaded.map, by_path.map)
    np.testing.assert_allclose(loaded.image[..., 0], pixels / 255, atol=1e-6)
    x = torch.from_numpy((pixels / 255 - 0.2) / 0.3).float()[None]
    np.testing.assert_allclose(explain(model, x, layer="features.c3", target=1).map, loaded.map, atol=1e-6)


def test_constant_map_with_rounding_noise_is_not_stretched():
    # A 1x1 Grad-CAM map (LeNet-5's C5) upsampled to 32x32 is constant up to float rounding; stretching that
    # noise to [0, 1] painted speckles over the image.
    from cnnzoo.explanation import _unit

    noisy = np.full((32, 32), 0.37, dtype=np.float32) + np.random.default_rng(0).normal(0, 1e-8, (32, 32))
    assert not _unit(noisy).any()
    ramp = _unit(np.arange(16.0).reshape(4, 4))
    assert ramp.min() == 0.0 and ramp.max() == 1.0
