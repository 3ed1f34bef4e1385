"""Training throughput of cnnzoo.fit against a bare forward/backward/step loop, and LeNet-5's time to the SVM.

For each case the bare loop runs over tensors already normalised in memory (no augmentation, no metrics, no
checkpoints); fit runs the whole engine (on-device batch augmentation, running metrics, per-step stop/NaN
check, checkpoint at the epoch end). Same model, batch size, optimizer and precision. The engine's rate is the
img/s of its last training epoch (evaluation and checkpoint writing are outside it, as in the bare loop).

    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py [--quick]

Augmentation presets (cnnzoo.augment): the engine on CIFAR-shaped fake data (3 x 32 x 32, in memory) with each
preset, random erasing and mixup/cutmix, against the same bare loop (no augmentation at all). LeNet-5 is so cheap
that this is the worst case: what the augmentation itself costs per image; a larger network hides most of it.

Time to accuracy: training seconds (metrics.jsonl "time", evaluation excluded) until lenet5 with its defaults
first reaches the cross-validated RBF SVM's test accuracy on digits.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cnnzoo.augment import PRESETS
from cnnzoo.baseline import svm_baseline
from cnnzoo.data import load_data
from cnnzoo.images import fit_images
from cnnzoo.train import OPTIMIZERS, TrainConfig, _param_groups, build_for_data, fit, resolve_defaults

# label, TrainConfig augmentation fields (flips on, so that every preset flips as the CIFAR recipe does)
PRESET_ROWS = [(name, dict(aug=name)) for name in PRESETS] + [
    ("crop-flip + erase 0.25", dict(aug="crop-flip", erase=0.25)),
    ("crop-flip + mixup/cutmix", dict(aug="crop-flip", mixup=0.2, cutmix=1.0)),
]

# name, dataset, model kwargs, batch size, steps per epoch (full) / (quick)
CASES = [
    ("lenet5", "digits", {}, 32, None, None),
    ("resnet18", "fake", {"small_input": True}, 64, 12, 4),
    ("mobilenet_v2", "fake", {"small_input": True}, 64, 12, 4),
]


def _bare(model: nn.Module, config: TrainConfig, x: torch.Tensor, y: torch.Tensor, steps: int, bs: int) -> float:
    optimizer = OPTIMIZERS[config.opt](_param_groups(model, config), config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing or 0.0)
    if model.channels_last:  # the memory format fit uses for this model
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.train()

    def step(i: int) -> None:
        lo = (i * bs) % (len(x) - bs + 1)
        loss = criterion(model(x[lo:lo + bs]), y[lo:lo + bs])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(2):  # warm-up: allocator, kernels
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * bs / (time.perf_counter() - t0)


def _normalised(data) -> torch.Tensor:
    """The training images on the network's input (the 8x8 digits stretched to 32x32), normalised: the bare
    loop's tensors, exactly what the engine's loader gives before augmentation."""
    fitted = torch.from_numpy(fit_images(data.train.images.numpy(), data.spec)).float() / 255
    return (fitted - torch.tensor(data.spec.mean).view(1, -1, 1, 1)) / torch.tensor(data.spec.std).view(1, -1, 1, 1)


def _case(name: str, dataset: str, kwargs: dict, bs: int, steps: int | None, folder: Path) -> dict:
    data = load_data(dataset, input_size=(3, 32, 32) if dataset == "fake" else None,
                     fake_samples=(steps or 1) * bs)
    config = TrainConfig(epochs=3, batch_size=bs, progress=False, out=str(folder / name), workers=0)
    same = resolve_defaults(config, name)  # the optimizer, lr, decay and smoothing fit will use
    x = _normalised(data)
    per_epoch = len(data.loader("train", bs, train=True))

    def bare() -> float:
        return _bare(build_for_data(name, data, **kwargs), same, x, data.train.labels, max(4, per_epoch), bs)

    # The machine is shared: the best of the warm epochs (2 and 3) against the best of two bare runs, one
    # before and one after, so that a load spike in either does not decide the ratio.
    before = bare()
    history = fit(build_for_data(name, data, **kwargs), data, config)
    engine = max(e["img_s"] for e in history.epochs[1:])
    best_bare = max(before, bare())
    return dict(model=name, data=dataset, batch=bs, engine=engine, bare=best_bare, ratio=engine / best_bare)


def _presets(folder: Path, steps: int, bs: int = 64) -> list[dict]:
    """img/s of the engine with each augmentation row against the bare loop, lenet5 on 3 x 32 x 32 fake data."""
    data = load_data("fake", input_size=(3, 32, 32), fake_samples=steps * bs)
    base = TrainConfig(epochs=3, batch_size=bs, progress=False, workers=0, flip=True)
    x = _normalised(data)
    same = resolve_defaults(base, "lenet5")
    bare = max(_bare(build_for_data("lenet5", data), same, x, data.train.labels, steps, bs) for _ in range(2))
    rows = []
    for label, options in PRESET_ROWS:
        config = dataclasses.replace(base, out=str(folder / f"aug-{len(rows)}"), **options)
        history = fit(build_for_data("lenet5", data), data, config)
        engine = max(e["img_s"] for e in history.epochs[1:])
        rows.append(dict(preset=label, engine=engine, bare=bare, ratio=engine / bare))
    return rows


def _time_to_svm(folder: Path) -> tuple[float, float, float | None, float]:
    data = load_data("digits")
    svm = svm_baseline(data).accuracy
    t0 = time.perf_counter()
    history = fit(build_for_data("lenet5", data), data, TrainConfig(progress=False, out=str(folder / "tta")))
    wall = time.perf_counter() - t0
    reached = next((e["time"] for e in history.epochs if e["val_top1"] >= svm), None)
    return svm, history.epochs[-1]["val_top1"], reached, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a rough number in about a minute)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [_case(n, d, kw, bs, quick if args.quick else full, folder) for n, d, kw, bs, full, quick in CASES]
        print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU")
        print(f"{'model':<14}{'data':<8}{'batch':>6}{'fit img/s':>12}{'bare img/s':>12}{'ratio':>8}")
        for r in rows:
            print(f"{r['model']:<14}{r['data']:<8}{r['batch']:>6}{r['engine']:>12.0f}{r['bare']:>12.0f}"
                  f"{r['ratio']:>8.2f}")
        presets = _presets(folder, 4 if args.quick else 16)
        print(f"\nlenet5, fake 3x32x32 in memory, batch 64: the engine with each augmentation against the bare loop")
        print(f"{'augmentation':<28}{'fit img/s':>12}{'bare img/s':>12}{'ratio':>8}")
        for r in presets:
            print(f"{r['preset']:<28}{r['engine']:>12.0f}{r['bare']:>12.0f}{r['ratio']:>8.2f}")
        svm, final, reached, wall = _time_to_svm(folder)
        when = f"{reached:.1f} s of training" if reached is not None else "not reached"
        print(f"\nlenet5 on digits (defaults): SVM {svm:.4f} reached after {when}; final {final:.4f}, "
              f"whole run {wall:.1f} s wall")


if __name__ == "__main__":
    main()
