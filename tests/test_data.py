"""Datasets: the fixed digits split, batch augmentation derived from (seed, epoch, batch), exact evaluation shards,
CIFAR/MNIST files in their standard formats, ImageFolder with bad files, and split-data."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.augment import Augmentation
from cnnzoo.data import load_data, split_data
from cnnzoo.errors import UserError
from cnnzoo.images import fit_images


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_digits_fixed_stratified_split(digits):
    assert (len(digits.train), len(digits.val)) == (1437, 360)
    assert digits.input_size == (1, 32, 32) and digits.train.images.dtype == torch.uint8
    assert digits.train.images.shape[1:] == (1, 8, 8) and digits.spec.resize == "stretch"  # native scans
    assert digits.classes == [str(i) for i in range(10)]
    counts = torch.bincount(digits.val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 20 % of each class
    again = load_data("digits")
    assert torch.equal(again.val.images, digits.val.images) and torch.equal(again.train.labels, digits.train.labels)
    assert 0.25 < digits.spec.mean[0] < 0.4 and 0.3 < digits.spec.std[0] < 0.45  # measured on the training images


def test_training_batches_depend_on_seed_epoch_batch_only(digits):
    loader = digits.loader("train", 100, train=True, seed=3)
    loader.set_epoch(2)
    full = list(loader.iterate(0))
    resumed = list(loader.iterate(5))
    assert len(full) == 15 and len(resumed) == 10  # 1437 = 14 x 100 + 37
    for (xa, ya, ia), (xb, yb, ib) in zip(full[5:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    seen = torch.cat([i for _, _, i in full])
    assert torch.equal(seen.sort().values, torch.arange(1437))  # every sample exactly once per epoch
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[2], full[0][2])  # a new order each epoch
    x = full[0][0]
    assert x.shape == (100, 1, 32, 32) and abs(float(x.mean())) < 0.5


def _fitted(data) -> torch.Tensor:
    """The training images on the network's input (8x8 digits stretched to 32x32), as the loader sees them."""
    return torch.from_numpy(fit_images(data.train.images.numpy(), data.spec))


def test_affine_augmentation_keeps_labels_and_brightness(digits):
    x, y, idx = next(iter(digits.loader("train", 64, train=True, seed=0)))
    plain = (_fitted(digits)[idx].float() / 255 - digits.spec.mean[0]) / digits.spec.std[0]
    assert not torch.equal(x, plain) and torch.equal(y, digits.train.labels[idx])
    assert (x.flatten(1).max(1).values <= plain.flatten(1).max(1).values + 1e-5).all()  # interpolation only


def test_crop_augmentation_is_a_shift_and_keeps_labels():
    digits = load_data("digits", limit=64)
    crop = Augmentation.build("crop-flip", "affine", flip=False, crop_pad=4, crop_scale=(0.35, 1))
    loader = digits.loader("train", 64, train=True, seed=0, augment=crop)
    x, y, idx = next(iter(loader))
    fitted = _fitted(digits)
    plain = (fitted[idx].float() / 255 - digits.spec.mean[0]) / digits.spec.std[0]
    assert not torch.equal(x, plain)  # randomly shifted
    assert torch.equal(y, digits.train.labels[idx])
    # Each image is its original shifted by at most 4 pixels (zero padding is the background).
    padded = torch.nn.functional.pad(fitted[idx], (4, 4, 4, 4))
    for i in range(8):
        shifts = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        target = (x[i] * digits.spec.std[0] + digits.spec.mean[0]) * 255
        assert min(float((s.float() - target).abs().max()) for s in shifts) < 1e-3


def test_drops_a_last_batch_of_one():
    data = load_data("digits", limit=129)
    loader = data.loader("train", 64, train=True)
    assert len(loader) == 2 and loader.num_samples == 128
    assert len(data.loader("val", 64, train=False)) == 3  # evaluation keeps every image


