"""The training engine: ``fit(model, data, config)`` over ``train_one_epoch`` and ``evaluate``.

What it guarantees, beyond the loop itself:
- exact resume: a checkpoint written at an epoch boundary or in the middle of an epoch (SIGTERM or Ctrl-C finish
  the current step, then write one) holds model, optimizer, scheduler, grad scaler, RNG states and the position
  inside the epoch; the data pipeline draws its randomness from (seed, epoch, batch), so on CPU with
  ``deterministic=True`` a resumed run ends bit-for-bit where an uninterrupted one does;
- atomic checkpoints (cnnzoo.checkpoint), the previous one kept as a fallback, ``best.pt`` on the best val top-1;
- a non-finite loss stops the run before the optimizer step, naming epoch and step; under DDP that decision,
  like the stop request, is taken collectively so no rank waits for a peer that left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnzoo import distributed as ddp
from cnnzoo.artifact import ModelCard
from cnnzoo.augment import Augmentation, BatchStage
from cnnzoo.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint, write_class_indices
from cnnzoo.data import Data, mix_seed
from cnnzoo.errors import UserError
from cnnzoo.evaluation import run_eval
from cnnzoo.options import TRAIN_OPTIONS, check, check_needs
from cnnzoo.registry import check_input_size, create_model, model_info
from cnnzoo.models.base import ZooModel

__all__ = ["TrainConfig", "History", "OPTIMIZERS", "SCHEDULES", "FAMILY_DEFAULTS", "NonFiniteLossError",
           "StopRequest", "build_for_data", "resolve_defaults", "resolve_config", "augmentation", "train_one_epoch",
           "fit", "find_resumable", "resume_plan", "load_recipe"]


@dataclass
class TrainConfig:
    """Everything a run needs besides the model and the data; None fields take the model family's default."""

    epochs: int | None = None  # passes over the training set
    batch_size: int | None = None  # images per step, per process
    lr: float | None = None  # peak learning rate (after warmup), for the classifier when lr_backbone is set
    opt: str | None = None  # a key of OPTIMIZERS
    momentum: float = 0.9  # momentum / rmsprop momentum (sgd ignores it)
    nesterov: bool = False  # Nesterov momentum for "momentum"
    weight_decay: float | None = None  # decoupled for adamw, L2 otherwise; never on biases and norm parameters
    sched: str | None = None  # a key of SCHEDULES
    warmup: float | None = None  # epochs of linear warmup from lr / steps to lr (fractions allowed)
    step_size: int | None = None  # "step": multiply by gamma every step_size epochs (default: epochs // 3)
    milestones: list[int] | None = None  # "multistep": epochs at which lr is multiplied by gamma (default 50 %, 75 %)
    gamma: float = 0.1  # decay factor of step and multistep
    label_smoothing: float | None = None  # Szegedy et al. 2016; 0.1 is the common choice
    aux_weight: float = 0.3  # weight of each auxiliary head's loss (GoogLeNet/Inception), training only
    amp: bool = False  # mixed precision: bf16 autocast on CPU; fp16 + grad scaler (or amp_dtype) on CUDA
    amp_dtype: str | None = None  # "float16" | "bfloat16"; default float16 on CUDA, bfloat16 on CPU
    channels_last: bool | None = None  # NHWC memory format; None follows the model's hint (depthwise nets)
    small_input: bool = False  # build the model's 3x3 stride-1 stem for 32x32 inputs (models that have one)
    seed: int = 0  # seeds the model init, dropout and every data-pipeline draw
    deterministic: bool = False  # deterministic kernels: bit-exact reruns and resumes on CPU
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: CUDA when present
    workers: int = 2  # DataLoader worker processes (ImageFolder only; in-memory data needs none)
    eval_batch_size: int = 256  # evaluation batch (no gradients, so larger than training's)
    out: str | None = None  # run folder; None: runs/<model>-<data>[-N]
    resume: str | None = None  # run folder or checkpoint to continue exactly
    keep_last: int = 1  # previous last.pt versions kept as fallbacks for a corrupted last.pt (best.pt is never pruned)
    max_steps: int | None = None  # stop (resumably) after this many optimizer steps in all: time-boxed runs
    sync_bn: bool = False  # SyncBatchNorm under DDP on CUDA
    progress: bool | None = None  # progress bar; None: only when stderr is a terminal
    init: str | None = None  # weights to start from (cnnzoo checkpoint or torchvision/timm state_dict)
    finetune: str = "all"  # "all" | "last:N" | "head": what is trained after init (cnnzoo.transfer)
    new_fc: bool = False  # keep the initial classifier and append Linear(old classes, data classes)
    lr_backbone: float | None = None  # learning rate of everything but the classifier; None: lr
    force: bool = False  # write into an --out folder that holds an earlier run's files (they are replaced)
    # Augmentation (cnnzoo.augment); None fields take the data's own choice (cnnzoo.data.Data.aug_defaults).
    aug: str | None = None  # a preset of cnnzoo.augment.PRESETS
    flip: bool | None = None  # random horizontal flips (the data's choice: never for handwriting)
    crop_pad: int | None = None  # pixels at the input size: pad-crop's padding, affine's largest shift
    crop_scale: tuple[float, float] | None = None  # area fraction range of the resized crop ("imagenet")
    erase: float = 0.0  # probability of random erasing per image (0.25 is common)
    mixup: float = 0.0  # Beta alpha of mixup (0.2 is common); 0: off
    cutmix: float = 0.0  # Beta alpha of cutmix (1.0 is common); 0: off; with mixup, one of them per batch
    # Regularisers and controls.
    ema: float = 0.0  # decay of an exponential moving average of the weights (0.999 ...), evaluated each epoch
    patience: int | None = None  # stop when val top-1 has not improved for this many epochs
    clip_grad: float | None = None  # clip the global L2 norm of the gradients to this
    class_weights: bool = False  # weight each class's loss by 1 / its share of the training images
    balanced: bool = False  # draw every class equally often (with replacement) instead of a permutation
    drop_path: float | None = None  # stochastic depth: drop rate of the deepest block (networks that have it)
    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard, beside metrics.jsonl

    def __post_init__(self):
        # Every construction and dataclasses.replace passes here, so the Python API is checked like the CLI,
        # before any data is read or folder made. The ranges are documented in cnnzoo.options.
        check(vars(self), TRAIN_OPTIONS)
        check_needs(vars(self))
        _check_device(self.device)


