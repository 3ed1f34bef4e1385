"""The zoo side by side, the way Keras' applications table shows it, and a user's training runs side by side.

    compare(["resnet*", "vgg16"])        -> Comparison     one row per network
    compare(["runs/a", "runs/b"])        -> RunComparison  one row per run folder, plus their curves overlaid

Columns of a network's row. The static ones cost no weights and no arithmetic (the network is built on the
meta device):

    size (MB)    the fp32 weights: 4 bytes x params, in MB of 2^20 bytes (the unit of Keras' table)
    top-1, top-5 published ImageNet-1K validation accuracy (cnnzoo.published): reported by the source named in
                 the last column, not measured here
    params       parameters at the network's default class count
    depth        weight layers (convolutions and linear layers) on the longest path from the input to the
                 output of the traced forward pass in eval mode: LeNet-5 5, VGG-16 16, ResNet-50 50, DenseNet-121
                 121, GoogLeNet 22, as their names and papers count. Parallel branches count once (the deepest);
                 a squeeze-and-excitation block's two linear layers lie on the path, so SE-ResNet-50 counts 82;
                 auxiliary heads, inactive in eval mode, do not count. (Keras' "depth" counts every layer on
                 the path, activations and batch norms included, and is larger.)
    MACs         multiply-accumulates of one image at the default input size (cnnzoo.summarize)

The timed columns: the median wall time of one inference step at batch 1 (a float32 numpy batch in, numpy
logits out), after warm-up steps, on this machine, for each backend: ``torch`` (eager, CPU, the network's
memory-format hint), ``onnxruntime`` and ``openvino`` (the network exported to ONNX by cnnzoo.exporting and run
by cnnzoo.runtime), and ``cuda`` (torch eager on the GPU, transfers included) when a GPU is present. Weights
are random (seed 0) with BatchNorm statistics from one random batch: untrained statistics let activations decay
into float32 denormals, which x86 computes 10-100x slower, a slowdown no trained network has. Exports are cached
under ~/.cache/cnnzoo/exports, one file per network, input size and cnnzoo version.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import cnnzoo
from cnnzoo.errors import UserError
from cnnzoo.published import Published, published
from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.summary import format_count, summarize, tensors_in

__all__ = ["BACKENDS", "DOCS_TIMED", "ModelRow", "Comparison", "Run", "RunRow", "RunComparison", "compare",
           "compare_models", "compare_runs", "model_depth", "static_row", "time_model", "machine_info",
           "available_backends", "calibrate_batchnorm", "is_run", "load_run", "write_docs", "DEFAULT_CACHE",
           "chart", "chart_points", "run_row", "static_cells"]

BACKENDS = ("torch", "onnxruntime", "openvino", "cuda")
# The most-used networks: docs/models.md times these (all ~130 would take hours on a small CPU).
DOCS_TIMED = ("alexnet", "vgg16", "googlenet", "inception_v3", "resnet18", "resnet50", "densenet121",
              "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")
DEFAULT_CACHE = Path.home() / ".cache" / "cnnzoo" / "exports"
WARMUP, REPEATS, BUDGET_S = 5, 30, 10.0  # steps before timing; most timed steps; seconds after which to stop


# ------------------------------------------------------------------------------------------------ depth
_DEPTH = "_cnnzoo_depth"  # attribute on traced tensors: weight layers on the longest path that produced them
_WEIGHT_LAYERS = {"conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear"}


class _DepthTracer(TorchFunctionMode):
    """Every result of a torch function is one weight layer deeper than its deepest input if the function is a
    convolution or linear layer, and as deep otherwise (a merge takes its deepest branch)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        depths = [getattr(t, _DEPTH) for t in tensors_in((args, kwargs)) if hasattr(t, _DEPTH)]
        if depths:
            depth = max(depths) + (getattr(func, "__name__", "") in _WEIGHT_LAYERS)
            for t in tensors_in(out):
                setattr(t, _DEPTH, depth)
        return out


