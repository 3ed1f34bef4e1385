"""Reduced-precision inference, chosen by measured accuracy: the candidates, the accuracy gate, the speed
measurement and the deploy record an export leaves in its artifact.

    fp32  float32 throughout: the reference every reduced precision is judged against
    bf16  bfloat16 arithmetic on the float32 file: OpenVINO's INFERENCE_PRECISION_HINT=bf16 on CPUs that compute
          it (AVX512-BF16, AMX), torch autocast on the torch backend (float16 on CUDA); ONNX Runtime's CPU
          provider has no bf16 kernels
    int8  post-training static quantisation calibrated on the user's training images: ONNX Runtime's QDQ in an
          .onnx, NNCF on the OpenVINO model in an IR (.xml)
    auto  the fastest configuration that passes its gate, measured on this machine at export

The gate (Gate): on the user's validation images (or training images held out from calibration when there is no
validation split) a reduced precision must give the same top-1 class as fp32 on at least ``min_agreement`` % of the
images and lose at most ``max_drop`` points of top-1 accuracy. A configuration that fails is never used; its reason
is kept in the record and shown. The choice, its speed at batch 1 and the service's batch, its accuracy figures and
the alternatives are stored as a Deployment under ``card.extra["deploy"]``, so open_runtime (predict, serve) runs
the chosen backend and precision without measuring again.

Torch-free at import (numpy, PIL and the core; the torch bf16 check imports torch when asked): runtimes are
passed in, this module never opens one.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cnnzoo.artifact import ArtifactError, ModelCard
from cnnzoo.errors import UserError
from cnnzoo.images import fit_image, normalize, open_image, scan_image_folder

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "DEFAULT_BATCH", "Gate", "Verdict", "Candidate", "CANDIDATES",
           "candidates_for", "stored_precision", "int8_card", "Trial", "Deployment", "GateImages", "load_gate_images", "labelled_images",
           "bf16_refusal", "check_precision", "measure_speed", "time_interleaved", "run_trials", "choose",
           "trials_table", "openvino_core"]

PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_CHOICES = ("auto", *PRECISIONS)
ALIASES = {"f32": "fp32", "float32": "fp32", "bfloat16": "bf16"}  # "f32" was runtime.PRECISIONS' spelling
DEFAULT_BATCH = 16  # the service's --max-batch: the second batch size auto measures at
SPEED_BUDGET_S = 0.5  # seconds of timed calls per candidate and batch size at export
SPEED_ROUNDS = 3  # the candidates are timed in turn, this many times over: a burst of load hits one round of each
HELD_OUT = 5  # without a validation split, every 5th training image (per class) is held out for the gate


WEIGHTS_KEY = "weights"  # card.extra of a quantised export: "int8"; float files leave it out


def stored_precision(card: ModelCard) -> str:
    """What a file's weights are: "int8" for a quantised export, else "fp32" (which also runs as bf16)."""
    stored = card.extra.get(WEIGHTS_KEY, "fp32")
    if stored not in ("fp32", "int8"):  # a card written elsewhere: one line, not a KeyError in a runtime
        raise ArtifactError(f"the model card says its weights are {stored!r}: neither fp32 nor int8")
    return stored


def int8_card(card: ModelCard) -> ModelCard:
    """``card`` marked as the card of a quantised file."""
    return replace(card, extra={**card.extra, WEIGHTS_KEY: "int8"})


def check_precision(precision: str, choices: Sequence[str] = PRECISION_CHOICES) -> str:
    """The canonical name of a precision, or a UserError naming the choices."""
    name = ALIASES.get(precision, precision)
    if name not in choices:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(choices)}")
    return name


# ---------------------------------------------------------------------------------------------------------------
# What this machine can compute
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def openvino_core():
    """The process's one ov.Core, which every OpenVINO user in cnnzoo shares (here, below the runtimes, because the
    capability probe below needs it too).

    Each Core loads OpenVINO's CPU plugin for itself, and the plugin gives the thread that loads it a signal stack of
    its own, unmapped when the plugin is freed; the previous stack is put back only if the plugins are freed in the
    reverse order of their loading. Two Cores freed in any other order leave the thread's signal stack unmapped, and
    the next signal the process handles (Ctrl-C, a child's exit once torch's DataLoader watches for it) kills it
    with a SIGSEGV that no handler can report. One Core kept for the life of the process loads the plugin once."""
    import openvino as ov

    return ov.Core()