# How many devices of each kind this machine has; other kinds (meta, xpu, ...) are not for training here.
DEVICE_COUNTS = {
    "cpu": lambda: 1,
    "cuda": torch.cuda.device_count,
    "mps": lambda: int(torch.backends.mps.is_available()),
}


def _check_device(device: str | None) -> None:
    """Refuse, with one line, a --device that does not parse or is not on this machine (cuda without a GPU)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {device!r} is not a device; use {', '.join(DEVICE_COUNTS)} or cuda:N") from None
    count = DEVICE_COUNTS.get(dev.type)
    if count is None:
        raise UserError(f"--device {device}: training runs on {', '.join(DEVICE_COUNTS)}")
    if (dev.index or 0) >= count():
        kind = dev.type.upper()
        have = f"this machine has {count()} {kind} device(s)" if count() else f"this machine has no {kind} device"
        raise UserError(f"--device {device}: {have}")


# Family defaults: enough for a first run with no flags to train well. LeNet (sigmoid) on digits: AdamW 1e-2 at
# batch 32 with label smoothing passes a cross-validated RBF SVM (99.2 %) after 20-30 epochs and settles at
# 99.7-100 % by 60, about 40 s on 2 cores (benchmarks/train_throughput.py measures the time to the SVM's accuracy).
# BN nets: SGD-momentum 0.1 at batch 128 with cosine decay and 5e-4 decay (the CIFAR ResNet recipe); nets without
# BN start lower (AlexNet/VGG used 0.01); depthwise nets use the MobileNet paper's small decay 4e-5.
_BASE = dict(epochs=30, batch_size=128, lr=0.1, opt="momentum", weight_decay=5e-4, sched="cosine", warmup=1.0,
             label_smoothing=0.1)
FAMILY_DEFAULTS: dict[str, dict] = {
    "LeNet": dict(_BASE, epochs=60, batch_size=32, lr=1e-2, opt="adamw", weight_decay=5e-2),
    "AlexNet": dict(_BASE, lr=0.01), "VGG": dict(_BASE, lr=0.01), "NiN": dict(_BASE, lr=0.01),
    "Inception": dict(_BASE, lr=0.05),
    **{f: dict(_BASE, lr=0.05, weight_decay=4e-5)
       for f in ("MobileNetV1", "MobileNetV2", "MobileNetV3", "ShuffleNetV1", "ShuffleNetV2")},
    "EfficientNet": dict(_BASE, lr=0.05, weight_decay=1e-5),
}  # every other family (ResNet and its variants, DenseNet, FractalNet): _BASE


def _sgd(params, c: TrainConfig):
    return torch.optim.SGD(params, lr=c.lr, momentum=0.0)


def _momentum(params, c: TrainConfig):
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)


def _rmsprop(params, c: TrainConfig):
    # The Inception/MobileNet/EfficientNet setting: decay 0.9, momentum 0.9, eps 1e-3 (TF's, not torch's 1e-8).
    return torch.optim.RMSprop(params, lr=c.lr, alpha=0.9, eps=1e-3, momentum=c.momentum)


OPTIMIZERS = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adagrad": lambda params, c: torch.optim.Adagrad(params, lr=c.lr),
    "rmsprop": _rmsprop,
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr),
}


@dataclass(frozen=True)
class _Plan:
    total: int  # optimizer steps in the run
    per_epoch: int  # steps per epoch
    step_size: int  # epochs between "step" decays
    milestones: tuple[int, ...]  # epochs of "multistep" decays
    gamma: float


def _onecycle(t: int, p: _Plan) -> float:
    # Smith & Topin 2018, as torch's OneCycleLR: cosine up from 1/25 over 30 % of the run, cosine down to 1/25e4.
    up = 0.3 * p.total
    if t < up:
        return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * t / up))
    return 1 / 25e4 + (1 - 1 / 25e4) * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - up) / (p.total - up))))


SCHEDULES = {  # learning-rate factor at optimizer step t
    "constant": lambda t, p: 1.0,
    "step": lambda t, p: p.gamma ** (t // (p.step_size * p.per_epoch)),
    "multistep": lambda t, p: p.gamma ** sum(t >= m * p.per_epoch for m in p.milestones),
    "cosine": lambda t, p: 0.5 * (1 + math.cos(math.pi * min(1.0, t / p.total))),
    "onecycle": _onecycle,
}


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class History:
    """What fit returns: one dict per epoch (the lines of metrics.jsonl) and where the run lives."""

    epochs: list[dict] = field(default_factory=list)
    best_metric: float = -1.0
    run_dir: Path | None = None
    interrupted: bool = False  # stopped by a signal or max_steps: last.pt resumes it
    stop_reason: str | None = None  # "signal" | "max_steps" when interrupted; "patience": stopped early, complete
    already_complete: bool = False  # a resumed run that had nothing left to do
    resumed_from: Path | None = None
    is_main: bool = True  # False on the other ranks of a distributed run (they write and print nothing)

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


# Learning rate when --opt names another optimizer than the family's and --lr is not given.
OPTIMIZER_LR = {"sgd": 0.1, "momentum": 0.1, "adagrad": 0.01, "rmsprop": 1e-3, "adam": 1e-3, "adamw": 1e-3}


def resolve_defaults(config: TrainConfig, model_name: str) -> TrainConfig:
    """Fill the None fields from FAMILY_DEFAULTS of the model's family and check the names."""
    family = model_info(model_name).family
    defaults = dict(FAMILY_DEFAULTS.get(family, _BASE))
    if config.opt is not None and config.opt != defaults["opt"]:
        defaults["lr"] = OPTIMIZER_LR.get(config.opt, defaults["lr"])
    filled = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    config = dataclasses.replace(config, **filled)
    if config.opt not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {config.opt!r}; choose from {', '.join(OPTIMIZERS)}")
    if config.sched not in SCHEDULES:
        raise UserError(f"unknown schedule {config.sched!r}; choose from {', '.join(SCHEDULES)}")
    if config.epochs < 1 or config.lr <= 0:
        raise UserError("epochs and lr must be positive")
    return config