def model_depth(model: nn.Module, input_size: Sequence[int]) -> int:
    """Weight layers (conv + linear) on the longest input-to-output path of one eval-mode forward pass.
    The model may live on the meta device (no arithmetic)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(1, *input_size, device=device)
    setattr(x, _DEPTH, 0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _DepthTracer():
            out = model(x)
    finally:
        model.train(was_training)
    return max(getattr(t, _DEPTH, 0) for t in tensors_in(out))


# ------------------------------------------------------------------------------------------------ rows
@dataclass
class ModelRow:
    """One network: static facts, its published accuracy and, when measured, ms per batch-1 step per backend."""

    name: str
    family: str
    input_size: tuple[int, int, int]
    params: int
    macs: int
    depth: int
    published: Published | None
    times_ms: dict[str, float | None] = field(default_factory=dict)  # None: the backend failed on this network

    @property
    def size_mb(self) -> float:
        return 4 * self.params / 2**20

    def to_dict(self) -> dict:
        return {"model": self.name, "family": self.family, "input_size": list(self.input_size),
                "size_mb": round(self.size_mb, 3), "params": self.params, "macs": self.macs, "depth": self.depth,
                "published": self.published.to_dict() if self.published else None,
                "time_ms": dict(self.times_ms)}


def static_row(name: str) -> ModelRow:
    """Every column but the timings, from the network built on the meta device at its default input size."""
    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name)
    summary = summarize(model, info.input_size, name)
    return ModelRow(name, info.family, tuple(info.input_size), summary.total_params, summary.total_macs,
                    model_depth(model, info.input_size), published(name))


# ---------------------------------------------------------------------------------------------- timing
def calibrate_batchnorm(model: nn.Module, input_size: Sequence[int]) -> None:
    """BatchNorm statistics from one random batch of 8, as training would set them (see the module docstring)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: exactly this batch's statistics
    if norms:
        with torch.no_grad():
            model.train()(torch.randn(8, *input_size, generator=torch.Generator().manual_seed(0)))
    model.eval()


