"""Evaluate a checkpoint: top-1/top-5 (micro-averaged: correct images / images), loss, per-class precision,
recall and F1, the confusion matrix (CSV and PNG) and the misclassified images.

Note on averaging: torchmetrics' MulticlassAccuracy defaults to *macro* averaging (mean of per-class recalls);
the accuracy here is the micro one, the number papers and torchvision report.
"""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnzoo import distributed as ddp
from cnnzoo.checkpoint import Checkpoint, build_model, load_checkpoint
from cnnzoo.data import Data, load_data_for

__all__ = ["EvalReport", "evaluate", "run_eval"]


@dataclass
class EvalReport:
    """The numbers of one evaluation; ``write`` puts the CSV/PNG/JSON files in a folder."""

    top1: float
    top5: float
    loss: float
    images: int
    classes: list[str]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    per_class: list[dict] = field(default_factory=list)  # name, precision, recall, f1, support
    misclassified: list[dict] = field(default_factory=list)  # path, true, predicted, probability

    def table(self) -> str:
        width = max(10, *(len(c) for c in self.classes))
        lines = [f"top-1 {self.top1:.4f}   top-5 {self.top5:.4f}   loss {self.loss:.4f}   ({self.images} images, "
                 f"{len(self.misclassified)} misclassified)", "",
                 f"{'class':<{width}}  precision     recall         f1    support"]
        lines += [f"{r['name']:<{width}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  {r['f1']:>9.4f}  "
                  f"{r['support']:>9}" for r in self.per_class]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dict(top1=self.top1, top5=self.top5, loss=self.loss, images=self.images, classes=self.classes,
                    per_class=self.per_class, confusion=self.confusion, misclassified=self.misclassified)

    def write(self, folder: str | Path) -> list[Path]:
        """confusion.csv, confusion.png, misclassified.csv and eval.json in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / n for n in ("confusion.csv", "confusion.png", "misclassified.csv", "eval.json")]
        with open(paths[0], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *self.classes])
            w.writerows([name, *row] for name, row in zip(self.classes, self.confusion))
        _plot_confusion(self, paths[1])
        with open(paths[2], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "true", "predicted", "probability"])
            w.writeheader()
            w.writerows(self.misclassified)
        paths[3].write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return paths


def _plot_confusion(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(report.classes)
    size = min(12.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(report.confusion, cmap="Blues")
    if k <= 30:  # tick labels and counts stay legible up to about 30 classes
        ax.set_xticks(range(k), report.classes, rotation=90)
        ax.set_yticks(range(k), report.classes)
        peak = max(max(r) for r in report.confusion) or 1
        for i, row in enumerate(report.confusion):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, v, ha="center", va="center", fontsize=7, color="white" if v > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {report.top1:.4f} on {report.images} images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _per_class(confusion: torch.Tensor, classes: list[str]) -> list[dict]:
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return [dict(name=n, precision=round(p, 6), recall=round(r, 6), f1=round(f, 6), support=int(s))
            for n, p, r, f, s in zip(classes, precision.tolist(), recall.tolist(), f1.tolist(), actual.tolist())]


@torch.inference_mode()
def run_eval(model: nn.Module, loader, num_classes: int, *, env: ddp.DistEnv | None = None,
             autocast: contextlib.AbstractContextManager | None = None, channels_last: bool = False,
             collect: bool = False) -> dict:
    """Loss, top-1 and top-5 (micro: correct / images), the confusion matrix (rows: true class) and, with
    ``collect``, per-image (index, prediction, probability). Under DDP each rank evaluates a disjoint shard and
    the sums are all-reduced, so the numbers equal the single-process ones exactly. The trainer's validation
    and ``evaluate`` both run this loop."""
    env = env or ddp.DistEnv(device=next(model.parameters()).device)
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top-1, top-k, images
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    preds = []
    for x, y, idx in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        logits = logits.float().cpu()
        y = y.cpu()
        top = logits.topk(k, 1).indices
        sums += torch.tensor([nn.functional.cross_entropy(logits, y, reduction="sum").item(),
                              (top[:, 0] == y).sum().item(), (top == y[:, None]).any(1).sum().item(), len(y)],
                             dtype=torch.float64)
        confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
        if collect:
            prob = logits.softmax(1).max(1).values
            preds += list(zip(idx.tolist(), top[:, 0].tolist(), prob.tolist()))
    ddp.all_reduce_sum(sums, env)
    ddp.all_reduce_sum(confusion, env)
    n = max(sums[3].item(), 1)
    result = dict(loss=sums[0].item() / n, top1=sums[1].item() / n, top5=sums[2].item() / n, images=int(sums[3]),
                  confusion=confusion.view(num_classes, num_classes))
    if collect:
        result["predictions"] = preds
    return result


def evaluate(checkpoint: str | Path | Checkpoint, data: Data | None = None, *, split: str = "val",
             batch_size: int = 256, device: str | None = None, workers: int = 2, **data_options) -> EvalReport:
    """Evaluate a checkpoint on ``data`` (default: the dataset it was trained on, loaded with its recorded
    options updated by ``data_options`` such as name, data_dir, limit), on its validation split by default.

    Images are preprocessed by the checkpoint's own input contract (its card), never the dataset's statistics, so
    the number equals the fraction ``predict`` gets right on the same image files. Refuses a dataset whose classes
    differ from the checkpoint's: the indices would silently mean other classes.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    card = ckpt.card
    data = data or load_data_for(card, **data_options)
    data.check_classes(list(card.classes))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(ckpt).to(dev)
    loader = data.loader(split, batch_size, train=False, spec=card.input, device=dev, workers=workers)
    r = run_eval(model, loader, data.num_classes, collect=True, channels_last=getattr(model, "channels_last", False))
    part, classes = getattr(data, split), list(data.classes)
    labels = part.labels.tolist()
    wrong = [dict(path=part.name(i), true=classes[labels[i]], predicted=classes[p], probability=round(prob, 6))
             for i, p, prob in r["predictions"] if p != labels[i]]
    return EvalReport(top1=r["top1"], top5=r["top5"], loss=r["loss"], images=r["images"], classes=classes,
                      confusion=r["confusion"].tolist(), per_class=_per_class(r["confusion"], classes),
                      misclassified=wrong)