def resolve_config(config: TrainConfig, model_name: str, data: Data) -> TrainConfig:
    """The recipe a run records: resolve_defaults (the family's optimisation defaults), then the augmentation
    fields left None filled with the data's own choice (Data.aug_defaults) and checked (their ranges are
    cnnzoo.options')."""
    config = resolve_defaults(config, model_name)
    filled = {k: v for k, v in data.aug_defaults.items() if getattr(config, k) is None}
    config = dataclasses.replace(config, **filled)
    config = dataclasses.replace(config, crop_scale=tuple(float(v) for v in config.crop_scale))
    if config.class_weights and config.balanced:
        raise UserError("--class-weights and --balanced both correct for imbalance; choose one")
    augmentation(config, data)  # checks the augmentation's options
    if config.tensorboard:
        _summary_writer()  # a missing package is one line before anything is written
    return config


def augmentation(config: TrainConfig, data: Data) -> Augmentation:
    """The training augmentation of a resolved config (cnnzoo.augment): a policy preset takes the geometry of the
    data's own preset."""
    return Augmentation.build(config.aug, data.aug_defaults["aug"], flip=config.flip, crop_pad=config.crop_pad,
                              crop_scale=config.crop_scale, erase=config.erase, mixup=config.mixup,
                              cutmix=config.cutmix)


DROP_PATH_ARGS = ("drop_path_rate", "drop_path")  # what the families' constructors call their stochastic depth


def drop_path_kwargs(model_name: str, rate: float | None, **kwargs) -> dict:
    """``{argument: rate}`` for the constructor of ``model_name`` (found on the meta device, at no cost), {} for
    None; a UserError when the network has no stochastic depth."""
    if rate is None:
        return {}
    for key in DROP_PATH_ARGS:
        try:
            with torch.device("meta"):
                create_model(model_name, **kwargs, **{key: rate})
            return {key: rate}
        except TypeError:
            continue
    raise UserError(f"{model_name} has no stochastic depth (its constructor takes no drop_path_rate); "
                    "drop --drop-path")


def build_for_data(model_name: str, data: Data, small_input: bool = False, seed: int = 0,
                   drop_path: float | None = None, **kwargs) -> nn.Module:
    """create_model with the class count and input channels of ``data``, its initial weights drawn from ``seed``
    (without touching the global generator), stochastic depth ``drop_path`` where the network has it; records how
    it was built for checkpoints."""
    model_kwargs = dict(num_classes=data.num_classes, in_chans=data.input_size[0], **kwargs)
    if small_input:
        model_kwargs["small_input"] = True
    model_kwargs.update(drop_path_kwargs(model_name, drop_path, **model_kwargs))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(model_name, **model_kwargs)
    return model


# --------------------------------------------------------------------------------------------- the steps
def _loss(out, y: torch.Tensor, criterion: nn.Module, aux_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, main logits). Models with auxiliary heads return (logits, aux1, ...) in training mode."""
    if isinstance(out, (tuple, list)):
        main, *aux = out
        return criterion(main, y) + aux_weight * sum(criterion(a, y) for a in aux), main
    return criterion(out, y), out


@dataclass
class _Step:
    """The fixed parts of a training step, built once by fit."""

    criterion: nn.Module
    autocast: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler
    aux_weight: float
    channels_last: bool
    env: ddp.DistEnv
    stop: StopRequest
    max_steps: int | None
    freeze_norms: bool
    progress: bool
    seed: int = 0  # of the batch-level augmentation's draws (with epoch, batch and rank)
    batch_stage: BatchStage | None = None  # random erasing, mixup / cutmix (cnnzoo.augment)
    clip_grad: float | None = None
    ema: AveragedModel | None = None  # the weights' moving average, updated after every optimizer step


class StopRequest:
    """Asks a running fit to stop after the current step and write a resumable checkpoint.

    fit never touches signals itself (it is a library call); the command line enters ``StopRequest.on_signals()``
    so that SIGTERM and Ctrl-C stop the run resumably (a second Ctrl-C interrupts at once)."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def request(self) -> None:
        self.requested = True

    @classmethod
    @contextlib.contextmanager
    def on_signals(cls):
        stop = cls()
        if threading.current_thread() is not threading.main_thread():
            yield stop  # signal handlers can only be installed from the main thread
            return
        previous = {sig: signal.signal(sig, stop._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield stop
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
        self.requested = True


def _set_train(model: nn.Module, freeze_norms: bool) -> None:
    model.train()
    if freeze_norms:
        from cnnzoo.transfer import freeze_norm_stats

        freeze_norm_stats(model)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, step: _Step, *,
                    epoch: int, start: int = 0, global_step: int = 0, stats: dict | None = None) -> dict:
    """One epoch from batch ``start``: returns the running sums, the next batch, the step count, and whether a
    stop (signal or max_steps) ended it early. ``stats`` carries the sums of a resumed epoch."""
    stats = dict(stats or {"loss": 0.0, "correct": 0, "seen": 0})
    _set_train(model, step.freeze_norms)
    loader.set_epoch(epoch)
    bar = _progress(len(loader), start, epoch, step.env.is_main and step.progress)
    t0, seen0, done, stopped = time.perf_counter(), stats["seen"], start, False
    for batch, (x, y, _) in enumerate(loader.iterate(start), start):
        if step.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if step.batch_stage is not None:  # mixup / cutmix make the targets class probabilities
            x, target = step.batch_stage(x, y, mix_seed(step.seed, epoch, batch, step.env.rank))
        with step.autocast:
            loss, logits = _loss(model(x), target, step.criterion, step.aux_weight)
        global_step += 1
        stop = step.stop.requested or (step.max_steps is not None and global_step >= step.max_steps)
        # One collective per step decides for every rank: a NaN or a stop on any rank acts on all of them.
        flags = ddp.all_reduce_sum(torch.tensor([float(not torch.isfinite(loss)), float(stop)]), step.env)
        if flags[0] > 0:
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {global_step}; stopping "
                                     "(the last good checkpoint is kept; try a lower --lr or --warmup)")
        _update(model, optimizer, loss, step)
        scheduler.step()
        stats["loss"] += loss.item() * len(y)
        stats["correct"] += int((logits.argmax(1) == (target.argmax(1) if target.ndim == 2 else y)).sum())
        stats["seen"] += len(y)
        done += 1
        if bar is not None:
            rate = (stats["seen"] - seen0) / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{stats['loss'] / stats['seen']:.3f}",
                            acc=f"{stats['correct'] / stats['seen']:.3f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update()
        if flags[1] > 0:
            stopped = True
            break
    if bar is not None:
        bar.close()
    return dict(stats=stats, seen_now=stats["seen"] - seen0, next_batch=done, global_step=global_step, stopped=stopped,
                seconds=time.perf_counter() - t0)


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: _Step) -> None:
    """Backward, gradient clipping (on the unscaled gradients), optimizer step, then the moving average."""
    optimizer.zero_grad(set_to_none=True)
    step.scaler.scale(loss).backward()
    if step.clip_grad is not None:
        step.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], step.clip_grad)
    step.scaler.step(optimizer)
    step.scaler.update()
    if step.ema is not None:
        step.ema.update_parameters(model)