def _median_seconds(step: Callable[[], object], warmup: int, repeats: int, budget_s: float) -> float:
    """Median seconds per call after ``warmup`` calls: at least 3 timed calls, at most ``repeats``, and no new
    call once ``budget_s`` has passed."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _eager(model: nn.Module, device: str) -> Callable[[np.ndarray], np.ndarray]:
    # What cnnzoo.runtime.TorchRuntime does with a checkpoint: the model's memory-format hint, inference mode.
    memory_format = torch.channels_last if getattr(model, "channels_last", False) else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    def step(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device).contiguous(memory_format=memory_format)
            return model(x).float().cpu().numpy()

    return step


def _exported(backend: str, onnx_path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    from cnnzoo.runtime import open_runtime

    return open_runtime(onnx_path, backend, threads=threads).logits


def _onnx_file(name: str, model: nn.Module, input_size: Sequence[int], cache_dir: Path) -> Path:
    """The cached ONNX export of a network (random weights: only its speed is of interest)."""
    from cnnzoo.exporting import export

    size = "x".join(map(str, input_size))
    path = Path(cache_dir) / f"{name}-{size}-cnnzoo{cnnzoo.__version__}.onnx"
    if not path.exists():
        # Random-init logits of deep networks are large; the parity check here is only that the file is sound.
        export(model, path, input_size=tuple(input_size), atol=1e-2)
    return path


# backend -> (network, its registry name, input size, export cache, threads) -> one inference step on a numpy batch
_STEPS: dict[str, Callable[..., Callable[[np.ndarray], np.ndarray]]] = {
    "torch": lambda model, name, size, cache, threads: _eager(model, "cpu"),
    "onnxruntime": lambda model, name, size, cache, threads: _exported(
        "onnxruntime", _onnx_file(name, model, size, cache), threads),
    "openvino": lambda model, name, size, cache, threads: _exported(
        "openvino", _onnx_file(name, model, size, cache), threads),
    "cuda": lambda model, name, size, cache, threads: _eager(model, "cuda"),
}


def available_backends() -> list[str]:
    """The BACKENDS this machine can time: torch always, the others when installed (cuda: when a GPU is present)."""
    import importlib.util

    have = {"torch": True, "cuda": torch.cuda.is_available(),
            **{b: importlib.util.find_spec(b) is not None for b in ("onnxruntime", "openvino")}}
    return [b for b in BACKENDS if have[b]]


def time_model(name: str, backends: Sequence[str], cache_dir: str | Path = DEFAULT_CACHE, *, warmup: int = WARMUP,
               repeats: int = REPEATS, budget_s: float = BUDGET_S, threads: int | None = None,
               notes: list[str] | None = None) -> dict[str, float | None]:
    """Milliseconds per batch-1 inference step of a registered network on each backend (see the module
    docstring), with ``threads`` intra-op threads on every CPU backend (default: each library's own default).
    A backend that fails on the network gets None, and the reason is appended to ``notes``."""
    info = model_info(name)
    size = tuple(info.input_size)
    torch.manual_seed(0)
    model = create_model(name)
    calibrate_batchnorm(model, size)
    batch = np.random.default_rng(0).standard_normal((1, *size), dtype=np.float32)
    times: dict[str, float | None] = {}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads or torch_threads)
    try:
        for backend in sorted(backends, key=BACKENDS.index):  # BACKENDS order: cuda, which moves the model, last
            try:
                step = _STEPS[backend](model, name, size, Path(cache_dir), threads)
                times[backend] = 1e3 * _median_seconds(lambda: step(batch), warmup, repeats, budget_s)
            except (UserError, RuntimeError) as err:  # a backend that cannot run one network must not stop the table
                times[backend] = None
                if notes is not None:
                    notes.append(f"{name} on {backend}: {str(err).strip().splitlines()[0][:200]}")
    finally:
        torch.set_num_threads(torch_threads)
    return times


# --------------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    try:
        cores, current = set(), {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = (part.strip() for part in line.partition(":"))
            if not key:
                cores.add((current.get("physical id"), current.get("core id")))
                current = {}
            else:
                current[key] = value
        cores.discard((None, None))
        return len(cores) or None
    except OSError:
        return None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info(threads: int | None = None) -> dict:
    """What the timings were measured on: CPU, cores, threads (``threads``, else each library's default), GPU,
    library versions and the date (UTC)."""
    from cnnzoo.runtime import default_threads

    return {
        "date": datetime.now(timezone.utc).date().isoformat(),
        "cpu": _cpu_model(),
        "physical_cores": _physical_cores(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "runtime_threads": threads or default_threads(),  # ONNX Runtime's and OpenVINO's intra-op threads
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,  # others' work too
        "versions": {p: _version(p) for p in ("cnnzoo", "torch", "onnxruntime", "openvino")},
    }


def _describe_machine(m: dict, backends: Sequence[str]) -> str:
    cores = f"{m['physical_cores']} cores, " if m.get("physical_cores") else ""
    v = m["versions"]
    threads = lambda n: f"{n} thread" + ("s" if n != 1 else "")  # noqa: E731
    libs = [f"torch {v['torch']} ({threads(m['torch_threads'])})"]
    libs += [f"{b} {v[b]} ({threads(m['runtime_threads'])})" for b in ("onnxruntime", "openvino") if b in backends]
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") and "cuda" in backends else ""
    load = f", load average {m['load_average']} at the start" if m.get("load_average") is not None else ""
    return (f"Measured {m['date']} on {m['cpu']} ({cores}{m['logical_cpus']} logical CPUs{load}){gpu}, {m['os']}, "
            f"Python {m['python']}; {', '.join(libs)}; cnnzoo {v['cnnzoo']}.")


# ---------------------------------------------------------------------------------------- model table
STATIC_HEADER = ("model", "size (MB)", "top-1", "top-5", "params", "depth", "MACs", "input")
_ALIGN = {"model": ":--", "input": ":--", "source": ":--"}  # the rest right-aligned


def _pct(value: float | None) -> str:
    return "" if value is None else str(value)


def static_cells(row: ModelRow) -> tuple[str, ...]:
    """The Markdown cells of the static columns (STATIC_HEADER), as docs/models.md shows them."""
    pub = row.published
    return (row.name, f"{row.size_mb:.1f}", _pct(pub and pub.top1), _pct(pub and pub.top5), f"{row.params:,}",
            str(row.depth), format_count(row.macs).strip(), "x".join(map(str, row.input_size)))


def _ms(value: float | None) -> str:
    return "failed" if value is None else f"{value:.3g}"


@dataclass
class Comparison:
    """The table of ``compare_models``: rows, the backends timed, the machine they were timed on."""

    rows: list[ModelRow]
    backends: list[str] = field(default_factory=list)  # timed backends; [] for a static table
    machine: dict | None = None
    notes: list[str] = field(default_factory=list)  # exports or backends that failed
    warmup: int = WARMUP
    repeats: int = REPEATS

    def header(self) -> tuple[str, ...]:
        return (*STATIC_HEADER, *(f"{b} (ms)" for b in self.backends), "source")

    def sources(self) -> list[str]:
        """The distinct full sources, in the order the rows first cite them (the footnotes)."""
        return list(dict.fromkeys(r.published.source for r in self.rows if r.published))

    def timing_note(self) -> str:
        if not self.backends:
            return "No timings (static columns only)."
        return (f"Time per inference step at batch 1: median of up to {self.repeats} steps after {self.warmup} "
                f"warm-up steps, random weights. " + _describe_machine(self.machine or machine_info(), self.backends))

    def to_markdown(self) -> str:
        sources = {s: i + 1 for i, s in enumerate(self.sources())}
        header = self.header()
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(_ALIGN.get(h, "--:") for h in header) + "|"]
        for r in self.rows:
            times = [_ms(r.times_ms[b]) if b in r.times_ms else "" for b in self.backends]
            source = f"[{sources[r.published.source]}]" if r.published else ""
            lines.append("| " + " | ".join([*static_cells(r), *times, source]) + " |")
        notes = [f"[{i}] {s}" for s, i in sources.items()]
        return "\n".join([self.timing_note(), "", *lines, "", *(n + "  " for n in notes), *self.notes])

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["model", "family", "size_mb", "top1", "top5", "params", "depth", "macs", "input",
                         *(f"{b}_ms" for b in self.backends), "source"])
        for r in self.rows:
            pub = r.published
            writer.writerow([r.name, r.family, f"{r.size_mb:.3f}", pub and pub.top1, pub and pub.top5, r.params,
                             r.depth, r.macs, "x".join(map(str, r.input_size)),
                             *(r.times_ms.get(b) for b in self.backends), pub.source if pub else None])
        return out.getvalue()

    def to_json(self) -> str:
        return json.dumps({"machine": self.machine, "backends": self.backends, "warmup": self.warmup,
                           "repeats": self.repeats, "notes": self.notes, "models": [r.to_dict() for r in self.rows]},
                          indent=1)

    def render(self, fmt: str) -> str:
        return {"markdown": self.to_markdown, "csv": self.to_csv, "json": self.to_json}[fmt]()


def _progress(items: Sequence, show: bool, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, disable=not show, leave=False, dynamic_ncols=True)


def _resolve_names(patterns: Sequence[str]) -> list[str]:
    names: list[str] = []
    for pattern in patterns or ["*"]:
        found = list_models(pattern)
        if not found:
            model_info(pattern)  # an exact name that is not registered: the error names the closest ones
            raise UserError(f"no model matches {pattern!r}")
        names += [n for n in found if n not in names]
    return names


def compare_models(patterns: Sequence[str] = ("*",), *, timing: bool = True, timed: Sequence[str] | None = None,
                   backends: Sequence[str] | None = None, cache_dir: str | Path | None = None, progress: bool = False,
                   threads: int | None = None, warmup: int = WARMUP, repeats: int = REPEATS,
                   budget_s: float = BUDGET_S) -> Comparison:
    """The table of the networks matching ``patterns`` (glob patterns or names), in the order given.

    Args:
        timing: measure the time per inference step; False gives the static columns only.
        timed: patterns of the networks to time (default: all chosen); the others keep empty timing cells.
        backends: BACKENDS to time (default: every available one).
        cache_dir: where ONNX exports are cached (default DEFAULT_CACHE).
        progress: a progress bar on stderr.
        threads: intra-op threads of every CPU backend (default: each library's own; 1 is the steadiest on a
            machine other work shares: two-thread PyTorch eager there can lose 10x to OpenMP's waiting threads).
    """
    names = _resolve_names(patterns)
    backends = list(backends) if backends is not None else available_backends()
    unknown = [b for b in backends if b not in BACKENDS]
    missing = [b for b in backends if b in BACKENDS and b not in available_backends()]
    if unknown or missing:
        what = f"unknown backend {unknown[0]!r}" if unknown else f"backend {missing[0]!r} is not available here"
        raise UserError(f"{what}; available: {', '.join(available_backends())}")
    to_time = set(_resolve_names(timed) if timed else names) if timing else set()
    result = Comparison([], backends if timing else [], machine_info(threads) if timing else None,
                        warmup=warmup, repeats=repeats)
    bar = _progress(names, progress, "compare")
    for name in bar:
        bar.set_postfix_str(name)
        row = static_row(name)
        if name in to_time:
            row.times_ms = time_model(name, backends, cache_dir or DEFAULT_CACHE, warmup=warmup, repeats=repeats,
                                      budget_s=budget_s, threads=threads, notes=result.notes)
        result.rows.append(row)
    return result


DOCS_INTRO = """# The zoo side by side

Generated by `cnnzoo compare --threads 1 --update-docs docs/models.md` (the networks of `cnnzoo.compare.DOCS_TIMED`
timed, all others with their static columns only); a test keeps the static columns current. Columns:

- **size (MB)**: the float32 weights, 4 bytes per parameter, in MB of 2^20 bytes (as Keras' applications table).
- **top-1, top-5**: *published* ImageNet-1K validation accuracy (%), as reported by the source in the last column,
  not measured by cnnzoo. For networks torchvision has: torchvision's documented figures of its `IMAGENET1K_V1`
  weights (the original training recipe; the later V2 recipes add several points without changing the
  architecture, so they are not shown). Others: the paper or Keras table named in the footnote, only where the exact
  number is known; paper figures may use another test protocol (10 crops, a validation subset), as the note says.
  A blank cell: no such published figure.
- **params**: parameters at the default class count. **MACs**: multiply-accumulates of one image at **input**.
- **depth**: weight layers (convolutions and linear layers) on the longest input-to-output path of the eval-mode
  forward pass (VGG-16: 16, ResNet-50: 50, GoogLeNet: 22; squeeze-and-excitation layers count).
- **(ms)**: time per inference step at batch 1 on the machine below, per backend: PyTorch eager, ONNX Runtime and
  OpenVINO on the ONNX export. Random weights; only the ten most-used networks are timed here. One thread per
  backend: on this 2-core machine, shared with other work, two-thread PyTorch eager lost up to 10x to OpenMP's
  waiting threads whenever another process ran (AlexNet: 200 ms with two threads, 27 ms with one).
"""


def write_docs(path: str | Path, comparison: Comparison) -> Path:
    """Write the Markdown page of docs/models.md: the introduction, then the table with its machine and sources."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DOCS_INTRO + "\n" + comparison.to_markdown() + "\n")
    return path


# ------------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """A training run folder: its config.json and its metrics.jsonl (one dict per epoch)."""

    path: Path
    config: dict
    epochs: list[dict]

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def model_name(self) -> str:
        return str(self.config.get("model", "?"))

    @property
    def best_top1(self) -> float:
        return max(e["val_top1"] for e in self.epochs)


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (it holds a metrics.jsonl)."""
    return (Path(path) / "metrics.jsonl").is_file()


def _all_runs(targets: Sequence[str], command: str) -> bool:
    """Whether every target is a run folder (False: all are model names or patterns). A mixture is refused, naming
    the targets that are not runs: most often a mistyped run folder among real ones."""
    others = [t for t in targets if not is_run(t)]
    if targets and not others:
        return True
    if len(others) < len(targets):
        raise UserError(f"{', '.join(others)}: not a run folder (one holds metrics.jsonl); {command} either run "
                        "folders or model names, not both")
    return False


def load_run(path: str | Path) -> Run:
    """Read a run folder written by ``cnnzoo.fit``.

    Raises:
        UserError: no metrics.jsonl or config.json, or no finished epoch yet.
    """
    path = Path(path)
    if not is_run(path) or not (path / "config.json").is_file():
        raise UserError(f"{path} is not a run folder (it needs config.json and metrics.jsonl)")
    try:
        config = json.loads((path / "config.json").read_text())
        epochs = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: unreadable config.json or metrics.jsonl ({err})") from None
    if not epochs:
        raise UserError(f"{path}: no finished epoch in metrics.jsonl yet")
    return Run(path, config, epochs)


@dataclass
class RunRow:
    """One run in the side-by-side table: accuracies in percent, training time in seconds."""

    run: str
    model: str
    data: str
    epochs: int
    best_top1: float
    last_top1: float
    params: int | None
    macs: int | None
    train_seconds: float
    img_s: float  # median over epochs of the training throughput

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _size_of_run(run: Run) -> tuple[int | None, int | None]:
    """Parameters and MACs of the run's network, from its checkpoint's card (no weights are used)."""
    from cnnzoo.checkpoint import build_model, load_checkpoint

    ckpt_path = next((run.path / f for f in ("best.pt", "last.pt") if (run.path / f).is_file()), None)
    if ckpt_path is None:
        return None, None
    card = load_checkpoint(ckpt_path).card
    with torch.device("meta"):
        model = build_model(card)
    summary = summarize(model, card.input.size, card.model_name)
    return summary.total_params, summary.total_macs


def run_row(run: Run) -> RunRow:
    data = run.config.get("data")
    params, macs = _size_of_run(run)
    return RunRow(run.label, run.model_name, data.get("name", "?") if isinstance(data, dict) else str(data),
                  len(run.epochs), 100 * run.best_top1, 100 * run.epochs[-1]["val_top1"], params, macs,
                  float(run.epochs[-1].get("time", math.nan)),
                  statistics.median(e.get("img_s", math.nan) for e in run.epochs))


RUN_HEADER = ("run", "model", "data", "epochs", "best top-1", "last top-1", "params", "MACs", "train time",
              "img/s")


def _run_cells(r: RunRow) -> tuple[str, ...]:
    count = lambda n: "" if n is None else format_count(n).strip()  # noqa: E731
    minutes, seconds = divmod(r.train_seconds, 60)
    return (r.run, r.model, r.data, str(r.epochs), f"{r.best_top1:.2f}", f"{r.last_top1:.2f}",
            "" if r.params is None else f"{r.params:,}", count(r.macs), f"{int(minutes)}m{seconds:04.1f}s",
            f"{r.img_s:.0f}")


@dataclass
class RunComparison:
    """The table of ``compare_runs``, and the PNG of their curves overlaid."""

    rows: list[RunRow]
    runs: list[Run]
    curves: Path | None = None

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(RUN_HEADER) + " |", "|" + "|".join([":--"] * 3 + ["--:"] * 7) + "|"]
        lines += ["| " + " | ".join(_run_cells(r)) + " |" for r in self.rows]
        return "\n".join(lines)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(list(RunRow.__dataclass_fields__))
        writer.writerows([list(r.to_dict().values()) for r in self.rows])
        return out.getvalue()

    def to_json(self) -> str:
        return json.dumps({"runs": [r.to_dict() for r in self.rows],
                           "curves": str(self.curves) if self.curves else None}, indent=1)

    def render(self, fmt: str) -> str:
        return {"markdown": self.to_markdown, "csv": self.to_csv, "json": self.to_json}[fmt]()


def compare_runs(paths: Sequence[str | Path], curves: str | Path | None = "runs_compare.png") -> RunComparison:
    """Runs side by side: model, data, epochs, best and last validation top-1, size, training time and speed;
    with ``curves``, a PNG overlaying their loss and top-1 per epoch (cnnzoo.plots.plot_runs)."""
    runs = [load_run(p) for p in paths]
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # runs/a/x and runs/b/x: tell them apart by their parent folder
        labels = [f"{r.path.parent.name}/{r.label}" for r in runs]
    result = RunComparison([run_row(r) for r in runs], runs)
    for row, label in zip(result.rows, labels):
        row.run = label
    if curves:
        from cnnzoo.plots import plot_runs

        result.curves = plot_runs({label: r.epochs for label, r in zip(labels, runs)}, curves)
    return result


def compare(targets: Sequence[str], **kwargs) -> Comparison | RunComparison:
    """``compare_runs`` when every target is a run folder, else ``compare_models`` on targets as name patterns.

    Raises:
        UserError: run folders mixed with model names.
    """
    if _all_runs(targets, "compare"):
        return compare_runs(targets, **{k: v for k, v in kwargs.items() if k == "curves"})
    return compare_models(targets or ["*"], **{k: v for k, v in kwargs.items() if k != "curves"})


# ------------------------------------------------------------------------------------------------ chart
PUBLISHED_NOTE = ("Published ImageNet-1K top-1 (torchvision IMAGENET1K_V1 weights, else the paper or Keras' table; "
                  "cnnzoo.published), not measured here. MACs at each network's default input size.")


def chart_points(targets: Sequence[str] = (), progress: bool = False) -> tuple[list, str, str]:
    """The bubbles of ``chart``: (points, title, note). Run folders give one bubble per run (its best validation
    top-1, its network's MACs and parameters); name patterns (default all) one per network with a published
    top-1."""
    from cnnzoo.plots import ChartPoint

    if _all_runs(targets, "chart"):
        result = compare_runs(targets, curves=None)
        points = [ChartPoint(row.run, row.macs, row.best_top1, row.params, model_info(row.model).family)
                  for row in result.rows if row.macs is not None]
        note = "Best validation top-1 of each run (its own data set); MACs at the run's input size."
        return points, "Best validation top-1 of the runs against compute", note
    names = [n for n in _resolve_names(targets or ["*"]) if published(n) and published(n).top1 is not None]
    if not names:
        raise UserError("none of these networks has a published top-1")
    rows = [static_row(n) for n in _progress(names, progress, "chart")]
    points = [ChartPoint(r.name, r.macs, r.published.top1, r.params, r.family) for r in rows]
    return points, "ImageNet top-1 (published) against compute", PUBLISHED_NOTE


def chart(targets: Sequence[str] = (), out: str | Path = "accuracy_vs_macs.png", progress: bool = False) -> Path:
    """The accuracy-versus-compute chart (cnnzoo.plots.accuracy_figure) of published figures or of runs, as PNG."""
    from cnnzoo.plots import accuracy_figure, save_png

    points, title, note = chart_points(targets, progress)
    return save_png(accuracy_figure(points, title, note), out)