@pytest.mark.parametrize("world", [2, 3])
def test_eval_shards_are_disjoint_and_exact(world):
    data = load_data("digits", limit=301)
    shards = [torch.cat([i for _, _, i in data.loader("val", 64, train=False, rank=r, world=world)])
              for r in range(world)]
    together = torch.cat(shards)
    assert len(together) == 301 and torch.equal(together.sort().values, torch.arange(301))  # no padded duplicates
    train = [data.loader("train", 32, train=True, rank=r, world=world) for r in range(world)]
    assert len({len(t) for t in train}) == 1  # equal step counts: no rank waits in a collective


def test_batch_larger_than_dataset_is_refused(digits):
    with pytest.raises(UserError, match="larger than the train set"):
        digits.loader("train", 5000, train=True)


def _cifar_archive(path, n_classes: int):
    rng = np.random.default_rng(0)
    names = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"] if n_classes == 10 else ["train", "test"]
    folder = "cifar-10-batches-py" if n_classes == 10 else "cifar-100-python"
    key, meta_name, meta_key = (b"labels", "batches.meta", b"label_names") if n_classes == 10 else \
        (b"fine_labels", "meta", b"fine_label_names")
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, obj) -> None:
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        for name in names:
            add(name, {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                       key: list(rng.integers(0, n_classes, 4))})
        add(meta_name, {meta_key: [f"c{i}".encode() for i in range(n_classes)]})


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_archive_and_extracted_folder(tmp_path, name, classes):
    _cifar_archive(tmp_path / f"{name}.tar.gz", classes)
    (tmp_path / "a").mkdir()
    (tmp_path / f"{name}.tar.gz").rename(tmp_path / "a" / ("cifar-10-python.tar.gz" if classes == 10 else
                                                          "cifar-100-python.tar.gz"))
    data = load_data(name, tmp_path / "a")
    n_train = 20 if classes == 10 else 4
    assert data.train.images.shape == (n_train, 3, 32, 32) and len(data.val) == 4 and data.num_classes == classes
    assert data.aug_defaults == dict(aug="crop-flip", flip=True, crop_pad=4, crop_scale=(0.35, 1.0))
    with tarfile.open(next((tmp_path / "a").iterdir())) as tar:
        tar.extractall(tmp_path / "b", filter="data")
    again = load_data(name, tmp_path / "b")
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.val.labels, data.val.labels)