def _progress(total: int, start: int, epoch: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}", leave=False, file=sys.stderr,
                dynamic_ncols=True)


# ------------------------------------------------------------------------------------------- optimizer
def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Trainable parameters only; the classifier at lr, the rest at lr_backbone (or lr); no decay on biases
    and norm parameters (every tensor with fewer than 2 dimensions)."""
    head = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") else set()
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head, p.ndim >= 2), []).append(p)
    body_lr = config.lr_backbone if config.lr_backbone is not None else config.lr
    return [{"params": ps, "lr": config.lr if is_head else body_lr,
             "weight_decay": config.weight_decay if decays else 0.0}
            for (is_head, decays), ps in sorted(groups.items())]


def _schedule(optimizer, config: TrainConfig, per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    plan = _Plan(total=max(1, config.epochs * per_epoch), per_epoch=per_epoch,
                 step_size=config.step_size or max(1, config.epochs // 3),
                 milestones=tuple(config.milestones or (config.epochs // 2, config.epochs * 3 // 4)),
                 gamma=config.gamma)
    warmup, fn = round((config.warmup or 0) * per_epoch), SCHEDULES[config.sched]

    def factor(t: int) -> float:
        return min(1.0, (t + 1) / warmup if warmup else 1.0) * fn(t, plan)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------------- state
def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *map(int, np_state[2:4]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def find_resumable(path: str | Path) -> tuple[Checkpoint, Path]:
    """The newest loadable resumable checkpoint of a run folder (last.pt, then the kept previous versions)."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "last.pt", *sorted(path.glob("last-*.pt"), reverse=True)]
    if not path.exists():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    errors = []
    for candidate in candidates:
        if not candidate.exists():
            continue
        try:
            ckpt = load_checkpoint(candidate)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if ckpt.train_state is None:
            errors.append(f"{candidate} is not resumable (no train_state)")
            continue
        for skipped in errors:  # said only when an older checkpoint is used; a failure is one line, below
            print(f"warning: {skipped}; resuming from {candidate} instead", file=sys.stderr)
        return ckpt, candidate
    raise CheckpointError(f"no resumable checkpoint in {path}" + (f": {errors[-1]}" if errors else ""))


def _run_dir(config: TrainConfig, model_name: str, data: Data, env: ddp.DistEnv) -> Path:
    """The run folder; rank 0 decides and tells the others. After a torchrun restart: the run being restarted."""
    if env.distributed:
        import torch.distributed as dist

        box = [_pick_run_dir(config, model_name, data) if env.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return _pick_run_dir(config, model_name, data)


# What a run writes into its folder: any of them there means the folder holds an earlier run.
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "ema.pt", "class_indices.json", "curves.png",
             "tensorboard")


