"""Textbook visualisations: the top activations of a LeNet-5 whose first-layer filters are set by hand, on images
whose answer is known (one bright square each), and the first layer's filters as an image grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.artifact import InputSpec, ModelCard
from cnnzoo.checkpoint import save_checkpoint
from cnnzoo.cli import main
from cnnzoo.registry import create_model
from cnnzoo.visualize import VISUALIZATIONS, first_layer_filters, top_activations

PNG = b"\x89PNG\r\n\x1a\n"
# Image i: black 32x32 with one square of side SIDES[i] and grey level LEVELS[i] at CORNERS[i] (row, column).
LEVELS = [40 + 17 * i for i in range(12)]
SIDES = [1, 2, 3, 5, 6, 4] * 2
CORNERS = [(2 + (7 * i) % 20, 2 + (11 * i) % 20) for i in range(12)]


def _value(i: int, channel: int) -> float:
    """The largest activation of image i in C1 channel 0 (5x5 mean) and 1 (one tap at the kernel's centre)."""
    level = LEVELS[i] / 255
    return level * min(SIDES[i], 5) ** 2 / 25 if channel == 0 else level


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A checkpoint of lenet5_relu whose C1 computes, in channel 0, the mean of its 5x5 window, in channel 1 the
    pixel at the window's centre; channels 2-5 are constant zero. Plus the folder of images and a broken file."""
    root = tmp_path_factory.mktemp("vis")
    torch.manual_seed(0)
    model = create_model("lenet5_relu")
    with torch.no_grad():
        c1 = model.features.c1
        c1.weight.zero_()
        c1.bias.zero_()
        c1.weight[0] = 1 / 25
        c1.weight[1, 0, 2, 2] = 1.0
    card = ModelCard("lenet5_relu", {}, tuple(str(i) for i in range(10)), InputSpec(1, 32, 32, (0.0,), (1.0,),
                                                                                 "stretch"))
    save_checkpoint(root / "lenet.pt", card, model.state_dict())
    images = root / "images"
    images.mkdir()
    for i, ((r, c), side, level) in enumerate(zip(CORNERS, SIDES, LEVELS)):
        pixels = np.zeros((32, 32), np.uint8)
        pixels[r : r + side, c : c + side] = level
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
    (images / "broken.png").write_bytes(b"not an image")
    return root / "lenet.pt", images


def _maxima(i: int, channel: int) -> set[tuple[int, int]]:
    """Where image i's activation peaks in C1 (output (y, x) sees input [y, y + 5) x [x, x + 5)): channel 0, every
    window that holds as much of the square as a window can (equal sums, up to float rounding); channel 1, every
    window whose centre lies on the square."""
    (r, c), side = CORNERS[i], SIDES[i]
    if channel == 1:
        return {(y - 2, x - 2) for y in range(r, r + side) for x in range(c, c + side)}
    lo, hi = min(r + side - 5, r), max(r + side - 5, r)
    rows = range(max(lo, 0), min(hi, 27) + 1)
    lo_c, hi_c = min(c + side - 5, c), max(c + side - 5, c)
    return {(y, x) for y in rows for x in range(max(lo_c, 0), min(hi_c, 27) + 1)}


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path), np.float32) / 255


def test_top_activations_are_the_true_top_k(lenet):
    ckpt, images = lenet
    result = top_activations(ckpt, images, layer="features.c1", maps=2, top=4)
    assert (result.layer, result.rf, result.jump, result.images) == ("features.c1", (5, 5), (1, 1), 12)
    assert len(result.skipped) == 1 and "broken.png" in result.skipped[0]
    assert list(result.hits) == [0, 1]  # the two live maps; 2-5 never fire
    for channel, hits in result.hits.items():
        expected = sorted(range(12), key=lambda i: -_value(i, channel))[:4]
        assert [Path(h.image).stem for h in hits] == [f"{i:02d}" for i in expected], channel
        for hit, i in zip(hits, expected):
            r, c = CORNERS[i]
            assert hit.value == pytest.approx(_value(i, channel), abs=1e-5)
            assert hit.position in _maxima(i, channel)
            if channel == 1:  # exact ties (one product, the rest exact zeros): the first maximum in row-major order
                assert hit.position == (r - 2, c - 2)
            top, left, h, w = hit.box
            assert (top, left, h, w) == (*hit.position, 5, 5)
            np.testing.assert_array_equal(hit.patch[..., 0], _pixels(hit.image)[top : top + 5, left : left + 5])
    for hit in result.hits[1]:  # a one-tap filter projects back to one pixel: the centre of its window
        assert hit.reconstruction.shape == (5, 5, 1)
        assert np.argwhere(hit.reconstruction[..., 0] == 1).tolist() == [[2, 2]]
        assert hit.reconstruction.sum() == 1
    chosen = top_activations(ckpt, images, layer="features.c1", top=2, channels=[1, 3])
    assert list(chosen.hits) == [1, 3] and len(chosen.hits[3]) == 2


