"""Evaluate a checkpoint, or an ensemble of checkpoints, with optional test-time augmentation: top-1/top-5
(micro-averaged: correct images / images), loss, per-class precision, recall and F1 with their macro averages and
the balanced accuracy, the confusion matrix (CSV, and a PNG of the counts beside the row-normalised rates) and the
misclassified images. An ensemble's report also gives each member's own scores.

Note on averaging: torchmetrics' MulticlassAccuracy defaults to *macro* averaging (mean of per-class recalls);
the accuracy here is the micro one, the number papers and torchvision report; the macro one is reported as the
balanced accuracy (scikit-learn's name), over the classes present in the split.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnzoo import distributed as ddp
from cnnzoo.checkpoint import Checkpoint, build_model, load_checkpoint
from cnnzoo.data import Data, load_data_for
from cnnzoo.ensemble import check_members, mean_probabilities, tta_views
from cnnzoo.errors import UserError

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
    members: list[dict] = field(default_factory=list)  # ensemble or TTA: each checkpoint's path, top1, top5, loss
    tta: str = "none"
    # a model of more classes than the data's (an ImageNet model on some ImageNet classes): per true class, the
    # images whose top-1 is a class outside the data's; empty when the model has the data's classes
    outside: list[int] = field(default_factory=list)
    model: str = ""  # the network's name (or the ensemble's members'), for the reader of the files
    data: str = ""  # the dataset and split scored

    @property
    def macro(self) -> dict:
        """Precision, recall and F1 averaged over the classes, each class counting once (scikit-learn's
        average="macro": classes absent from the split count with 0)."""
        return {k: round(float(np.mean([r[k] for r in self.per_class])), 6) for k in ("precision", "recall", "f1")}

    @property
    def balanced_accuracy(self) -> float:
        """The mean recall of the classes present in the split (scikit-learn's balanced_accuracy_score)."""
        present = [r["recall"] for r in self.per_class if r["support"]]
        return round(float(np.mean(present)), 6) if present else 0.0

    def table(self) -> str:
        width = max(10, *(len(c) for c in self.classes))
        macro = self.macro
        tta = f" with test-time augmentation {self.tta}" if self.tta != "none" else ""
        lines = [f"top-1 {self.top1:.4f}   top-5 {self.top5:.4f}   loss {self.loss:.4f}   ({self.images} images, "
                 f"{len(self.misclassified)} misclassified{',' if tta else ''}{tta})",
                 f"balanced accuracy {self.balanced_accuracy:.4f}   macro precision {macro['precision']:.4f}   "
                 f"recall {macro['recall']:.4f}   F1 {macro['f1']:.4f}"]
        if self.outside:
            lines.append(f"{sum(self.outside)} images predicted as one of the model's classes outside these "
                         f"{len(self.classes)} (wrong, and counted so; the confusion matrix leaves them out)")
        if len(self.members) > 1:
            lines += ["", f"ensemble of {len(self.members)}{tta}:"]
            lines += [f"  {m['path']}: top-1 {m['top1']:.4f}   top-5 {m['top5']:.4f}   loss {m['loss']:.4f}"
                      for m in self.members]
            lines += [f"  ensemble: top-1 {self.top1:.4f}   top-5 {self.top5:.4f}   loss {self.loss:.4f}"]
        lines += ["", f"{'class':<{width}}  precision     recall         f1    support"]
        lines += [f"{r['name']:<{width}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  {r['f1']:>9.4f}  "
                  f"{r['support']:>9}" for r in self.per_class]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dict(model=self.model, data=self.data, top1=self.top1, top5=self.top5, loss=self.loss,
                    images=self.images, balanced_accuracy=self.balanced_accuracy, macro=self.macro,
                    classes=self.classes,
                    per_class=self.per_class, confusion=self.confusion, members=self.members, tta=self.tta,
                    misclassified=self.misclassified, **({"outside": self.outside} if self.outside else {}))

    def write(self, folder: str | Path) -> list[Path]:
        """confusion.csv, confusion.png, misclassified.csv and eval.json in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / n for n in ("confusion.csv", "confusion.png", "misclassified.csv", "eval.json")]
        with open(paths[0], "w", newline="") as f:
            w = csv.writer(f)
            outside = ["another class"] if self.outside else []
            w.writerow(["true \\ predicted", *self.classes, *outside])
            w.writerows([name, *row, *([n] if outside else [])]
                        for name, row, n in zip(self.classes, self.confusion, self.outside or self.classes))
        _plot_confusion(self, paths[1])
        with open(paths[2], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "true", "predicted", "probability"])
            w.writeheader()
            w.writerows(self.misclassified)
        paths[3].write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return paths


MAX_LABELLED = 30  # classes up to which tick labels and cell values stay legible


def _plot_confusion(report: EvalReport, path: Path) -> None:
    """The counts and the row-normalised rates (recall on the diagonal) side by side, each with a colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(report.confusion, dtype=np.int64)
    support = counts.sum(1, keepdims=True) + (np.asarray(report.outside)[:, None] if report.outside else 0)
    rates = counts / np.maximum(support, 1)
    k = len(report.classes)
    side = min(9.0, 2.2 + 0.38 * k)
    fig = Figure(figsize=(2 * side + 1.6, side + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], counts, "counts", lambda v: f"{v:d}"),
              (axes[1], rates, "share of each true class" + (" (the rest: other classes)" if report.outside
                                                               else " (rows sum to 1)"), lambda v: f"{v:.2f}"))
    for ax, values, title, fmt in panels:
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1) if values is counts else 1)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if k <= MAX_LABELLED:
            long_names = max(len(c) for c in report.classes) > 3
            ax.set_xticks(range(k), report.classes, rotation=90 if long_names else 0, fontsize=8)
            ax.set_yticks(range(k), report.classes, fontsize=8)
            peak, size = values.max() or 1, 9 if k <= 10 else 7 if k <= 15 else 5
            for i, j in zip(*np.nonzero(counts)):
                ax.text(j, i, fmt(values[i, j]), ha="center", va="center", fontsize=size,
                        color="white" if values[i, j] > peak / 2 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
    named = " on ".join(part for part in (report.model, report.data) if part)
    fig.suptitle((f"{named}\n" if named else "")
                 + f"top-1 {report.top1:.4f}, balanced accuracy {report.balanced_accuracy:.4f} on "
                 f"{report.images} images"
                 + (f"; {sum(report.outside)} predicted as other classes" if report.outside else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


def _per_class(confusion: torch.Tensor, classes: list[str], outside: list[int] | None = None) -> list[dict]:
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    if outside:  # images predicted as classes outside the matrix still count in their true class's support
        actual = actual + torch.tensor(outside, dtype=torch.float64)
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


def evaluate(checkpoint: str | Path | Checkpoint | Sequence[str | Path | Checkpoint], data: Data | None = None, *,
             split: str = "val", batch_size: int = 256, device: str | None = None, workers: int = 2,
             tta: str = "none", **data_options) -> EvalReport:
    """Evaluate a checkpoint, or an ensemble of several (a list), on ``data`` (default: the dataset the first was
    trained on, loaded with its recorded options updated by ``data_options`` such as name, data_dir, limit), on
    its validation split by default, optionally with test-time augmentation ``tta`` (cnnzoo.ensemble.TTA_MODES).

    Images are preprocessed by each checkpoint's own input contract (its card), never the dataset's statistics,
    so the number equals the fraction ``predict`` gets right on the same image files. Refuses a dataset whose
    classes differ from the checkpoint's (the indices would silently mean other classes), and an ensemble whose
    members' classes differ. An ensemble averages its members' probabilities; its report lists each member's
    own top-1, top-5 and loss.
    """
    many = isinstance(checkpoint, (list, tuple))
    ckpts = [c if isinstance(c, Checkpoint) else load_checkpoint(c) for c in (checkpoint if many else [checkpoint])]
    check_members([c.card for c in ckpts], [str(c.path) for c in ckpts])
    data = data or load_data_for(ckpts[0].card, splits=(split,), **data_options)
    index = _model_index(data, list(ckpts[0].card.classes))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loading = dict(split=split, batch_size=batch_size, device=dev, workers=workers)
    if len(ckpts) == 1 and tta == "none" and index is None:  # the trainer's own loop: the numbers it reported
        ckpt = ckpts[0]
        model = build_model(ckpt).to(dev)
        loader = data.loader(split, batch_size, train=False, spec=ckpt.card.input, device=dev, workers=workers)
        r = run_eval(model, loader, data.num_classes, collect=True,
                     channels_last=getattr(model, "channels_last", False))
        report = _report(data, split, r)
    else:
        report = _from_probabilities(ckpts, data, index, tta, loading)
    names = sorted({c.card.model_name for c in ckpts})
    report.model = names[0] if len(ckpts) == 1 else f"ensemble of {len(ckpts)} ({', '.join(names)})"
    report.data = f"{data.name}, {split}"
    return report


def _from_probabilities(ckpts: list[Checkpoint], data: Data, index: list[int] | None, tta: str,
                        loading: dict) -> EvalReport:
    """The report of an ensemble, of test-time augmentation, or of a model of more classes than the data's
    (``index``: _model_index), from class probabilities."""
    split = loading["split"]
    labels = getattr(data, split).labels
    if index is not None:  # the labels as the model's class indices
        labels = torch.tensor(index)[labels]
    probabilities = [_probabilities(ckpt, data, tta, **loading) for ckpt in ckpts]
    members = [dict(path=str(ckpt.path), **{k: v for k, v in _scores(p, labels).items() if k in ("top1", "top5",
                                                                                               "loss")})
               for ckpt, p in zip(ckpts, probabilities)]
    scores = _scores(mean_probabilities(probabilities), labels)
    if index is None:
        return _report(data, split, scores, members, tta)
    return _report(data, split, _onto_data_classes(scores, index), members, tta, list(ckpts[0].card.classes))


def _model_index(data: Data, model_classes: list[str]) -> list[int] | None:
    """The model's index of each of the data's classes when the data holds some of the model's classes, named as
    it names them (an ImageNet model evaluated on a few ImageNet classes); None when both have the same classes in
    the same order. Any other difference is refused: the indices would silently mean other classes."""
    position = {name: i for i, name in enumerate(model_classes)}
    if list(data.classes) == model_classes or len(data.classes) >= len(model_classes):
        data.check_classes(model_classes)
        return None
    strangers = [name for name in data.classes if name not in position]
    if strangers:
        raise UserError(f"{data.name}'s classes {strangers[:5]} are none of the checkpoint's {len(model_classes)}")
    return [position[name] for name in data.classes]


def _onto_data_classes(scores: dict, index: list[int]) -> dict:
    """_scores over the model's classes (top-1/5 and loss stay the model's: a prediction of a class the data does
    not hold is wrong), with the confusion matrix restricted to the data's classes and the predictions outside
    them counted per true class."""
    rows = scores["confusion"][index]
    confusion = rows[:, index]
    return dict(scores, confusion=confusion, outside=(rows.sum(1) - confusion.sum(1)).tolist())


@torch.inference_mode()
def _probabilities(ckpt: Checkpoint, data: Data, tta: str, *, split: str, batch_size: int, device: torch.device,
                   workers: int) -> np.ndarray:
    """N x K class probabilities of one checkpoint over a split, in the split's order, averaged over TTA views."""
    tta_views(np.zeros((1, 1, 2, 2), np.float32), tta)  # an unknown mode fails before the model is built
    model = build_model(ckpt).to(device).eval()
    memory = torch.channels_last if getattr(model, "channels_last", False) else torch.contiguous_format
    loader = data.loader(split, batch_size, train=False, spec=ckpt.card.input, device=device, workers=workers)
    out = []
    for x, _, _ in loader:
        views = [torch.from_numpy(v).to(device).contiguous(memory_format=memory)
                 for v in tta_views(x.cpu().numpy(), tta)]
        out.append(mean_probabilities([model(v).double().softmax(1).cpu().numpy() for v in views]))
    return np.concatenate(out)


def _scores(probabilities: np.ndarray, labels: torch.Tensor) -> dict:
    """run_eval's numbers from class probabilities (an ensemble's or TTA's): loss is the mean negative log of the
    true class's probability."""
    p = torch.from_numpy(np.asarray(probabilities, dtype=np.float64))
    k = p.shape[1]
    top = p.topk(min(5, k), 1).indices
    loss = -p[torch.arange(len(labels)), labels].clamp(min=1e-12).log().mean().item()
    confusion = torch.bincount(labels * k + top[:, 0], minlength=k * k).view(k, k)
    return dict(loss=loss, top1=(top[:, 0] == labels).double().mean().item(),
                top5=(top == labels[:, None]).any(1).double().mean().item(), images=len(labels), confusion=confusion,
                predictions=list(zip(range(len(labels)), top[:, 0].tolist(), p.max(1).values.tolist())))


def _report(data: Data, split: str, r: dict, members: list[dict] | None = None, tta: str = "none",
            model_classes: list[str] | None = None) -> EvalReport:
    """The report over the data's classes; ``model_classes``: the model's, when the data holds only some of them
    (r's predictions are then the model's indices)."""
    part, classes = getattr(data, split), list(data.classes)
    names = model_classes or classes
    model_index = _model_index(data, names) or range(len(classes))  # the model's index of each data class
    truth = [model_index[y] for y in part.labels.tolist()]
    wrong = [dict(path=part.name(i), true=names[truth[i]], predicted=names[p], probability=round(prob, 6))
             for i, p, prob in r["predictions"] if p != truth[i]]
    outside = r.get("outside", [])
    return EvalReport(top1=r["top1"], top5=r["top5"], loss=r["loss"], images=r["images"], classes=classes,
                      confusion=r["confusion"].tolist(), per_class=_per_class(r["confusion"], classes, outside),
                      misclassified=wrong, members=members or [], tta=tta, outside=outside)