def _check_out(out: Path) -> None:
    """--out must be (or become) a folder we can write: not a file, not below a file, not read-only."""
    existing = next(p for p in (out, *out.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        what = "is a file" if existing == out else f"is below {existing}, which is a file"
        raise UserError(f"--out {out} {what}; give a folder for the run")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {existing} (permission denied)")


def _pick_run_dir(config: TrainConfig, model_name: str, data: Data) -> Path:
    restarted = ddp.restart_count() > 0
    if config.resume:
        p = Path(config.resume)
        return p.parent if p.is_file() else p
    if config.out:
        out = Path(config.out)
        _check_out(out)
        if restarted:  # the folder this worker group's first attempt made (with or without a last.pt)
            return out
        earlier = sorted(p.name for p in out.glob("*") if p.name in RUN_FILES or p.match("last-*.pt"))
        if earlier and not config.force:
            raise UserError(f"{out} already holds a run ({', '.join(earlier[:3])}); pass --resume {out} to continue "
                            "it, --force to replace it, or another --out")
        return out
    base = Path("runs") / f"{model_name}-{data.name}"
    out, n = base, 1
    while out.exists():
        n += 1
        out, previous = base.with_name(f"{base.name}-{n}"), out
        if restarted and not out.exists() and (previous / "last.pt").exists():
            return previous
    return out


def _save_last(run_dir: Path, card: ModelCard, state: dict, record: dict, keep_last: int) -> None:
    """last.pt atomically; the previous last.pt stays as last-<epoch>-<step>.pt (hard link: no copy)."""
    last = run_dir / "last.pt"
    if last.exists() and keep_last > 0:
        try:
            old = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
            kept = run_dir / f"last-e{old['epoch']:04d}-s{old['step']:08d}.pt"
            kept.unlink(missing_ok=True)
            os.link(last, kept)
        except Exception:  # a corrupt last.pt is not worth keeping; the filesystem may lack hard links
            pass
    save_checkpoint(last, card, state, **record)
    for stale in sorted(run_dir.glob("last-*.pt"), reverse=True)[keep_last:]:
        stale.unlink(missing_ok=True)


def _write_curves(run: _Run) -> None:
    """curves.png (cnnzoo.plots.training_figure): loss, top-1 and the learning rate the schedule gave each step."""
    from cnnzoo.plots import plot_training

    c, per_epoch = run.config, len(run.train_loader)
    total = c.epochs * per_epoch
    factor = run.scheduler.lr_lambdas[0]
    steps = range(0, total + 1, max(1, total // 400))
    lr = ([t / per_epoch for t in steps], [c.lr * factor(t) for t in steps])
    title = (f"{run.card.model_name} on {run.data.name} ({len(run.data.train)} images, "
             f"{run.card.input.describe()}): {c.opt} lr {c.lr:g}, {c.sched}, batch {c.batch_size} x {run.env.world}, "
             f"weight decay {c.weight_decay:g}\naugmentation {run.aug.describe()}{_regularisers(c, ', ')}")
    plot_training(run.history.epochs, run.run_dir / "curves.png", title=title, lr=lr)


COLUMNS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "img_s", "time")
EMA_COLUMNS = ("ema_val_loss", "ema_val_top1")  # after val_top5 when the run keeps a moving average


FORMATS = {"lr": ".2e", "img_s": ".0f", "time": ".2f"}  # the other float columns: 4 decimals


def _columns(run: _Run) -> tuple[str, ...]:
    if run.step.ema is None:
        return COLUMNS
    at = COLUMNS.index("val_top5") + 1
    return COLUMNS[:at] + EMA_COLUMNS + COLUMNS[at:]


def _line(row: dict, columns: tuple[str, ...] = COLUMNS) -> str:
    def cell(c: str) -> str:
        width = max(10, len(c))
        value = row[c]
        return f"{value:>{width}{FORMATS.get(c, '.4f')}}" if isinstance(value, float) else f"{value:>{width}}"

    return "  ".join(cell(c) for c in columns)


# ------------------------------------------------------------------------------------------------- fit
def fit(model: nn.Module | str, data: Data, config: TrainConfig | None = None, stop: StopRequest | None = None
        ) -> History:
    """Train ``model`` (a registered name, or a network from build_for_data / create_model) on ``data``.

    Writes the run folder (config.json, metrics.jsonl, curves.png, class_indices.json, last.pt, best.pt, with
    ``config.ema`` ema.pt, with ``config.tensorboard`` tensorboard/) on rank 0 and returns the History. None
    fields of ``config`` take the model family's defaults and the data's augmentation (resolve_config). Under
    torchrun every process calls fit; a restarted worker group resumes from last.pt by itself. ``stop`` (see
    StopRequest.on_signals) lets the caller end the run resumably; fit itself installs no signal handler.
    """
    config = config or TrainConfig()
    if isinstance(model, str):
        model = build_for_data(model, data, small_input=config.small_input, seed=config.seed,
                               drop_path=config.drop_path)
    built = getattr(model, "cnnzoo_spec", None)
    if built is None:
        raise UserError("fit needs a registered model name or a model built by cnnzoo.create_model")
    kwargs = dict(built["model_kwargs"])
    appended = model.appended_classes
    if appended is None:  # reset_classifier may have changed the class count
        kwargs["num_classes"] = model.num_classes
    card = ModelCard(built["model_name"], kwargs, tuple(data.classes), data.spec, appended, {"data": data.options})
    config = resolve_config(config, card.model_name, data)
    _check_drop_path(card, config)
    # Before any run folder exists: an input the network cannot take is one line, not a traceback mid-epoch.
    check_input_size(card.model_name, card.input.size, train=True, **card.model_kwargs)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    env = ddp.setup(config.device)
    try:
        history = _fit(model, data, config, env, card, stop or StopRequest())
        history.is_main = env.is_main
        if owns_group:
            ddp.barrier(env)  # every rank leaves together, after rank 0 has written the last files
        return history
    finally:
        if owns_group:
            ddp.teardown()


def _check_drop_path(card: ModelCard, config: TrainConfig) -> None:
    """A model built before fit cannot take --drop-path any more: its blocks have their rates."""
    built = next((card.model_kwargs[k] for k in DROP_PATH_ARGS if k in card.model_kwargs), None)
    if config.drop_path is not None and built != config.drop_path:
        raise UserError(f"the {card.model_name} given to fit was built with stochastic depth {built}, the config "
                        f"asks for {config.drop_path}: build it with build_for_data(..., drop_path=...) or pass its "
                        "name")


@dataclass
class _Run:
    """What the steps of one training run share, built once by _fit."""

    model: nn.Module  # the bare network (checkpoints are written from it)
    net: nn.Module  # what is trained: the model, or its DistributedDataParallel wrapper
    data: Data
    config: TrainConfig
    env: ddp.DistEnv
    card: ModelCard
    run_dir: Path
    history: History
    train_loader: object
    val_loader: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: _Step
    aug: Augmentation
    position: dict = field(default_factory=lambda: {"epoch": 0, "batch": 0, "stats": None})
    global_step: int = 0
    elapsed: float = 0.0
    tensorboard: object | None = None  # a torch.utils.tensorboard SummaryWriter on rank 0 with config.tensorboard


def _fit(model: nn.Module, data: Data, config: TrainConfig, env: ddp.DistEnv, card: ModelCard,
         stop: StopRequest) -> History:
    run_dir = _run_dir(config, card.model_name, data, env)
    if not config.resume and ddp.restart_count() > 0 and (run_dir / "last.pt").exists():
        config = dataclasses.replace(config, resume=str(run_dir))  # torchrun restarted us: continue, not restart
    _seed_everything(config.seed, config.deterministic)
    ckpt, history = None, History(run_dir=run_dir)
    if config.resume:
        ckpt = _open_resume(config, data, card, history, env)
        card = ckpt.card
        _restore_shape(model, ckpt, config)
        model.load_state_dict(ckpt.state_dict)
    elif config.init:
        model, card = _init_transfer(model, data, config, card, env)
    config, aug = _fit_batch(config, data, env), augmentation(config, data)
    card = dataclasses.replace(card, extra=dict(card.extra, augment=aug.describe()))
    channels_last = model.channels_last if config.channels_last is None else config.channels_last
    model.to(env.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loader_args = dict(spec=card.input, device=env.device, rank=env.rank, world=env.world, workers=config.workers)
    train_loader = data.loader("train", config.batch_size, train=True, seed=config.seed, augment=aug,
                               balanced=config.balanced, **loader_args)
    val_loader = data.loader("val", config.eval_batch_size, train=False, **loader_args)
    optimizer = OPTIMIZERS[config.opt](_param_groups(model, config), config)
    step = _make_step(config, env, channels_last, stop, model, data, aug)
    run = _Run(model, model, data, config, env, card, run_dir, history, train_loader, val_loader, optimizer,
               _schedule(optimizer, config, len(train_loader)), step, aug)
    if ckpt is not None:
        _restore_train_state(run, ckpt)
        if _finished(run):
            history.already_complete = True
            ddp.print0(f"{run_dir} is already complete: {len(history.epochs)} epochs, best val top-1 "
                       f"{history.best_metric:.4f}; nothing to do (a larger --epochs trains on)", env=env)
            return history
    _print_header(run)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(_record_config(run), indent=1, default=str) + "\n")
        write_class_indices(run_dir, data.classes)
        run.tensorboard = _tensorboard(run_dir) if config.tensorboard else None
    run.net = ddp.wrap(model, env, config.sync_bn)
    ddp.print0(_line({c: c for c in _columns(run)}, _columns(run)), env=env)
    try:
        _loop(run)
    finally:
        if env.is_main and history.epochs:
            _write_curves(run)  # once at the end: matplotlib costs a second per figure
        if run.tensorboard is not None:
            run.tensorboard.close()
    return history


def _fit_batch(config: TrainConfig, data: Data, env: ddp.DistEnv) -> TrainConfig:
    """A batch larger than this process's share of the training set is shrunk to that share, with a notice."""
    share = math.ceil(len(data.train) / env.world)
    if config.batch_size <= share:
        return config
    where = " per process" if env.distributed else ""
    ddp.print0(f"note: batch size {config.batch_size} is larger than the {share} training images{where}; "
               f"using {share}", env=env, file=sys.stderr)
    return dataclasses.replace(config, batch_size=share)


FEW_STEPS = 10  # optimizer steps per epoch below which batch-norm running statistics lag the weights


def _warn_few_steps(run: _Run) -> None:
    """The warning a user of a tiny folder needs: with a handful of steps per epoch the BN running statistics
    (momentum 0.1) still mostly describe the initial weights, so validation can sit at chance for epochs."""
    steps = len(run.train_loader)
    if steps >= FEW_STEPS or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in run.model.modules()):
        return
    share = math.ceil(len(run.data.train) / run.env.world)
    batch = 2 ** int(math.log2(max(2, share // FEW_STEPS)))
    ddp.print0(f"warning: {steps} step(s) an epoch: batch-norm running statistics lag the weights with so few "
               f"updates, so validation can stay near chance while training accuracy rises; --batch-size {batch} "
               f"gives {share // batch} steps an epoch", env=run.env, file=sys.stderr)


# How the header and curves.png name the regularisers in use (the fields whose value is truthy).
REGULARISER_TEXT = {"ema": "ema {:g}", "patience": "patience {}", "clip_grad": "clip-grad {:g}",
                    "class_weights": "class weights", "balanced": "balanced sampler", "drop_path": "drop-path {:g}"}


def _regularisers(c: TrainConfig, lead: str = "") -> str:
    parts = [text.format(value) for key, text in REGULARISER_TEXT.items() if (value := getattr(c, key))]
    return lead + ", ".join(parts) if parts else ""


def _print_header(run: _Run) -> None:
    c, data, env = run.config, run.data, run.env
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    ddp.print0(f"{run.card.model_name} on {data.name}: {len(data.train)} train / {len(data.val)} val images at "
               f"{run.card.input.describe()}, {trainable:,} trainable parameters, {c.opt} lr {c.lr:g}, {c.sched}, "
               f"{c.epochs} epochs of {len(run.train_loader)} steps, batch {c.batch_size} x {env.world}, "
               f"{env.device}" + (", amp" if c.amp else ""), env=env)
    ddp.print0(f"augmentation: {run.aug.describe()}" + _regularisers(c, "; "), env=env)
    _warn_few_steps(run)


def _record_config(run: _Run) -> dict:
    return dict(dataclasses.asdict(run.config), model=run.card.model_name, data=run.data.options)


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


def _tensorboard(run_dir: Path):
    return _summary_writer()(str(run_dir / "tensorboard"))


# metrics.jsonl keys -> TensorBoard tags: one chart per metric, its splits (train, val, ema_val) together.
TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "ema_val_loss": "loss/ema_val",
                    "train_top1": "top1/train", "val_top1": "top1/val", "ema_val_top1": "top1/ema_val",
                    "val_top5": "top5/val", "ema_val_top5": "top5/ema_val", "lr": "lr", "img_s": "img_s"}


def _log_tensorboard(writer, row: dict) -> None:
    for key, tag in TENSORBOARD_TAGS.items():
        if key in row:
            writer.add_scalar(tag, row[key], row["epoch"])
    writer.flush()


def _open_resume(config: TrainConfig, data: Data, card: ModelCard, history: History, env: ddp.DistEnv) -> Checkpoint:
    """The checkpoint to continue from, checked against the model and the data (classes, architecture)."""
    ckpt, history.resumed_from = find_resumable(config.resume)
    data.check_classes(list(ckpt.card.classes))
    if ckpt.card.model_name != card.model_name:
        raise UserError(f"{history.resumed_from} is a {ckpt.card.model_name} checkpoint, not {card.model_name}")
    where = ckpt.train_state["position"]
    ddp.print0(f"resuming from {history.resumed_from} (epoch {where['epoch'] + 1}, batch {where['batch']})", env=env)
    return ckpt


def _restore_train_state(run: _Run, ckpt: Checkpoint) -> None:
    ts = ckpt.train_state
    run.optimizer.load_state_dict(ts["optimizer"])
    run.scheduler.load_state_dict(ts["scheduler"])
    run.step.scaler.load_state_dict(ts["scaler"])
    if run.step.ema is not None:
        if "ema" in ts:
            run.step.ema.load_state_dict(ts["ema"])
        else:
            ddp.print0("note: the checkpoint keeps no moving average; --ema starts one from its weights", env=run.env)
    run.history.epochs, run.history.best_metric = list(ts["history"]), ckpt.record["best_metric"]
    run.position = dict(ts["position"])
    if not run.env.is_main and run.position["stats"]:
        run.position["stats"] = _zero_stats()  # the file holds all ranks' sums; rank 0 carries them
    run.global_step, run.elapsed = ckpt.record["step"], ts["elapsed"]
    _set_rng_state(ts["rng"])  # last: building the model and loaders drew from the generators


def _epochs_since_best(epochs: list[dict]) -> int:
    """Epochs after the first one with the best val top-1 (early stopping's count, derived from the history
    alone, so a resumed run counts exactly as the uninterrupted one)."""
    if not epochs:
        return 0
    best = max(range(len(epochs)), key=lambda i: (epochs[i]["val_top1"], -i))
    return len(epochs) - 1 - best


def _patience_spent(run: _Run) -> bool:
    return run.config.patience is not None and _epochs_since_best(run.history.epochs) >= run.config.patience


def _finished(run: _Run) -> bool:
    """A resumed run with nothing left: every epoch done (at an epoch boundary), or early stopping reached."""
    at_end = run.position["epoch"] >= run.config.epochs and not run.position["batch"]
    return at_end or _patience_spent(run)


def _loop(run: _Run) -> None:
    history, env, step = run.history, run.env, run.step
    for epoch in range(run.position["epoch"], run.config.epochs):
        stats = run.position["stats"] if epoch == run.position["epoch"] else None
        start = run.position["batch"] if epoch == run.position["epoch"] else 0
        if isinstance(run.model, ZooModel):  # a function of the epoch alone, so a resumed run sets the same value
            run.model.set_training_progress(epoch / run.config.epochs)
        r = train_one_epoch(run.net, run.train_loader, run.optimizer, run.scheduler, step, epoch=epoch, start=start,
                            global_step=run.global_step, stats=stats)
        run.global_step, run.elapsed = r["global_step"], run.elapsed + r["seconds"]
        if r["stopped"] and r["next_batch"] < len(run.train_loader):
            # Mid-epoch: record where we are, with the running sums of all ranks (rank 0 resumes with them).
            _checkpoint(run, dict(epoch=epoch, batch=r["next_batch"], stats=_reduce_stats(r["stats"], env)))
            history.interrupted = True
            history.stop_reason = "signal" if step.stop.requested else "max_steps"
            ddp.print0(f"stopped at epoch {epoch + 1}, batch {r['next_batch']}; resume with "
                       f"cnnzoo train --resume {run.run_dir}", env=env)
            return
        row = _epoch_end(run, epoch, r)
        history.epochs.append(row)
        improved = row["val_top1"] > history.best_metric
        history.best_metric = max(history.best_metric, row["val_top1"])
        _checkpoint(run, dict(epoch=epoch + 1, batch=0, stats=None), best=improved)
        ddp.print0(_line(row, _columns(run)), env=env)
        if run.tensorboard is not None:
            _log_tensorboard(run.tensorboard, row)
        if _patience_spent(run) and epoch + 1 < run.config.epochs:
            history.stop_reason = "patience"
            ddp.print0(f"early stop: val top-1 has not improved for {run.config.patience} epochs (best "
                       f"{history.best_metric:.4f})", env=env)
            break
        if r["stopped"]:
            history.interrupted = epoch + 1 < run.config.epochs
            if history.interrupted:
                history.stop_reason = "signal" if step.stop.requested else "max_steps"
            break


def _zero_stats() -> dict:
    return {"loss": 0.0, "correct": 0, "seen": 0}


def _reduce_stats(stats: dict, env: ddp.DistEnv) -> dict:
    t = ddp.all_reduce_sum(torch.tensor([stats["loss"], stats["correct"], stats["seen"]], dtype=torch.float64), env)
    return {"loss": t[0].item(), "correct": int(t[1]), "seen": int(t[2])} if env.distributed else dict(stats)


def _class_weights(data: Data) -> torch.Tensor:
    """n / (K x images of each class): a class's total weight is the same for every class (Keras' "balanced")."""
    counts = torch.bincount(data.train.labels, minlength=data.num_classes).clamp(min=1).float()
    return counts.sum() / (data.num_classes * counts)


def _make_step(config: TrainConfig, env: ddp.DistEnv, channels_last: bool, stop: StopRequest, model: nn.Module,
               data: Data, aug: Augmentation) -> _Step:
    cuda = env.device.type == "cuda"
    dtype = getattr(torch, config.amp_dtype or ("float16" if cuda else "bfloat16"))
    autocast = torch.autocast(env.device.type, dtype=dtype) if config.amp else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(env.device.type, enabled=config.amp and cuda and dtype == torch.float16)
    weight = _class_weights(data).to(env.device) if config.class_weights else None
    # The average copies the model (use_buffers: batch-norm statistics are averaged too, no update_bn pass).
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema \
        else None
    return _Step(criterion=nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing),
                 autocast=autocast, scaler=scaler, aux_weight=config.aux_weight, channels_last=channels_last, env=env,
                 stop=stop, max_steps=config.max_steps, freeze_norms=bool(config.init) or config.finetune != "all",
                 progress=sys.stderr.isatty() if config.progress is None else config.progress, seed=config.seed,
                 batch_stage=BatchStage(aug, data.num_classes) if aug.batch_level else None,
                 clip_grad=config.clip_grad, ema=ema)


def _epoch_end(run: _Run, epoch: int, r: dict) -> dict:
    sums = _reduce_stats(r["stats"], run.env)
    evaluate = dict(env=run.env, autocast=run.step.autocast, channels_last=run.step.channels_last)
    val = run_eval(run.model, run.val_loader, run.data.num_classes, **evaluate)
    row = dict(epoch=epoch + 1, step=r["global_step"], train_loss=sums["loss"] / max(sums["seen"], 1),
               train_top1=sums["correct"] / max(sums["seen"], 1), val_loss=val["loss"], val_top1=val["top1"],
               val_top5=val["top5"])
    if run.step.ema is not None:
        ema = run_eval(run.step.ema.module, run.val_loader, run.data.num_classes, **evaluate)
        row.update(ema_val_loss=ema["loss"], ema_val_top1=ema["top1"], ema_val_top5=ema["top5"])
    return dict(row, lr=run.optimizer.param_groups[0]["lr"],
                img_s=round(r["seen_now"] * run.env.world / max(r["seconds"], 1e-9), 1), time=round(run.elapsed, 2))


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


def _checkpoint(run: _Run, position: dict, best: bool = False) -> None:
    if not run.env.is_main:
        return
    history, ema = run.history, run.step.ema
    state = _cpu(run.model.state_dict())
    record = dict(config=_record_config(run), epoch=len(history.epochs), step=run.global_step,
                  best_metric=history.best_metric, metrics=history.last)
    train_state = dict(optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                       scaler=run.step.scaler.state_dict(), rng=_rng_state(), position=position,
                       history=history.epochs, elapsed=run.elapsed)
    if ema is not None:
        train_state["ema"] = _cpu(ema.state_dict())
    _save_last(run.run_dir, run.card, state, dict(record, train_state=train_state), run.config.keep_last)
    if best:
        save_checkpoint(run.run_dir / "best.pt", run.card, state, **record)
    if ema is not None and not position["batch"]:  # the average's weights as a model of their own, each epoch
        save_checkpoint(run.run_dir / "ema.pt", run.card, _cpu(ema.module.state_dict()), **record)
    with open(run.run_dir / "metrics.jsonl", "w") as f:  # rewritten from the history: exact after a resume too
        f.writelines(json.dumps(row) + "\n" for row in history.epochs)


def _restore_shape(model: nn.Module, ckpt: Checkpoint, config: TrainConfig) -> None:
    """Give a resumed model the checkpoint's classifier (appended head) and trainable set (fine-tuning mode), so
    that weights and optimizer state load one to one."""
    card = ckpt.card
    if card.appended_classes and model.appended_classes is None:
        model.reset_classifier(card.model_kwargs["num_classes"])
        model.append_classifier(card.appended_classes)
    if config.finetune != "all":
        from cnnzoo.transfer import apply_finetune

        apply_finetune(model, config.finetune)


def _init_transfer(model: nn.Module, data: Data, config: TrainConfig, card: ModelCard, env: ddp.DistEnv):
    """--init / --finetune / --new-fc through cnnzoo.transfer (docs/interfaces.md)."""
    from cnnzoo.transfer import apply_finetune, load_pretrained

    report = load_pretrained(model, config.init, num_classes=None if config.new_fc else data.num_classes)
    ddp.print0(str(report), env=env)
    card = _normalised_as_trained(card, report, config.init, env)
    file_classes = model.num_classes  # the loaded classifier's, before a new one may go on top of it
    model = apply_finetune(model, config.finetune, new_fc_classes=data.num_classes if config.new_fc else None)
    if model.appended_classes:
        # The card rebuilds create_model(num_classes=file_classes) + append_classifier(appended_classes).
        card = dataclasses.replace(card, model_kwargs=dict(card.model_kwargs, num_classes=file_classes),
                                   appended_classes=model.appended_classes)
    if model.num_classes != data.num_classes:
        raise UserError(f"the model predicts {model.num_classes} classes, {data.name} has {data.num_classes}")
    return model, card


def _normalised_as_trained(card: ModelCard, report, init: str, env: ddp.DistEnv) -> ModelCard:
    """Fine-tuning shows the weights images normalised as in their training: the mean and std their card or their
    publisher records replace the data's (timm's fine-tuning takes them from its pretrained configurations too;
    frozen batch norms otherwise see shifted inputs). Size and resizing stay the data's."""
    from cnnzoo.importing import trained_input

    trained = trained_input(card.model_name, init, report)
    if trained is None or trained.spec.channels != card.input.channels:
        return card
    spec = dataclasses.replace(card.input, mean=trained.spec.mean, std=trained.spec.std)
    if spec != card.input:
        ddp.print0(f"normalised as the initial weights were trained: mean {list(spec.mean)} std {list(spec.std)} "
                   f"(from {trained.source})", env=env)
    return dataclasses.replace(card, input=spec)


def load_recipe(path: str | Path) -> dict:
    """The TrainConfig fields a recipe file sets (YAML, or JSON, which is YAML): ``epochs: 90``, ``aug:
    randaugment``, ``crop_scale: [0.35, 1]``. Numbers written as PyYAML reads strings ("1e-3" lacks the dot YAML
    1.1 wants) are taken as numbers.

    Raises:
        UserError: an unreadable file, invalid YAML, anything but a mapping, or a key TrainConfig lacks.
    """
    import yaml

    try:
        recipe = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise UserError(f"cannot read the recipe {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe is a mapping of TrainConfig keys (epochs: 30, lr: 0.1, ...)")
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(str(k) for k in recipe if k not in types)
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, types, 1)) else k
                 for k in unknown]
        raise UserError(f"{path}: unknown key(s) {', '.join(hints)}; a recipe takes TrainConfig's fields")

    def number(key: str, value):
        if isinstance(value, str) and types[key].startswith("float"):
            try:
                return float(value)
            except ValueError:
                raise UserError(f"{path}: {key} must be a number, got {value!r}") from None
        return tuple(value) if key == "crop_scale" and isinstance(value, list) else value

    return {k: number(k, v) for k, v in recipe.items()}


def dump_recipe(config: TrainConfig) -> str:
    """A config as a YAML recipe that load_recipe reads back (what --print-config shows)."""
    import yaml

    plain = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists: plain YAML
    return yaml.safe_dump(plain, sort_keys=False)


def resume_plan(path: str | Path, overrides: dict | None = None) -> tuple[str, dict, dict, TrainConfig]:
    """What a run folder records: (model name, model kwargs, load_data options, TrainConfig with resume set).
    The recorded max_steps is dropped: it boxed the run that stopped, and kept it would stop the resumed run
    after one step (the step count runs on across resumes); pass --max-steps again for a new box. ``overrides``
    (the command line's flags) replace recorded values before the config is checked, so a run recorded on a
    device this machine lacks resumes with ``--device cpu``."""
    ckpt, _ = find_resumable(path)
    recorded = dict(ckpt.record.get("config") or {})
    data_options = dict(recorded.pop("data", None) or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in recorded.items() if k in names} | {"max_steps": None} | dict(overrides or {})
    config = TrainConfig(**{**values, "resume": str(path)})
    return ckpt.card.model_name, dict(ckpt.card.model_kwargs), data_options, config
