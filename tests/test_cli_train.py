"""The train / evaluate / split-data / baseline commands end to end, in-process through cnnzoo.cli.main (one
subprocess run checks the real entry point): digits, a generated ImageFolder with a corrupt file, resume, and the
bad inputs, each a one-line message with exit code 2 and nothing written over."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnnzoo.checkpoint import load_checkpoint
from cnnzoo.cli import main

TINY = ["--epochs", "1", "--batch-size", "32", "--limit", "120", "--no-progress"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "lenet5", "--data", "digits", *TINY, "--out", str(out)]) == 0
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_resume_evaluate_on_digits(digits_run, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(digits_run), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and f"run folder: {digits_run}" in out
    assert [json.loads(r)["epoch"] for r in (digits_run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert main(["evaluate", str(digits_run / "last.pt"), "--json", "--out", str(digits_run / "ev")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 120 and len(report["per_class"]) == 10 and 0 <= report["top1"] <= report["top5"] <= 1
    assert (report["model"], report["data"]) == ("lenet5", "digits, val")  # what the files were made of
    assert {p.name for p in (digits_run / "ev").iterdir()} == {"confusion.csv", "confusion.png", "misclassified.csv",
                                                               "eval.json"}
    rows = (digits_run / "ev" / "confusion.csv").read_text().splitlines()
    assert len(rows) == 11 and rows[0].startswith("true \\ predicted,0,1")


def test_bad_inputs_exit_2_and_overwrite_nothing(digits_run, tmp_path, capsys):
    before = (digits_run / "last.pt").stat().st_mtime_ns
    cases = [
        (["train", "lenet5", "--data", "digits", "--opt", "lbfgs", "--out", str(tmp_path / "a")], "unknown optimizer"),
        (["train", "lenet5", "--data", "imagefolder", "--data-dir", str(tmp_path / "nope")], "no such data folder"),
        (["train", "lenet5", "--data", "digits", "--out", str(digits_run)], "already holds a run"),
        (["train", "lenet5_relu", "--resume", str(digits_run)], "lenet5 run, not lenet5_relu"),
        (["evaluate", str(digits_run / "last.pt"), "--data", "fake"], "differ"),
        (["evaluate", str(tmp_path / "missing.pt")], "no such checkpoint"),
        (["train", "nosuchnet", "--data", "digits"], "unknown model"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        line = _one_error_line(capsys)
        assert message in line, (argv, line)
    assert (digits_run / "last.pt").stat().st_mtime_ns == before
    assert not (tmp_path / "a").exists()


def test_imagefolder_with_a_corrupt_file_then_predict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "square")):
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 120 * c, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / "src" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    (tmp_path / "src" / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(["split-data", str(tmp_path / "src"), str(tmp_path / "data"), "--val", "0.25"]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    argv = ["train", "lenet5", "--data", "imagefolder", "--data-dir", str(tmp_path / "data"), "--input-size", "32",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err
    ckpt = load_checkpoint(out / "best.pt")
    spec = ckpt.card.input
    assert ckpt.card.classes == ("circle", "square") and spec.size == (1, 32, 32) and spec.resize_size == 37
    assert json.loads((out / "class_indices.json").read_text()) == {"circle": 0, "square": 1}
    assert main([*argv[:-1], str(tmp_path / "strict"), "--strict-data"]) == 2
    assert "broken.jpg" in _one_error_line(capsys)
    image = next((tmp_path / "data" / "val" / "square").iterdir())
    assert main(["predict", str(out / "last.pt"), str(image), "--topk", "2", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["topk"]
    assert {t["class"] for t in top} == {"circle", "square"}


def test_baseline_svm(capsys):
    assert main(["baseline", "svm", "--data", "digits", "--limit", "150"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("RBF SVM on pixels (1024 dims") and "on 150 images" in line


def test_entry_point_runs_train_help():
    proc = subprocess.run([sys.executable, "-m", "cnnzoo", "train", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--lr-backbone" in proc.stdout


def test_demo_wiring(tmp_path, capsys):
    # One epoch: the wiring of the main job (train, evaluate, SVM, PNGs, predict); the exit code says whether the
    # network beat the SVM, which one epoch of LeNet-5 does not (the full demo does: see benchmarks/).
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo")]) == 1
    out = capsys.readouterr().out
    assert "RBF SVM on pixels" in out and "WORSE than" in out and f"run folder: {tmp_path / 'demo'}" in out
    pngs = sorted((tmp_path / "demo" / "samples").glob("*.png"))
    assert len(pngs) == 8 and all(f"{p}: " in out for p in pngs)  # each predicted by cnnzoo.predict
    assert (tmp_path / "demo" / "eval" / "confusion.png").exists() and (tmp_path / "demo" / "curves.png").exists()


def test_cli_dataset_choices_are_the_library_s():
    # Spelled out in the CLI so that `--help` does not import torch; they must not drift apart.
    from cnnzoo import data
    from cnnzoo.cli import train as cli_train

    assert cli_train.DATASETS == data.DATASETS
