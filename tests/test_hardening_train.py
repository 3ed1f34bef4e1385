"""Issue #15, the training side: hostile dataset files run no code, bad values never train, corrupted checkpoints
are refused, and every mistake is one line on stderr with exit code 2 and nothing written.

Oracles are independent of the code under test: a marker file a hostile pickle would create, the arrays written
into the files, the bytes flipped in an archive, the directory listing before and after a refused command."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import io
import pickle
import re
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnzoo.artifact import ModelCard
from cnnzoo.checkpoint import (DIGEST_KEY, CheckpointError, DiskFullError, build_model, load_checkpoint,
                               read_weights, save_checkpoint)
from cnnzoo.cli import build_parser, main
from cnnzoo.data import load_data
from cnnzoo.errors import UserError
from cnnzoo.options import DATA_OPTIONS, TRAIN_OPTIONS, Range, check
from cnnzoo.train import DEVICE_COUNTS, RUN_FILES, TrainConfig, build_for_data

TINY = ["--epochs", "1", "--batch-size", "16", "--limit", "40", "--no-progress"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------------------------ 1. dataset files
class _RunsCode:
    """Unpickling this creates the marker file (what any pickle.load of an attacker's file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class _ForgedDtype:
    """A uint8 dtype whose pickled state claims it holds objects: numpy's dtype.__setstate__ accepts that, and an
    array of it would read its bytes as object pointers."""

    def __reduce__(self):
        return np.dtype, ("u1", False, True), (3, ">", None, None, None, -1, -1, 0x3F)


def _cifar_parts(n_classes: int, per_batch: int = 4, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if n_classes == 10 else ["train", "test"]
    key, meta, meta_key = (b"labels", "batches.meta", b"label_names") if n_classes == 10 else \
        (b"fine_labels", "meta", b"fine_label_names")
    parts = {name: {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                    key: [int(v) for v in rng.integers(0, n_classes, per_batch)]} for name in names}
    parts[meta] = {meta_key: [f"c{i}".encode() for i in range(n_classes)]}
    return parts


def _dump(obj, protocol: int) -> bytes:
    raw = pickle.dumps(obj, protocol=protocol)
    # Protocol 2 stands for the real files (Python 2, numpy 1.x): their globals are numpy.core.multiarray._reconstruct,
    # numpy.ndarray and numpy.dtype. GLOBAL opcodes are text lines, so the module name can be rewritten in place.
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if protocol == 2 else raw


def _write_cifar(root: Path, parts: dict, n_classes: int = 10, archive: bool = False, protocol: int = 2) -> Path:
    folder = "cifar-10-batches-py" if n_classes == 10 else "cifar-100-python"
    blobs = {name: obj if isinstance(obj, bytes) else _dump(obj, protocol) for name, obj in parts.items()}
    root.mkdir(parents=True, exist_ok=True)
    if not archive:
        for name, raw in blobs.items():
            (root / folder).mkdir(exist_ok=True)
            (root / folder / name).write_bytes(raw)
        return root
    path = root / ("cifar-10-python.tar.gz" if n_classes == 10 else "cifar-100-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in blobs.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return root


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load_exactly(tmp_path, protocol):
    parts = _cifar_parts(10)
    _write_cifar(tmp_path, parts, archive=True, protocol=protocol)
    data = load_data("cifar10", tmp_path)
    expected = np.concatenate([parts[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(data.train.images.numpy(), expected)
    assert data.val.labels.tolist() == parts["test_batch"][b"labels"] and data.classes[3] == "c3"
    # The archive itself as --data-dir (the docstring's "folder or archive").
    assert torch.equal(load_data("cifar10", tmp_path / "cifar-10-python.tar.gz").train.images, data.train.images)


def _checkpoint_trained_on(name: str, folder: Path) -> Path:
    digits = load_data("digits", limit=20)
    model = build_for_data("lenet5", digits)
    card = ModelCard("lenet5", model.cnnzoo_spec["model_kwargs"], digits.classes, digits.spec,
                     extra={"data": {"name": name}})
    save_checkpoint(folder / "model.pt", card, model.state_dict())
    return folder / "model.pt"


@pytest.mark.parametrize("archive", [False, True], ids=["loose", "tar.gz"])
def test_a_cifar_pickle_that_runs_code_never_runs_in_train_evaluate_baseline(tmp_path, capsys, archive):
    marker = tmp_path / "pwned"
    parts = _cifar_parts(10)
    parts["data_batch_1"] = _RunsCode(marker)
    root = _write_cifar(tmp_path / "cifar", parts, archive=archive)
    ckpt = _checkpoint_trained_on("cifar10", tmp_path)
    commands = [
        ["train", "lenet5", "--data", "cifar10", "--data-dir", str(root), "--out", str(tmp_path / "run")],
        ["evaluate", str(ckpt), "--data", "cifar10", "--data-dir", str(root), "--out", str(tmp_path / "ev")],
        ["baseline", "svm", "--data", "cifar10", "--data-dir", str(root)],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        line = _one_error_line(capsys)
        assert re.search(r"data_batch_1 is not a readable CIFAR file: refusing (builtins|__builtin__)\.exec", line)
        assert not marker.exists()
    assert not (tmp_path / "run").exists() and not (tmp_path / "ev").exists()


def _replace(parts: dict, name: str, **changes) -> dict:
    parts = dict(parts)
    parts[name] = {**parts[name], **{k.encode(): v for k, v in changes.items()}}
    return parts


CIFAR_DEFECTS = [  # (what, how the parts change, the message)
    ("170 labels for 200 images", lambda p: _replace(p, "data_batch_2", data=np.zeros((200, 3072), np.uint8),
                                                    labels=[0] * 170), "data_batch_2: 200 images but 170 labels"),
    ("a label out of range", lambda p: _replace(p, "test_batch", labels=[0, 1, 10, 2]),
     "test_batch: label 10 (index 2) is outside 0..9"),
    ("a negative label", lambda p: _replace(p, "data_batch_5", labels=[0, -1, 1, 2]), "label -1 (index 1)"),
    ("float pixels", lambda p: _replace(p, "data_batch_1", data=np.zeros((4, 3072), np.float32)),
     "images must be uint8"),
    ("pixels of the wrong size", lambda p: _replace(p, "data_batch_1", data=np.zeros((4, 1000), np.uint8)),
     "data must be an N x 3072 array"),
    ("labels that are not integers", lambda p: _replace(p, "data_batch_1", labels=[b"a", b"b", b"c", b"d"]),
     "labels must be a list of integers"),
    ("no labels", lambda p: {**p, "data_batch_3": {b"data": p["data_batch_3"][b"data"]}}, "not a CIFAR batch"),
    ("an object array", lambda p: _replace(p, "data_batch_1", labels=np.array([0, 1, 2, 3], dtype=object)),
     "only plain numeric arrays are allowed"),
    ("a dtype with forged flags", lambda p: _replace(p, "data_batch_1", labels=_ForgedDtype()),
     "only plain numeric arrays are allowed"),
    ("9 class names", lambda p: {**p, "batches.meta": {b"label_names": [b"x%d" % i for i in range(9)]}},
     "must list 10 distinct class names"),
    ("a truncated pickle", lambda p: {**p, "data_batch_4": pickle.dumps(p["data_batch_4"], 2)[:50]},
     "data_batch_4 is not a readable CIFAR file"),
]


@pytest.mark.parametrize("what, change, message", CIFAR_DEFECTS, ids=[d[0] for d in CIFAR_DEFECTS])
def test_malformed_cifar_batches_are_one_line_naming_the_file(tmp_path, what, change, message):
    _write_cifar(tmp_path, change(_cifar_parts(10)), protocol=4)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_data("cifar10", tmp_path)
    assert "\n" not in str(err.value)


def test_cifar100_labels_are_checked_against_its_100_classes(tmp_path):
    parts = _cifar_parts(100)
    _write_cifar(tmp_path / "ok", parts, n_classes=100)
    assert load_data("cifar100", tmp_path / "ok").num_classes == 100
    _write_cifar(tmp_path / "bad", _replace(parts, "train", fine_labels=[0, 1, 100, 2]), n_classes=100)
    with pytest.raises(UserError, match=r"train: label 100 \(index 2\) is outside 0..99"):
        load_data("cifar100", tmp_path / "bad")


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stem, raw in files.items():
        with gzip.open(root / f"{stem}.gz", "wb") as f:
            f.write(raw)
    return root


def _mnist_files(n_train: int = 12, n_train_labels: int | None = None, label_max: int = 10) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte": _idx_bytes(rng.integers(0, label_max, n_train_labels or n_train)),
        "t10k-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (6, 28, 28))),
        "t10k-labels-idx1-ubyte": _idx_bytes(rng.integers(0, 10, 6)),
    }


MNIST_DEFECTS = [  # (what, which file becomes what, the message)
    ("120 images, 100 labels", _mnist_files(120, 100), "120 images but 100 labels"),
    ("a label out of range", {**_mnist_files(), "t10k-labels-idx1-ubyte": _idx_bytes(np.array([0, 1, 2, 12, 3, 4]))},
     "label 12 (index 3) is outside 0..9"),
    ("no magic number", {**_mnist_files(), "train-labels-idx1-ubyte": b"PK\x03\x04garbage"}, "no IDX magic number"),
    ("float32 data", {**_mnist_files(), "train-images-idx3-ubyte": _idx_bytes(np.zeros((2, 28, 28)), 0x0D)},
     "type 0x0d with 3 dimension(s), expected unsigned bytes (0x08)"),
    ("labels with 2 dimensions", {**_mnist_files(), "t10k-labels-idx1-ubyte": _idx_bytes(np.zeros((6, 1)))},
     "with 2 dimension(s), expected unsigned bytes (0x08) with 1"),
    ("a truncated body", {**_mnist_files(), "train-images-idx3-ubyte": _idx_bytes(np.zeros((12, 28, 28)))[:-10]},
     "truncated: 9398 of 9408 data bytes"),
    ("a body longer than its header", {**_mnist_files(), "t10k-labels-idx1-ubyte": _idx_bytes(np.zeros(6)) + b"\0"},
     "longer than its header says"),
    ("a header claiming 2**32 x 2**32 images", {**_mnist_files(), "train-images-idx3-ubyte":
                                                b"\0\0\x08\x03" + b"\xff\xff\xff\xff" * 3}, "implausible shape"),
]


@pytest.mark.parametrize("what, files, message", MNIST_DEFECTS, ids=[d[0] for d in MNIST_DEFECTS])
def test_malformed_mnist_files_are_one_line_naming_the_file(tmp_path, what, files, message):
    _write_mnist(tmp_path, files)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_data("mnist", tmp_path)
    assert "idx" in str(err.value) and "\n" not in str(err.value)


def test_mnist_count_mismatch_through_train_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_mnist(tmp_path / "mnist", _mnist_files(120, 100))
    assert main(["train", "lenet5", "--data", "mnist", "--data-dir", "mnist"]) == 2
    assert "120 images but 100 labels" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]  # no runs/ folder
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    _write_mnist(tmp_path / "mnist", {k: v for k, v in _mnist_files().items() if "t10k-labels" not in k})
    assert main(["train", "lenet5", "--data", "mnist", "--data-dir", "mnist"]) == 2
    assert "t10k-labels-idx1-ubyte.gz is not a readable IDX file" in _one_error_line(capsys)


# ------------------------------------------------------------------------------ 2. validated configuration
# Every numeric option of `cnnzoo train` with values outside its range (the cases first), and the
# words the one-line refusal must contain.
BAD_VALUES = [
    ("--warmup", "-3", "--warmup must be >= 0, got -3"),
    ("--step-size", "-1", "--step-size must be >= 1"),
    ("--lr-backbone", "-1", "--lr-backbone must be >= 0"),
    ("--weight-decay", "-1", "--weight-decay must be >= 0"),
    ("--label-smoothing", "-0.5", "--label-smoothing must be in [0, 1), got -0.5"),
    ("--label-smoothing", "2", "--label-smoothing must be in [0, 1), got 2"),
    ("--limit", "0", "--limit must be >= 1, got 0"),
    ("--limit", "-5", "--limit must be >= 1, got -5"),
    ("--max-steps", "0", "--max-steps must be >= 1"),
    ("--max-steps", "-1", "--max-steps must be >= 1"),
    ("--keep-last", "-1", "--keep-last must be >= 0"),
    ("--seed", "-1", "--seed must be in [0, 4294967295], got -1"),
    ("--seed", str(2**32), "--seed must be in [0, 4294967295]"),
    ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
    ("--lr", "inf", "--lr must be a finite number > 0"),
    ("--lr", "0", "--lr must be > 0, got 0"),
    ("--momentum", "-5", "--momentum must be in [0, 1), got -5"),
    ("--momentum", "1", "--momentum must be in [0, 1)"),
    ("--workers", "-1", "--workers must be >= 0"),
    ("--num-classes", "0", "--num-classes must be >= 2, got 0"),
    ("--epochs", "0", "--epochs must be >= 1, got 0"),
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--gamma", "0", "--gamma must be in (0, 1], got 0"),
    ("--gamma", "10", "--gamma must be in (0, 1]"),
    ("--aux-weight", "-0.3", "--aux-weight must be >= 0"),
    ("--milestones", "3,0", "--milestones must be >= 1, got 0"),
    ("--epochs", "two", "argument --epochs: invalid int value"),  # argparse's own one line
]


@pytest.mark.parametrize("flag, value, message", BAD_VALUES, ids=[f"{f}={v}" for f, v, _ in BAD_VALUES])
def test_out_of_range_values_exit_2_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, flag, value,
                                                                   message):
    monkeypatch.chdir(tmp_path)  # the default run folder (runs/...) would appear here
    try:
        code = main(["train", "lenet5", "--data", "digits", f"{flag}={value}"])
    except SystemExit as stop:  # argparse usage errors
        code = stop.code
    assert code == 2
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def _numeric_train_flags() -> dict[str, str]:
    """{flag: TrainConfig / load_data name} of every int or float option of `cnnzoo train`, read off the parser."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    return {a.option_strings[0]: a.dest for a in train._actions if a.type in (int, float)}


def _outside(r: Range) -> list:
    """Values just outside each end of a range, and NaN for float options."""
    step = 1 if r.kind is int else 0.5
    values = [] if r.low is None else [r.low - step if r.ends[0] == "[" else r.low]
    values += [] if r.high is None else [r.high + step if r.ends[1] == "]" else r.high]
    return values + (["nan"] if r.kind is float else [])


SWEEP = [(flag, value) for flag, name in _numeric_train_flags().items()
         for value in _outside({**TRAIN_OPTIONS, **DATA_OPTIONS}[name])]


@pytest.mark.parametrize("flag, value", SWEEP, ids=[f"{f}={v}" for f, v in SWEEP])
def test_every_numeric_flag_refuses_values_outside_its_range(tmp_path, monkeypatch, capsys, flag, value):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "lenet5", "--data", "digits", f"{flag}={value}"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"cnnzoo train: error: {flag} must be "), line
    assert list(tmp_path.iterdir()) == []


def test_every_numeric_option_has_a_range_and_a_bad_value_in_the_table():
    """The oracle for 'every': TrainConfig's numeric fields and the parser's numeric flags, read off the code."""
    numeric = {f.name for f in dataclasses.fields(TrainConfig) if re.search(r"\b(int|float)\b", str(f.type))}
    assert numeric <= set(TRAIN_OPTIONS), numeric - set(TRAIN_OPTIONS)
    flags = set(_numeric_train_flags().values())
    assert flags <= set(TRAIN_OPTIONS) | set(DATA_OPTIONS)
    assert {flag for flag, _ in SWEEP} == set(_numeric_train_flags())  # every flag has a bad value in the sweep
    tested = {flag[2:].replace("-", "_") for flag, _, _ in BAD_VALUES}
    assert {"warmup", "step_size", "lr_backbone", "weight_decay", "label_smoothing", "limit", "max_steps", "keep_last",
            "seed", "lr", "momentum", "workers", "num_classes", "epochs", "batch_size"} <= tested  # the list
    assert all(r.kind in (int, float) and r.ends in ("[]", "[)", "(]", "()") and r.about
               for r in {**TRAIN_OPTIONS, **DATA_OPTIONS}.values())


def test_the_python_api_is_checked_too():
    with pytest.raises(UserError, match=r"^--warmup must be >= 0, got -3$"):
        TrainConfig(warmup=-3)
    with pytest.raises(UserError, match="--eval-batch-size must be >= 1, got 0"):
        TrainConfig(eval_batch_size=0)
    with pytest.raises(UserError, match="--epochs must be a whole number >= 1, got 2.5"):
        TrainConfig(epochs=2.5)
    with pytest.raises(UserError, match="--lr must be a finite number"):
        TrainConfig(lr="0.1")
    with pytest.raises(UserError, match="--momentum"):
        dataclasses.replace(TrainConfig(), momentum=-5)  # replace runs __post_init__ as well
    with pytest.raises(UserError, match="--limit must be >= 1, got 0"):
        load_data("digits", limit=0)
    # The boundaries themselves are allowed where the range says so.
    TrainConfig(warmup=0, momentum=0, label_smoothing=0, keep_last=0, workers=0, lr_backbone=0, seed=2**32 - 1,
                gamma=1, weight_decay=0, aux_weight=0, max_steps=1, epochs=1, batch_size=1, milestones=[1, 2])
    assert len(load_data("digits", limit=1).train) == 1


def test_split_data_arguments_are_checked_before_anything_is_copied(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "src" / name / f"{i}.pgm").write_bytes(b"P5 2 2 255\n" + bytes([i * 40] * 4))
    for argv, message in [(["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
                          (["--val", "nan"], "--val must be a finite number in (0, 1), got nan"),
                          (["--val", "1"], "--val must be in (0, 1), got 1")]:
        assert main(["split-data", str(tmp_path / "src"), str(tmp_path / "dst"), *argv]) == 2
        assert message in _one_error_line(capsys)
        assert not (tmp_path / "dst").exists()


def test_range_ends():
    table = {"closed": Range(0, 1, "[]", float, ""), "open": Range(0, 1, "()", float, ""),
             "upper": Range(None, 5, "[)", int, "")}
    check({"closed": 0, "open": 0.5, "upper": -10**9}, table)
    check({"closed": 1}, table)
    for values, message in [({"open": 0}, "in (0, 1)"), ({"open": 1}, "in (0, 1)"), ({"upper": 5}, "< 5"),
                            ({"closed": 1.0000001}, "in [0, 1]"), ({"upper": 4.0}, "whole number")]:
        with pytest.raises(UserError, match=re.escape(message)):
            check(values, table)


@pytest.mark.parametrize("argv, message", [
    (["--finetune", "head"], "--finetune head needs --init"),
    (["--finetune", "last:2"], "--finetune last:2 needs --init"),
    (["--new-fc"], "--new-fc needs --init"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "cuda:99"], "--device cuda:99: this machine has"),
    (["--device", "meta"], "--device meta: training runs on cpu, cuda, mps"),
])
def test_options_that_need_another_or_a_device_exit_2_before_anything_is_built(tmp_path, monkeypatch, capsys,
                                                                                 argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "lenet5", "--data", "digits", *argv]) == 2
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cuda_on_a_machine_without_cuda_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(DEVICE_COUNTS, "cuda", lambda: 0)
    monkeypatch.setattr("cnnzoo.data.load_data", lambda *a, **k: pytest.fail("data read before the device check"))
    assert main(["train", "lenet5", "--data", "digits", "--device", "cuda"]) == 2
    assert _one_error_line(capsys) == "cnnzoo train: error: --device cuda: this machine has no CUDA device"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- 3. integrity
@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory) -> Path:
    return _checkpoint_trained_on("digits", tmp_path_factory.mktemp("ckpt"))


def _member_offset(path: Path, member: str) -> tuple[int, int]:
    """(first data byte, size) of a stored zip member, from its local header (30 bytes + name + extra)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _largest_tensor(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename


def test_a_checkpoint_records_the_digest_of_its_weights(lenet_ckpt):
    raw = torch.load(lenet_ckpt, weights_only=True)
    assert re.fullmatch(r"[0-9a-f]{64}", raw[DIGEST_KEY])
    ckpt = load_checkpoint(lenet_ckpt)
    assert DIGEST_KEY not in ckpt.record
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in raw["state_dict"].items())


def test_overwritten_tensor_bytes_are_refused(lenet_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    raw = bytearray(lenet_ckpt.read_bytes())
    start, size = _member_offset(lenet_ckpt, _largest_tensor(lenet_ckpt))
    middle = start + size // 2
    raw[middle: middle + 16] = bytes(b ^ 0xFF for b in raw[middle: middle + 16])
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        load_checkpoint(bad)
    assert main(["evaluate", str(bad), "--out", str(tmp_path / "ev")]) == 2
    assert "fails its CRC check" in _one_error_line(capsys)
    assert not (tmp_path / "ev").exists()


def _rezip(src: Path, dst: Path, member: str, edit) -> None:
    """Copy a checkpoint archive with one member's bytes edited; zipfile writes fresh, valid CRCs."""
    with zipfile.ZipFile(src) as archive:
        members = [(i.filename, archive.read(i)) for i in archive.infolist()]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, edit(data) if name == member else data)


def test_altered_weights_with_valid_crcs_fail_the_digest(lenet_ckpt, tmp_path):
    member = _largest_tensor(lenet_ckpt)
    altered = tmp_path / "altered.pt"
    _rezip(lenet_ckpt, altered, member, lambda data: np.float32(1e30).tobytes() + data[4:])
    assert torch.load(altered, weights_only=True)["state_dict"] is not None  # torch itself sees nothing wrong
    with pytest.raises(CheckpointError, match="differ from the digest recorded when it was saved"):
        load_checkpoint(altered)
    _rezip(lenet_ckpt, tmp_path / "same.pt", member, lambda data: data)  # the copy itself is fine
    assert load_checkpoint(tmp_path / "same.pt").card.model_name == "lenet5"


def test_checkpoints_without_a_digest_still_load_and_their_crcs_are_still_checked(lenet_ckpt, tmp_path):
    raw = torch.load(lenet_ckpt, weights_only=True)
    del raw[DIGEST_KEY]
    old = tmp_path / "old.pt"
    torch.save(raw, old)
    model = build_model(load_checkpoint(old))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in raw["state_dict"].items())
    data = bytearray(old.read_bytes())
    start, size = _member_offset(old, _largest_tensor(old))
    data[start] ^= 0xFF
    old.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        load_checkpoint(old)


def test_read_weights_checks_the_crcs_of_any_weights_file(tmp_path):
    plain = tmp_path / "resnet_like.pth"
    torch.save({"conv.weight": torch.arange(64.0), "fc.bias": torch.ones(3)}, plain)
    assert torch.equal(read_weights(plain)["conv.weight"], torch.arange(64.0))
    data = bytearray(plain.read_bytes())
    start, _ = _member_offset(plain, _largest_tensor(plain))
    data[start + 8] ^= 0x01  # one bit of one float
    plain.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        read_weights(plain)


def test_a_file_that_is_no_pickle_is_named_corrupt_with_its_reason_not_a_refused_global(tmp_path):
    # A protobuf (an ONNX model renamed .pt), whose first byte (0x08) is no pickle opcode: torch's
    # WeightsUnpickler message then carries its reason on a later line ("\n\nUnsupported operand 8").
    onnx_like = tmp_path / "model.pt"
    onnx_like.write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(CheckpointError) as err:
        read_weights(onnx_like)
    message = str(err.value)
    assert "Unsupported operand" in message and "may run code" not in message, message


@pytest.mark.parametrize("suffix, kind", [(".onnx", "an ONNX model"), (".xml", "an OpenVINO IR")])
def test_an_exported_model_given_for_a_checkpoint_is_named_so(tmp_path, capsys, suffix, kind):
    # `cnnzoo evaluate/explain/export model.onnx`: said "truncated or corrupt?", of a file that is neither.
    exported = tmp_path / f"model{suffix}"
    exported.write_bytes(b"\x08\x07\x12\x07pytorch" if suffix == ".onnx" else b'<?xml version="1.0"?>\n<net/>')
    assert main(["evaluate", str(exported), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cnnzoo evaluate: error: {exported} is {kind}, not a cnnzoo checkpoint: " \
                  "`cnnzoo predict` runs exported files; this command needs the checkpoint", err
    assert not (tmp_path / "ev").exists()


def test_a_checkpoint_pickle_that_runs_code_never_runs_in_the_training_commands(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cnnzoo-checkpoint", "version": 2, "state_dict": {}, "x": _RunsCode(marker)}, evil)
    refused = "is not a readable checkpoint: Unsupported global: GLOBAL exec was not an allowed global by default"
    commands = [  # --init reads through checkpoint.read_weights too
        (["train", "lenet5", "--data", "digits", *TINY, "--init", str(evil), "--out", str(tmp_path / "run")],
         f"{evil} is not a readable checkpoint: Unsupported global"),
        (["train", "--resume", str(evil)], refused),
        (["evaluate", str(evil), "--out", str(tmp_path / "ev")], refused),
        (["baseline", "svm", "--data", "digits", "--features", str(evil), "--limit", "40"], refused),
    ]
    for argv, message in commands:
        assert main(argv) == 2, argv
        # --resume also warns that it tries the previous checkpoint first (cnnzoo.train.find_resumable).
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in last, last
        assert not marker.exists()
    assert not (tmp_path / "run").exists() and not (tmp_path / "ev").exists()


def _with_card(lenet_ckpt: Path, path: Path, **changes) -> Path:
    raw = torch.load(lenet_ckpt, weights_only=True)
    card = raw["card"]
    for key, value in changes.items():
        target, _, field = key.rpartition("__")
        (card[target] if target else card)[field] = value
    torch.save(raw, path)
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(classes=["a", "b", "c"]), "names 3 classes but lenet5 has 10 outputs"),
    (dict(model_kwargs__bogus=1), "constructor arguments do not fit lenet5: LeNet5.__init__() got an unexpected"),
    (dict(model_kwargs__num_classes=-1), "constructor arguments do not fit lenet5"),
    (dict(model_kwargs__in_chans=3), "builds lenet5 for 3-channel input but describes 1-channel images"),
    (dict(input__height=0), "sizes must be positive"),
    (dict(input__width=-32), "sizes must be positive"),
    (dict(input__std=[0.0]), "std must be positive"),
    (dict(input__mean=[float("nan")]), "mean finite"),
    (dict(model_name="lenet9"), "unknown model 'lenet9'"),
], ids=["classes-vs-outputs", "unknown-kwarg", "negative-classes", "in-chans", "height-0", "width-negative", "std-0",
        "mean-nan", "unknown-model"])
def test_inconsistent_checkpoint_metadata_is_one_line(lenet_ckpt, tmp_path, capsys, changes, message):
    path = _with_card(lenet_ckpt, tmp_path / "card.pt", **changes)
    with pytest.raises(UserError, match=re.escape(message)):
        build_model(load_checkpoint(path))
    assert main(["evaluate", str(path), "--data", "digits", "--out", str(tmp_path / "ev")]) == 2
    _one_error_line(capsys)  # the classes case is refused earlier, by the dataset check, in other words
    assert not (tmp_path / "ev").exists()


# --------------------------------------------------------------------------- 4. one line, nothing behind
def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for out, message in [(target, "is a file"), (target / "run", f"is below {target}, which is a file")]:
        assert main(["train", "lenet5", "--data", "digits", *TINY, "--out", str(out)]) == 2
        assert message in _one_error_line(capsys)
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_out_folder_holding_an_earlier_run_needs_resume_or_force(tmp_path, capsys):
    for name in RUN_FILES:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_bytes(b"earlier")
        assert main(["train", "lenet5", "--data", "digits", *TINY, "--out", str(folder)]) == 2
        line = _one_error_line(capsys)
        assert f"already holds a run ({name})" in line and "--force" in line
        assert _listing(folder) == {name: b"earlier"}
    # A folder with other files is no earlier run: it is used as it is.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main(["train", "lenet5", "--data", "digits", *TINY, "--out", str(tmp_path / "mine")]) == 0
    # --force replaces the crashed run's config.json with this run's.
    crashed = tmp_path / "config_json"
    assert main(["train", "lenet5", "--data", "digits", *TINY, "--out", str(crashed), "--force"]) == 0
    assert load_checkpoint(crashed / "last.pt").record["config"]["force"] is True
    assert (crashed / "config.json").read_bytes() != b"earlier"


def test_a_full_disk_during_a_save_names_the_path_and_the_space(tmp_path, monkeypatch, capsys):
    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    out = tmp_path / "run"
    assert main(["train", "lenet5", "--data", "digits", *TINY, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert re.search(rf"no space left on the device to write {re.escape(str(out / 'last.pt'))}: it needs about "
                     r"0\.[1-9] MB, [\d.]+ MB are free in ", line), line
    assert not list(out.glob(".*tmp")) and not (out / "last.pt").exists()


def test_a_full_disk_keeps_the_previous_checkpoint(lenet_ckpt, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(lenet_ckpt.read_bytes())
    ckpt = load_checkpoint(path)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EDQUOT, "quota")))
    with pytest.raises(DiskFullError, match=re.escape(f"to write {path}")):
        save_checkpoint(path, ckpt.card, ckpt.state_dict)
    assert path.read_bytes() == lenet_ckpt.read_bytes() and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EACCES, "denied")))
    with pytest.raises(PermissionError):  # other I/O errors are not reported as a full disk
        save_checkpoint(path, ckpt.card, ckpt.state_dict)


def test_argparse_errors_stay_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "lenet5", "--data", "imagenet"])
    assert stop.value.code == 2
    assert "invalid choice" in _one_error_line(capsys)
