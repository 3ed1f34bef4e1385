"""`make demo`, the main job end to end: train LeNet-5 on scikit-learn's digits, evaluate it, compare it with an
RBF SVM on the same split, save a few held-out digits as PNG files and predict them from the checkpoint.

The digits dataset has a train and a test split only, so the network is judged by its final weights (last.pt),
never by the epoch that happened to score best on the test split (best.pt), which would flatter it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DemoResult", "run_demo"]

SAMPLES = 8  # held-out digits saved as PNG and predicted


@dataclass
class DemoResult:
    run_dir: Path
    cnn_accuracy: float  # top-1 of last.pt on the test split
    svm_accuracy: float  # RBF SVM (cross-validated C) on the same split
    seconds: float  # wall time of the whole demo
    train_seconds: float  # of which training
    predictions: list = field(default_factory=list)


def _default_out() -> Path:
    out, n = Path("runs/demo"), 1
    while out.exists():
        n += 1
        out = Path(f"runs/demo-{n}")
    return out


def _save_samples(data, folder: Path) -> list[Path]:
    """The first SAMPLES test digits as 32x32 grey PNGs named by their true class."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(SAMPLES):
        label = data.classes[int(data.val.labels[i])]
        path = folder / f"test{i:03d}_true{label}.png"
        Image.fromarray(data.val.images[i, 0].numpy(), mode="L").save(path)
        paths.append(path)
    return paths


def run_demo(out: str | Path | None = None, epochs: int | None = None) -> DemoResult:
    """Run the demo, printing each stage; returns the accuracies and where everything was written."""
    import torch

    # LeNet-5 at batch 32 is too small to split across cores: one thread runs it at full speed, and spares the
    # demo OpenMP threads spinning against whatever else the machine runs (10x slower on a busy 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out, epochs)
    finally:
        torch.set_num_threads(threads)


def _run(out: str | Path | None, epochs: int | None) -> DemoResult:
    from cnnzoo.baseline import svm_baseline
    from cnnzoo.data import load_data
    from cnnzoo.evaluation import evaluate
    from cnnzoo.prediction import predict
    from cnnzoo.train import TrainConfig, build_for_data, fit

    t0 = time.perf_counter()
    data = load_data("digits")
    print(f"digits: {len(data.train)} train / {len(data.val)} test images, 8x8 upsampled to 32x32, 10 classes")
    history = fit(build_for_data("lenet5", data), data, TrainConfig(out=str(out or _default_out()), epochs=epochs))
    run_dir, train_seconds = history.run_dir, history.last["time"]
    report = evaluate(run_dir / "last.pt", data)
    report.write(run_dir / "eval")
    print(f"\nLeNet-5 (last.pt) on the test split: top-1 {report.top1:.4f}, {len(report.misclassified)} of "
          f"{report.images} wrong")
    svm = svm_baseline(data)
    print(svm)
    paths = _save_samples(data, run_dir / "samples")
    predictions = predict(run_dir / "last.pt", paths, topk=3)
    print("\npredictions for held-out digits:")
    for p in predictions:
        print(f"  {p}")
    verdict = "at least as good as" if report.top1 >= svm.accuracy else "WORSE than"
    seconds = time.perf_counter() - t0
    print(f"\nLeNet-5 {report.top1:.4f} vs RBF SVM {svm.accuracy:.4f}: the network is {verdict} the SVM "
          f"(training {train_seconds:.1f} s, demo {seconds:.1f} s)")
    print(f"run folder: {run_dir}\n  curves: {run_dir / 'curves.png'}\n  confusion: "
          f"{run_dir / 'eval' / 'confusion.png'}\n  samples: {run_dir / 'samples'}")
    return DemoResult(run_dir, report.top1, svm.accuracy, seconds, train_seconds, predictions)