def test_top_activations_figure(lenet, tmp_path):
    ckpt, images = lenet
    result = top_activations(ckpt, images, layer="features.c3", maps=3, top=4)
    assert result.rf == (14, 14) and result.jump == (2, 2)
    fig = result.figure()
    assert len(fig.axes) == 2 * 3 and all(len(ax.images) == 1 for ax in fig.axes)
    h, w, _ = fig.axes[0].images[0].get_array().shape  # a 2 x 2 mosaic of 14 x 14 tiles, 1 px between them
    assert (h, w) == (29, 29)
    assert result.save(tmp_path / "top.png").read_bytes()[:8] == PNG


def test_first_layer_filters(lenet, tmp_path):
    ckpt, _ = lenet
    filters = first_layer_filters(ckpt)
    assert filters.layer == "features.c1" and filters.weights.shape == (6, 1, 5, 5)
    tiles = filters.tiles()
    assert np.all(tiles[0] == 0.5)  # a constant filter shows mid-grey
    assert np.argwhere(tiles[1][..., 0] == 1).tolist() == [[2, 2]] and tiles[1].sum() == 1
    assert filters.save(tmp_path / "f.png").read_bytes()[:8] == PNG

    torch.manual_seed(0)
    rgb = create_model("lenet5", in_chans=3)
    card = ModelCard("lenet5", {"in_chans": 3}, tuple("0123456789"), InputSpec(3, 32, 32, (0.5,) * 3, (0.5,) * 3))
    save_checkpoint(tmp_path / "rgb.pt", card, rgb.state_dict())
    filters = first_layer_filters(tmp_path / "rgb.pt")
    tiles = filters.tiles()
    assert filters.weights.shape == (6, 3, 5, 5) and tiles[0].shape == (5, 5, 3)
    for tile, w in zip(tiles, rgb.features.c1.weight.detach().numpy()):  # each filter stretched on its own
        assert tile.min() == 0 and tile.max() == pytest.approx(1)
        np.testing.assert_allclose(tile, ((w - w.min()) / (w.max() - w.min())).transpose(1, 2, 0), atol=1e-6)


def test_cli_explain_visualizations(lenet, tmp_path, capsys):
    from cnnzoo.cli.explain import VISUALIZATIONS as CLI_VISUALIZATIONS

    assert CLI_VISUALIZATIONS == VISUALIZATIONS
    ckpt, images = lenet
    out = tmp_path / "top.png"
    args = ["explain", str(ckpt), "--method", "top-activations", "--data", str(images), "--layer", "features.c1"]
    assert main([*args, "--maps", "2", "--top", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and "features.c1" in capsys.readouterr().out
    assert main(["explain", str(ckpt), "--method", "filters", "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG
    capsys.readouterr()
    for bad, message in (([str(images / "00.png"), "--method", "filters"], "drop IMAGE"),
                         (["--method", "top-activations"], "--data"),
                         (["--method", "top-activations", "--data", str(images), "--layer", "nope"], "unknown layer"),
                         (["--method", "gradcam"], "give IMAGE")):
        assert main(["explain", str(ckpt), *bad]) == 2
        assert message in capsys.readouterr().err


def test_cli_top_activations_reports_the_unreadable_files_it_skipped(lenet, tmp_path, capsys):
    # The image folder holds broken.png beside 12 good images: the figure is drawn, and the skip is said.
    ckpt, images = lenet
    args = ["explain", str(ckpt), "--method", "top-activations", "--data", str(images), "--layer", "features.c1"]
    assert main([*args, "--maps", "1", "--top", "1", "--out", str(tmp_path / "top.png")]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped 1 unreadable image(s) in {images}" in err and "broken.png" in err, err


def test_a_field_wider_than_the_input_shows_the_input_not_a_speck_in_padding(tmp_path):
    # resnet20's layer3 at 32x32: every position's 81-px field (start -40, jump 4) covers the whole image, so the
    # patch is the image itself; cut at the field, it was the image as 32 of 81 px in a black tile.
    torch.manual_seed(0)
    card = ModelCard("resnet20", {"num_classes": 3}, ("a", "b", "c"), InputSpec(3, 32, 32, (0.0,) * 3, (1.0,) * 3,
                                                                                   "stretch"))
    save_checkpoint(tmp_path / "r20.pt", card, create_model("resnet20", num_classes=3).state_dict())
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "0.png")
    result = top_activations(tmp_path / "r20.pt", tmp_path / "images", layer="layer3", maps=1, top=1)
    assert result.rf == (81, 81)
    hit = next(iter(result.hits.values()))[0]
    assert hit.box == (0, 0, 32, 32) and hit.reconstruction.shape == (32, 32, 3)
    np.testing.assert_allclose(hit.patch, pixels / 255, atol=1e-6)