def _openvino_bf16() -> str | None:
    caps = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        return None
    return f"this CPU has no bf16 arithmetic (OpenVINO's CPU capabilities: {', '.join(caps)})"


def _torch_bf16() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None  # autocast to float16 on CUDA
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return "this CPU has no bf16 arithmetic (oneDNN reports no AVX512-BF16/AMX), and emulated bf16 is slower than fp32"


_BF16_CHECKS: dict[str, Callable[[], str | None]] = {
    "openvino": _openvino_bf16,
    "torch": _torch_bf16,
    "onnxruntime": lambda: "ONNX Runtime's CPU provider has no bf16 kernels; use --backend openvino or torch",
}


def bf16_refusal(backend: str) -> str | None:
    """Why ``backend`` cannot run bf16 on this machine, or None when it can."""
    return _BF16_CHECKS[backend]()


# ---------------------------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """The accuracy a reduced precision must keep, measured against fp32 on the same images."""

    min_agreement: float = 99.5  # % of images whose top-1 class equals fp32's
    max_drop: float = 0.5  # points of top-1 accuracy the reduced precision may lose against fp32

    def __post_init__(self):
        if not 0 <= self.min_agreement <= 100:  # also refuses nan
            raise UserError(f"--min-agreement must lie in 0..100 %, got {self.min_agreement}")
        if not 0 <= self.max_drop <= 100:
            raise UserError(f"--max-drop must lie in 0..100 points, got {self.max_drop}")

    def judge(self, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Verdict:
        """The verdict on ``logits`` (N x K) against fp32's ``reference`` logits, with the true ``labels``."""
        ref, got = reference.argmax(1), logits.argmax(1)
        verdict = Verdict(agreement=100.0 * float(np.mean(ref == got)),
                          top1_fp32=100.0 * float(np.mean(ref == labels)), top1=100.0 * float(np.mean(got == labels)),
                          images=len(labels))
        problems = []
        if verdict.agreement < self.min_agreement:
            problems.append(f"top-1 agrees with fp32 on {verdict.agreement:.2f}% of {len(labels)} images "
                            f"(limit {self.min_agreement:g}%)")
        if verdict.drop > self.max_drop:
            problems.append(f"top-1 drops {verdict.drop:.2f} points ({verdict.top1_fp32:.2f}% -> {verdict.top1:.2f}%; "
                            f"limit {self.max_drop:g})")
        return replace(verdict, reason="; ".join(problems) or None)


@dataclass(frozen=True)
class Verdict:
    """Accuracy of one configuration against fp32. ``reason`` is None when the gate passes."""

    agreement: float  # % of images with fp32's top-1 class
    top1_fp32: float  # % top-1 accuracy of fp32 and of this configuration
    top1: float
    images: int
    reason: str | None = None

    @property
    def drop(self) -> float:
        return self.top1_fp32 - self.top1


# ---------------------------------------------------------------------------------------------------------------
# The images the gate and the calibration use
# ---------------------------------------------------------------------------------------------------------------


def labelled_images(folder: str | Path, classes: Sequence[str], limit: int | None = None) -> list[tuple[Path, int]]:
    """(path, class index) of an ImageFolder, taken round-robin over classes so a prefix covers them all."""
    folder_classes, samples = scan_image_folder(folder)
    index = {name: i for i, name in enumerate(classes)}
    stray = [name for name in folder_classes if name not in index]
    if stray:
        raise UserError(f"{Path(folder) / stray[0]}: class {stray[0]!r} is not one of the model's classes")
    per_class = [[(Path(p), index[name]) for p, label in samples if label == i]
                 for i, name in enumerate(folder_classes)]
    items = [item for group in zip(*per_class) for item in group]
    # zip stops at the shortest class; append the remainder in order so no image is lost
    taken = {p for p, _ in items}
    items += [item for group in per_class for item in group if item[0] not in taken]
    return items[:limit] if limit else items


@dataclass
class GateImages:
    """Calibration images (float32, preprocessed) and the gate's labelled images (uint8, fitted to the input: a
    quarter of the memory; normalised batch by batch)."""

    card: ModelCard
    calibration: np.ndarray  # N x C x H x W float32, preprocessed as every runtime does
    fitted: np.ndarray  # M x H x W x C uint8 (cnnzoo.images.fit_image)
    labels: np.ndarray  # M class indices
    source: str  # where the gate's images came from, for the record

    def batches(self, size: int = 32):
        for start in range(0, len(self.fitted), size):
            yield np.stack([normalize(a, self.card.input) for a in self.fitted[start : start + size]])


def _fitted(items, card: ModelCard) -> np.ndarray:
    return np.stack([fit_image(open_image(p, channels=card.input.channels), card.input) for p, _ in items])


def load_gate_images(calib_data: str | Path, val_data: str | Path | None, card: ModelCard, calib_images: int = 100,
                     val_images: int | None = 500) -> GateImages:
    """Calibration images from ``calib_data`` (training images) and the gate's images from ``val_data``; without a
    validation folder every HELD_OUT-th training image (round-robin over classes) is held out from calibration."""
    train = labelled_images(calib_data, card.classes)
    if val_data is not None and Path(val_data).is_dir():
        val, source = labelled_images(val_data, card.classes, val_images), f"{val_data}"
    else:  # every HELD_OUT-th image of each class, in the round-robin order (a prefix still covers the classes)
        seen: Counter[int] = Counter()
        held = []
        for _, label in train:
            seen[label] += 1
            held.append(seen[label] % HELD_OUT == 0)
        val = [item for item, h in zip(train, held) if h][:val_images]
        train = [item for item, h in zip(train, held) if not h]
        source = f"{len(val)} images held out of {calib_data} (no validation folder)"
    if not train or not val:
        raise UserError(f"{calib_data}: too few images to calibrate and check a reduced precision")
    calibration = _fitted(train[:calib_images], card)
    calibration = np.stack([normalize(a, card.input) for a in calibration])
    return GateImages(card, calibration, _fitted(val, card), np.array([y for _, y in val]), source)


# ---------------------------------------------------------------------------------------------------------------
# Candidates and their measurement
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One configuration: a backend at a precision, on the file it runs (its kind: an export format)."""

    backend: str
    precision: str
    kind: str  # "onnx", "openvino" (an IR) or "torchscript"

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


# Every configuration, by the file that carries it. A float file serves fp32 and bf16 (bf16 is an execution
# setting); an int8 file is quantised: ONNX Runtime's QDQ in an .onnx, NNCF's in an IR.
CANDIDATES = {
    "onnx": [Candidate("onnxruntime", "fp32", "onnx"), Candidate("openvino", "fp32", "onnx"),
             Candidate("openvino", "bf16", "onnx"), Candidate("onnxruntime", "int8", "onnx"),
             Candidate("openvino", "int8", "onnx")],
    "openvino": [Candidate("openvino", "fp32", "openvino"), Candidate("openvino", "bf16", "openvino"),
                 Candidate("openvino", "int8", "openvino")],
    "torchscript": [Candidate("torch", "fp32", "torchscript"), Candidate("torch", "bf16", "torchscript")],
}
# auto with no format asked: every .onnx configuration, and NNCF's int8 IR in place of the QDQ file on OpenVINO.
ANY_FORMAT = [c for c in CANDIDATES["onnx"] if c.name != "openvino int8"] + [CANDIDATES["openvino"][2]]


def candidates_for(format: str | None, precision: str) -> list[Candidate]:
    """The configurations an export measures: the fp32 reference first, then those of the asked precision (all of
    them for auto). ``format`` None (auto only): any file kind."""
    pool = ANY_FORMAT if format is None else CANDIDATES[format]
    return [c for c in pool if c is pool[0] or precision in ("auto", c.precision)]


@dataclass
class Trial:
    """What one candidate measured: speed (images/s per batch size) and, for a reduced precision, its verdict."""

    backend: str
    precision: str
    kind: str
    images_per_s: dict[int, float] = field(default_factory=dict)
    agreement: float | None = None
    top1: float | None = None
    top1_fp32: float | None = None
    reason: str | None = None  # why it is not used (failed gate, refused by the machine); None: it may be used

    @property
    def passed(self) -> bool:
        return self.reason is None

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"

    @property
    def score(self) -> float:
        """Geometric mean of the images/s over the measured batch sizes: no batch size dominates the choice."""
        speeds = list(self.images_per_s.values())
        return math.exp(statistics.fmean(math.log(s) for s in speeds)) if speeds and min(speeds) > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = {str(b): round(s, 2) for b, s in self.images_per_s.items()}  # JSON keys are strings
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trial:
        speeds = {int(b): float(s) for b, s in (d.get("images_per_s") or {}).items()}
        return cls(d["backend"], d["precision"], d.get("kind", ""), speeds, d.get("agreement"), d.get("top1"),
                   d.get("top1_fp32"), d.get("reason"))


def measure_speed(runtime, batch_sizes: Sequence[int], budget_s: float | None = None) -> dict[int, float]:
    """Images per second of ``runtime.logits`` at each batch size: the median call after two warm-ups, over about
    ``budget_s`` (default SPEED_BUDGET_S) seconds per batch size (at least 3 calls)."""
    budget_s = SPEED_BUDGET_S if budget_s is None else budget_s
    c, h, w = runtime.input_size
    rng = np.random.default_rng(0)
    speeds = {}
    for batch in batch_sizes:
        x = rng.standard_normal((batch, c, h, w), dtype=np.float32)
        runtime.logits(x)
        runtime.logits(x)
        times, start = [], time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 200):
            t = time.perf_counter()
            runtime.logits(x)
            times.append(time.perf_counter() - t)
        speeds[batch] = batch / statistics.median(times)
    return speeds


def _logits(runtime, images: GateImages) -> np.ndarray:
    return np.concatenate([runtime.logits(x) for x in images.batches()])


def run_trials(openers: Sequence[tuple[Candidate, Callable[[], object]]], images: GateImages, gate: Gate,
               batch_sizes: Sequence[int], budget_s: float | None = None,
               log: Callable[[str], None] | None = None) -> list[Trial]:
    """Open, judge and time each candidate. The first is the fp32 reference; a candidate whose opener raises a
    UserError (a CPU without bf16, a quantisation that fails) is refused with that message; a reduced precision
    that fails the gate is refused and not timed. The others are timed interleaved, SPEED_ROUNDS rounds of
    ``budget_s`` / SPEED_ROUNDS each; a batch size's images/s is the median over the rounds."""
    trials, reference, timed = [], None, []
    for candidate, opener in openers:
        trial = Trial(candidate.backend, candidate.precision, candidate.kind)
        trials.append(trial)
        try:
            runtime = opener()
        except UserError as err:
            trial.reason = f"refused: {err}"
        else:
            logits = _logits(runtime, images)
            reference = logits if reference is None else reference
            verdict = gate.judge(reference, logits, images.labels)
            trial.agreement, trial.top1, trial.top1_fp32 = verdict.agreement, verdict.top1, verdict.top1_fp32
            if candidate.precision != "fp32":  # fp32 on another backend is the same arithmetic: no gate
                trial.reason = verdict.reason and f"fails the gate: {verdict.reason}"
            if trial.passed:
                timed.append((trial, runtime))
    for (trial, _), speeds in zip(timed, time_interleaved([runtime for _, runtime in timed], batch_sizes, budget_s)):
        trial.images_per_s = speeds
    for trial in trials if log else ():
        log(trial_line(trial))
    return trials


def time_interleaved(runtimes: Sequence[object], batch_sizes: Sequence[int], budget_s: float | None = None
                     ) -> list[dict[int, float]]:
    """Images/s of each runtime at each batch size, timed in turn SPEED_ROUNDS times over (``budget_s``, default
    SPEED_BUDGET_S, split over the rounds): the median over the rounds, so a burst of load on a shared machine hits
    one round of each runtime, not all of one."""
    budget_s = (SPEED_BUDGET_S if budget_s is None else budget_s) / SPEED_ROUNDS
    rounds = [[measure_speed(runtime, batch_sizes, budget_s) for runtime in runtimes] for _ in range(SPEED_ROUNDS)]
    return [{b: statistics.median(speeds[i][b] for speeds in rounds) for b in batch_sizes}
            for i in range(len(runtimes))]


def choose(trials: Sequence[Trial], precision: str) -> Trial:
    """The fastest trial that passed, among those of ``precision`` (any for auto); a UserError with every
    refusal's reason when none did."""
    eligible = [t for t in trials if precision in ("auto", t.precision)]
    passed = [t for t in eligible if t.passed]
    if not passed:
        reasons = "; ".join(f"{t.name}: {t.reason}" for t in eligible)
        raise UserError(f"no {precision} configuration passes: {reasons}")
    return max(passed, key=lambda t: t.score)


def trial_line(trial: Trial) -> str:
    speeds = ", ".join(f"batch {b} {s:.1f} img/s" for b, s in trial.images_per_s.items())
    accuracy = "" if trial.agreement is None else f"agreement {trial.agreement:.2f}%, top-1 {trial.top1:.2f}%"
    return f"{trial.name}: " + "; ".join(x for x in (speeds, accuracy, trial.reason) if x)


def trials_table(trials: Sequence[Trial], chosen: Trial | None) -> str:
    """The alternatives as a fixed-column table, the chosen one marked with *."""
    sizes = sorted({b for t in trials for b in t.images_per_s})
    head = f"  {'backend':<12} {'precision':<9} {'file':<11}" + "".join(f"{f'b{b} img/s':>12}" for b in sizes)
    head += f" {'agree %':>8} {'top-1 %':>8}  status"
    lines = [head]
    for t in trials:
        mark = "*" if t is chosen else " "
        speeds = "".join(f"{t.images_per_s[b]:>12.1f}" if b in t.images_per_s else f"{'-':>12}" for b in sizes)
        agree = "-" if t.agreement is None else f"{t.agreement:.2f}"
        top1 = "-" if t.top1 is None else f"{t.top1:.2f}"
        status = "chosen" if t is chosen else ("passes" if t.passed else t.reason)
        lines.append(f"{mark} {t.backend:<12} {t.precision:<9} {t.kind:<11}{speeds} {agree:>8} {top1:>8}  {status}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The deploy record
# ---------------------------------------------------------------------------------------------------------------


def _machine() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


@dataclass
class Deployment:
    """The configuration an export chose and why: stored as ``card.extra["deploy"]`` in the exported file, read by
    open_runtime (backend and precision "auto") so predict and serve use it without measuring again."""

    backend: str
    precision: str
    images_per_s: dict[int, float]  # at batch 1 and the service's batch, on the machine below
    agreement: float | None  # % top-1 agreement with fp32 on the gate's images (None for fp32 itself)
    top1: float | None  # % top-1 of the chosen configuration and of fp32 on the gate's images
    top1_fp32: float | None
    gate: Gate
    images: str  # where the gate's images came from
    machine: str = field(default_factory=_machine)
    threads: int = 0
    alternatives: list[Trial] = field(default_factory=list)  # every candidate measured, the chosen one included

    KEY = "deploy"

    @classmethod
    def from_trials(cls, chosen: Trial, trials: Sequence[Trial], gate: Gate, images: str, threads: int
                    ) -> Deployment:
        return cls(chosen.backend, chosen.precision, dict(chosen.images_per_s), chosen.agreement, chosen.top1,
                   chosen.top1_fp32, gate, images, threads=threads, alternatives=list(trials))

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision,
                "images_per_s": {str(b): round(s, 2) for b, s in self.images_per_s.items()},
                "agreement": self.agreement, "top1": self.top1, "top1_fp32": self.top1_fp32,
                "gate": asdict(self.gate), "images": self.images, "machine": self.machine, "threads": self.threads,
                "alternatives": [t.to_dict() for t in self.alternatives]}

    @classmethod
    def from_dict(cls, d: dict) -> Deployment:
        return cls(d["backend"], check_precision(d["precision"], PRECISIONS),
                   {int(b): float(s) for b, s in d.get("images_per_s", {}).items()}, d.get("agreement"),
                   d.get("top1"), d.get("top1_fp32"), Gate(**d.get("gate", {})), d.get("images", ""),
                   d.get("machine", ""), int(d.get("threads", 0)),
                   [Trial.from_dict(t) for t in d.get("alternatives", [])])

    @classmethod
    def of(cls, card: ModelCard) -> Deployment | None:
        """The record of an exported file's card, or None (a plain fp32 export, a checkpoint)."""
        d = card.extra.get(cls.KEY)
        if not d:
            return None
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"the model's deploy record is malformed ({err}); export it again") from None

    def on(self, card: ModelCard) -> ModelCard:
        """``card`` carrying this record."""
        return replace(card, extra={**card.extra, self.KEY: self.to_dict()})

    def describe(self) -> str:
        speeds = ", ".join(f"{s:.1f} img/s at batch {b}" for b, s in self.images_per_s.items())
        accuracy = "" if self.agreement is None else (f"; top-1 agreement with fp32 {self.agreement:.2f}%, "
                                                      f"top-1 {self.top1:.2f}% (fp32 {self.top1_fp32:.2f}%)")
        return f"deploy: {self.backend} {self.precision}, {speeds}{accuracy} on {self.machine}, {self.threads} threads"