def _idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files_padded_to_32(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    data = load_data("mnist", tmp_path)
    assert data.train.images.shape == (6, 1, 28, 28) and len(data.val) == 3 and data.input_size == (1, 32, 32)
    fitted = _fitted(data)
    assert fitted[:, :, :2].sum() == 0 and torch.equal(fitted[:, :, 2:30, 2:30], data.train.images)  # LeCun's border
    assert load_data("fashion_mnist", tmp_path).classes[0] == "T-shirt/top"


def test_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such data folder"):
        load_data("cifar10", tmp_path / "nope")
    with pytest.raises(UserError, match="no cifar10 archive"):
        load_data("cifar10", tmp_path)
    with pytest.raises(UserError, match="needs --data-dir"):
        load_data("mnist")
    with pytest.raises(UserError, match="unknown dataset"):
        load_data("imagenet21k")


def _png(path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _tree(root, per_class=3):
    for c, name in enumerate(("cat", "dog")):
        for part in ("train", "val"):
            for i in range(per_class):
                _png(root / part / name / f"{i}.png", 40 + 100 * c + i)


def test_imagefolder_skips_bad_files_with_a_counted_warning(tmp_path, capsys):
    _tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.png").write_text("not an image")
    good = (tmp_path / "train" / "dog" / "0.png").read_bytes()
    (tmp_path / "train" / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    data = load_data("imagefolder", tmp_path, input_size=(3, 16, 16))
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err and "notes.png" in err and "cut.png" in err
    assert data.classes == ["cat", "dog"] and len(data.train) == 6 and data.spec.resize_size == 18
    x, y, _ = next(iter(data.loader("train", 4, train=True, workers=0)))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    xv, yv, _ = next(iter(data.loader("val", 6, train=False, workers=0)))
    assert xv.shape == (6, 3, 16, 16) and yv.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(UserError, match="2 unreadable image"):
        load_data("imagefolder", tmp_path, input_size=(3, 16, 16), strict=True)


def test_imagefolder_crops_repeat_per_seed_and_position(tmp_path):
    _tree(tmp_path)
    data = load_data("imagefolder", tmp_path, input_size=(3, 8, 8))
    loader = data.loader("train", 3, train=True, seed=1, workers=0)
    first, again = list(loader.iterate(0)), list(loader.iterate(1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[1:], again))


def test_imagefolder_with_an_impossible_channel_count_names_it_not_every_image(tmp_path, capsys):
    # Images are read as RGB or grey: asking for 2 channels once called every good image "unreadable".
    _tree(tmp_path)
    with pytest.raises(UserError, match="channels must be 1 or 3, not 2"):
        load_data("imagefolder", tmp_path, input_size=(2, 16, 16))
    assert "unreadable" not in capsys.readouterr().err


def test_evaluating_the_val_split_decodes_only_that_split(tmp_path, capsys):
    # `cnnzoo evaluate` reads val/ alone: it decoded every training image too (slow on a large set) and warned
    # about their unreadable files.
    from cnnzoo.artifact import InputSpec, ModelCard
    from cnnzoo.checkpoint import save_checkpoint
    from cnnzoo.evaluation import evaluate
    from cnnzoo.registry import create_model

    _tree(tmp_path)
    (tmp_path / "train" / "cat" / "broken.png").write_text("not an image")
    torch.manual_seed(0)
    net = create_model("lenet5_relu", num_classes=2, in_chans=3)
    card = ModelCard("lenet5_relu", {"num_classes": 2, "in_chans": 3}, ("cat", "dog"),
                     InputSpec(3, 32, 32, (0.0,) * 3, (1.0,) * 3, "stretch"),
                     extra={"data": {"name": "imagefolder", "data_dir": str(tmp_path)}})
    save_checkpoint(tmp_path / "model.pt", card, net.state_dict())
    report = evaluate(tmp_path / "model.pt", workers=0)
    assert report.images == 6 and "unreadable" not in capsys.readouterr().err
    data = load_data("imagefolder", tmp_path, input_size=(3, 16, 16), splits=("val",))
    assert len(data.train) == 0 and data.val.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "unreadable" not in capsys.readouterr().err


def test_imagefolder_bad_layouts(tmp_path):
    with pytest.raises(UserError, match="no such data folder"):
        load_data("imagefolder", tmp_path / "missing")
    _tree(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(UserError, match="bird holds no images"):
        load_data("imagefolder", tmp_path)


def test_split_data_is_stratified_and_never_overwrites(tmp_path):
    for name, n in (("a", 10), ("b", 5)):
        for i in range(n):
            _png(tmp_path / "src" / name / f"{i}.png", i * 10)
    counts = split_data(tmp_path / "src", tmp_path / "dst", val=0.2, seed=0)
    assert counts == {"train": 12, "val": 3}  # a: 8 + 2, b: 4 + 1
    assert len(list((tmp_path / "dst" / "val" / "a").iterdir())) == 2
    assert json.loads((tmp_path / "dst" / "class_indices.json").read_text()) == {"a": 0, "b": 1}
    train = {p.name for p in (tmp_path / "dst" / "train" / "a").iterdir()}
    val = {p.name for p in (tmp_path / "dst" / "val" / "a").iterdir()}
    assert not train & val and len(train | val) == 10
    with pytest.raises(UserError, match="not empty"):
        split_data(tmp_path / "src", tmp_path / "dst")


def test_fake_data_shape_and_classes():
    data = load_data("fake", input_size=(3, 24, 24), num_classes=7, fake_samples=70)
    assert data.train.images.shape == (70, 3, 24, 24) and data.num_classes == 7 and len(data.val) == 17
