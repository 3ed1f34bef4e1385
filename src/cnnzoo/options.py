"""The allowed range of every numeric option, written once as tables, and the one check that enforces them.

A value outside its range is refused with one line naming the option and the range ("--warmup must be >= 0, got
-3"), before anything is built or written: ``TrainConfig.__post_init__`` checks TRAIN_OPTIONS (so the Python API
is protected as much as the command line), ``load_data`` DATA_OPTIONS, ``split_data`` SPLIT_OPTIONS and the service
(``Limits``, ``create_app``, ``serve``) SERVE_OPTIONS. NaN and infinities are never in range. Torch-free and
dependency-free, so any layer (and `--help`) can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import NamedTuple

from cnnzoo.errors import UserError

__all__ = ["Range", "TRAIN_OPTIONS", "TRAIN_NEEDS", "DATA_OPTIONS", "SPLIT_OPTIONS", "SERVE_OPTIONS", "check",
           "check_value", "check_needs", "describe"]


class Range(NamedTuple):
    """The values an option takes: ``low`` .. ``high`` (None: unbounded), ``ends`` says which ends are allowed
    ("[]" both, "[)" the lower only, "(]" the upper only, "()" neither), ``kind`` is int or float. ``flag`` is how
    a message names the option (None: ``--name``); ``unit`` follows the bounds in it (" s": "> 0 s")."""

    low: float | None
    high: float | None
    ends: str
    kind: type
    about: str
    flag: str | None = None
    unit: str = ""


SEED_MAX = 2**32 - 1  # numpy's np.random.seed takes no more (torch and random would take more)

# TrainConfig's numeric fields (cnnzoo.train); None means "the default" (the model family's, the data's) and is
# not checked here. tests/test_hardening_train.py fails when a numeric field has no row.
TRAIN_OPTIONS: dict[str, Range] = {
    "epochs": Range(1, None, "[]", int, "passes over the training set"),
    "batch_size": Range(1, None, "[]", int, "images per optimizer step, per process"),
    "eval_batch_size": Range(1, None, "[]", int, "images per evaluation batch"),
    "lr": Range(0, None, "(]", float, "peak learning rate"),
    "lr_backbone": Range(0, None, "[]", float, "learning rate of everything but the classifier (0 freezes it)"),
    "momentum": Range(0, 1, "[)", float, "momentum factor; 1 or more never forgets a gradient and diverges"),
    "weight_decay": Range(0, None, "[]", float, "L2 / decoupled weight decay; negative decay grows the weights"),
    "warmup": Range(0, None, "[]", float, "epochs of linear warmup; negative warmup makes the learning rate negative"),
    "step_size": Range(1, None, "[]", int, "epochs between step decays"),
    "milestones": Range(1, None, "[]", int, "epochs of the multistep decays (each of them)"),
    "gamma": Range(0, 1, "(]", float, "decay factor of step and multistep; above 1 the learning rate grows"),
    "label_smoothing": Range(0, 1, "[)", float, "share of the target spread over all classes; 1 learns nothing"),
    "aux_weight": Range(0, None, "[]", float, "weight of each auxiliary head's loss"),
    "seed": Range(0, SEED_MAX, "[]", int, "seed of the initial weights, dropout and data order"),
    "workers": Range(0, None, "[]", int, "DataLoader worker processes (0: load in the main process)"),
    "keep_last": Range(0, None, "[]", int, "previous last.pt versions kept as fallbacks"),
    "max_steps": Range(1, None, "[]", int, "optimizer steps before a resumable stop"),
    # Augmentation and regularisers (cnnzoo.augment, the trainer); the order of crop_scale's two ends is checked
    # where the augmentation is built.
    "crop_pad": Range(0, None, "[]", int, "pixels of pad-crop's padding / affine's largest shift"),
    "crop_scale": Range(0, 1, "(]", float, "area fractions of the resized crop (each end)"),
    "erase": Range(0, 1, "[]", float, "probability of random erasing per image"),
    "mixup": Range(0, None, "[]", float, "Beta alpha of mixup (0: off)"),
    "cutmix": Range(0, None, "[]", float, "Beta alpha of cutmix (0: off)"),
    "ema": Range(0, 1, "[)", float, "decay of the weights' moving average (0: off)"),
    "patience": Range(1, None, "[]", int, "epochs without a better val top-1 before stopping"),
    "clip_grad": Range(0, None, "()", float, "largest global L2 norm of the gradients"),
    "drop_path": Range(0, 1, "[)", float, "stochastic depth rate of the deepest block"),
}

# Options that mean something only with another: (option, is it in use?, the option it needs, why).
TRAIN_NEEDS = [
    ("finetune", lambda v: v not in (None, "all"), "init", "the weights to fine-tune; without them all would train"),
    ("new_fc", bool, "init", "the classifier to append a new one to"),
]

# load_data's numeric arguments (cnnzoo.data).
DATA_OPTIONS: dict[str, Range] = {
    "limit": Range(1, None, "[]", int, "images kept per split"),
    "num_classes": Range(2, None, "[]", int, "classes of the fake dataset (one class leaves nothing to learn)"),
    "fake_samples": Range(1, None, "[]", int, "training images of the fake dataset"),
}

# split_data's arguments (cnnzoo.data, `cnnzoo split-data`).
SPLIT_OPTIONS: dict[str, Range] = {
    "val": Range(0, 1, "()", float, "fraction of each class kept for validation"),
    "seed": TRAIN_OPTIONS["seed"],
}

# The service's numeric options (cnnzoo.serving: Limits' fields, create_app's and serve's arguments). A message names
# the `cnnzoo serve` flag and the Python name; --max-body-mb is checked once converted to bytes.
SERVE_OPTIONS: dict[str, Range] = {
    "max_body_bytes": Range(1, None, "[]", int, "request body limit (413)", "--max-body-mb (max_body_bytes)", " byte"),
    "max_pixels": Range(1, None, "[]", int, "pixels per image (413)", "--max-pixels (max_pixels)"),
    "max_in_flight": Range(1, None, "[]", int, "requests served at once (429)", "--max-in-flight (max_in_flight)"),
    "timeout_s": Range(0, None, "()", float, "deadline of one request (504)", "--timeout (timeout_s)", " s"),
    "max_images": Range(1, None, "[]", int, "images per batch request (413)", "--max-images (max_images)"),
    "batch_wait_ms": Range(0, None, "[]", float, "how long a micro-batch waits to fill",
                           "--batch-wait-ms (batch_wait_ms)", " ms"),
    "retry_after_s": Range(0, None, "[]", int, "the Retry-After of a 429", "retry_after_s", " s"),
    "idle_timeout_s": Range(0, None, "()", float, "a connection without a request head is closed", "idle_timeout_s",
                            " s"),
    "port": Range(0, 65535, "[]", int, "TCP port (0: any free port)", "--port (port)"),
    # start-up times a batch this large (and every batch may reach it): a bound, not a tuning range
    "max_batch": Range(1, 1024, "[]", int, "images per inference call", "--max-batch (max_batch)"),
    "topk": Range(1, None, "[]", int, "classes per answer", "topk"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _num(value) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**63 else f"{float(value):g}"


def describe(r: Range) -> str:
    """The range in words: ">= 0", "> 0 s", "in [0, 1)"."""
    if r.high is None:
        return f"{'>=' if r.ends[0] == '[' else '>'} {_num(r.low)}{r.unit}"
    if r.low is None:
        return f"{'<=' if r.ends[1] == ']' else '<'} {_num(r.high)}{r.unit}"
    return f"in {r.ends[0]}{_num(r.low)}, {_num(r.high)}{r.ends[1]}{r.unit}"


def _inside(value: float, r: Range) -> bool:
    above = r.low is None or (value >= r.low if r.ends[0] == "[" else value > r.low)
    below = r.high is None or (value <= r.high if r.ends[1] == "]" else value < r.high)
    return above and below


def check_value(name: str, value, r: Range) -> None:
    """Refuse, with one line naming the option and its range, a value outside ``r`` (None and lists included)."""
    flag = r.flag or _flag(name)
    integer = isinstance(value, Integral) and not isinstance(value, bool)
    if r.kind is int and not integer:
        raise UserError(f"{flag} must be a whole number {describe(r)}, got {value!r}")
    if not integer and not (isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)):
        raise UserError(f"{flag} must be a finite number {describe(r)}, got {value!r}")
    if not _inside(value, r):
        raise UserError(f"{flag} must be {describe(r)}, got {_num(value)}")


def check(values: Mapping, table: Mapping[str, Range]) -> None:
    """Refuse, with one line naming the option and its range, the first value of ``values`` outside its range
    in ``table``. Names missing from ``table`` and values that are None are not checked; a list is checked
    element by element."""
    for name, r in table.items():
        value = values.get(name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                check_value(name, item, r)


def check_needs(values: Mapping, needs: list = TRAIN_NEEDS) -> None:
    """Refuse, with one line, an option given without the option it needs (``--finetune head`` without
    ``--init`` would otherwise be ignored and every parameter trained)."""
    for name, used, other, why in needs:
        value = values.get(name)
        if used(value) and values.get(other) is None:
            shown = "" if isinstance(value, bool) else f" {value}"
            raise UserError(f"{_flag(name)}{shown} needs {_flag(other)} ({why})")
