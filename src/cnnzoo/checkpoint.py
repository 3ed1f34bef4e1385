"""Checkpoints: the model card, the weights and (for training runs) a training record, written atomically and
loaded with ``weights_only=True``.

The format is fixed in docs/interfaces.md. The card (cnnzoo.artifact.ModelCard) carries everything evaluate,
predict, explain, export and serve need (model name and constructor arguments, class names, the input contract),
so none of them takes any other argument; resumable checkpoints also carry ``train_state`` in their record.
Version-1 checkpoints (flat input_size / mean / std / resize_size keys) still load.

Integrity: every checkpoint records ``state_dict_sha256`` (tensor_digest: the weights' names, dtypes, shapes and
bytes, in key order) and loading recomputes it; before unpickling, the zip archive's CRCs are checked as well, so a
file whose bytes were overwritten is a CheckpointError rather than a network that predicts garbage. Checkpoints
written before the digest existed are still read (their CRCs are still checked).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnzoo.artifact import EXPORTED_FILES, ArtifactError, ModelCard, is_torchscript
from cnnzoo.errors import UserError

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointError", "DiskFullError", "save_checkpoint", "load_checkpoint",
           "read_weights", "build_model", "tensor_digest", "write_class_indices"]

FORMAT, VERSION = "cnnzoo-checkpoint", 2
READABLE_VERSIONS = (1, 2)
_V1_CARD_KEYS = ("model_name", "model_kwargs", "classes", "input_size", "mean", "std", "resize_size", "appended_fc")
DIGEST_KEY = "state_dict_sha256"
# What a loaded checkpoint keeps as its training record: everything but the weights and the card.
_NOT_RECORD = {"format", "version", "state_dict", DIGEST_KEY, "card", *_V1_CARD_KEYS}
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, a full quota
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # torch bolds words of its messages; a one-line error has no styles


class CheckpointError(ArtifactError):
    """A checkpoint file that is missing, truncated, corrupt or not a cnnzoo checkpoint."""


class DiskFullError(UserError):
    """No space left to write a file; the message names it and the space it needs. The previous file is kept."""


def tensor_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict in key order: each tensor's name, dtype, shape and bytes (so a renamed, reshaped
    or overwritten tensor changes it)."""
    h = hashlib.sha256()
    for key, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _tensor_bytes(obj) -> int:
    """About how many bytes the tensors inside a (nested) checkpoint payload take on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _disk_full(path: Path, payload: dict) -> DiskFullError:
    free = shutil.disk_usage(path.parent).free
    return DiskFullError(f"no space left on the device to write {path}: it needs about "
                         f"{_tensor_bytes(payload) / 1e6:.1f} MB, {free / 1e6:.1f} MB are free in {path.parent} "
                         "(the previous file there is kept)")


def _check_archive(path: Path) -> None:
    """Every member of the checkpoint's zip archive against its CRC: torch.load itself never checks them."""
    if not zipfile.is_zipfile(path):
        return  # truncated (no central directory) or torch's legacy format: torch.load judges those
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt archive: {str(err)[:200]})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt: {bad} fails its CRC check (bytes were overwritten or damaged)")


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry itself is on disk (POSIX; a no-op elsewhere).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the card, the weights, and the training record (config, metrics, epoch, step,
    best_metric and, in a resumable last.pt, train_state)."""

    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    record: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def train_state(self) -> dict | None:
        return self.record.get("train_state")


def save_checkpoint(path: str | Path, card: ModelCard, state_dict: dict, **record) -> None:
    """Write a checkpoint to ``path`` atomically: a crash at any moment leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "card": card.to_dict(), "state_dict": state_dict,
               DIGEST_KEY: tensor_digest(state_dict), **record}
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise (_disk_full(path, payload) if err.errno in NO_SPACE else err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in NO_SPACE:
            raise _disk_full(path, payload) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _load_failure(err: Exception) -> str:
    """One line for a failed torch.load: the refused global of a pickle that wants to run something (torch's
    message buries it under advice to load the file unsafely), else the first line of the error."""
    text = str(err)
    # The unpickler's reason may start on a later line ("WeightsUnpickler error: \n\nUnsupported operand 8" for
    # a file that is no pickle at all, such as an .onnx); only a refused global is a pickle that wants to run code.
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", text)
    if reason and "global" in reason.group(1).lower():
        return f"{reason.group(1)} (nothing was run; a file that needs it may run code when unpickled)"
    first = reason.group(1) if reason else next((line.strip() for line in text.splitlines() if line.strip()), "")
    sentence = ANSI_STYLE.sub("", first).split(". ")[0][:200]
    return f"truncated or corrupt? ({type(err).__name__}: {sentence})"  # KeyError('101') means little alone


def read_weights(path: str | Path) -> object:
    """``torch.load(weights_only=True)`` of a weights file, after checking its zip archive's CRCs; a cnnzoo
    checkpoint's recorded digest is verified as well. Every file of weights (checkpoints, ``--init``) should be
    read through here, so a corrupted one is a CheckpointError (one line), never garbage weights.
    """
    path = Path(path)
    if is_torchscript(path):  # refused before torch.load, which would print its own warnings about it
        raise CheckpointError(f"{path} is a TorchScript program (it runs code when loaded), not a weights file")
    if path.suffix.lower() in EXPORTED_FILES:  # named, where torch.load would call it truncated or corrupt
        raise CheckpointError(f"{path} is {EXPORTED_FILES[path.suffix.lower()][1]}, not a cnnzoo checkpoint: "
                              "`cnnzoo predict` runs exported files; this command needs the checkpoint")
    _check_archive(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, forbidden global: all mean "not a usable checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint: {_load_failure(err)}") from None
    state = raw.get("state_dict") if isinstance(raw, dict) else None
    digest = raw.get(DIGEST_KEY) if isinstance(raw, dict) else None  # absent from files written before it existed
    if digest is not None and isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()) \
            and digest != tensor_digest(state):
        raise CheckpointError(f"{path} is corrupt: its weights differ from the digest recorded when it was saved")
    return raw


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a cnnzoo checkpoint (a file, or a run folder's last.pt); nothing but tensors and plain containers is
    ever unpickled, the archive's CRCs and the weights' digest are verified, and the card is validated."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    raw = read_weights(path)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnnzoo checkpoint")
    if raw.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint version {raw.get('version')}, this cnnzoo reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    state = raw.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state_dict")
    card = card_of(raw, path)
    record = {k: v for k, v in raw.items() if k not in _NOT_RECORD}
    return Checkpoint(card, state, record, path)


def card_of(raw: dict, path: str | Path) -> ModelCard:
    """The validated model card of a checkpoint's contents (either version), as read by read_weights."""
    if raw.get("version") == 1:
        card = ModelCard.from_dict({k: raw[k] for k in _V1_CARD_KEYS if k in raw}, str(path))
        return ModelCard(card.model_name, card.model_kwargs, card.classes, card.input, card.appended_classes,
                         {"data": (raw.get("config") or {}).get("data")})
    return ModelCard.from_dict(raw.get("card"), str(path))


def build_model(source: Checkpoint | ModelCard, state_dict: dict | None = None) -> torch.nn.Module:
    """The network a checkpoint (or a card, with ``state_dict``) describes, with its weights loaded, in eval mode.

    Raises:
        CheckpointError: the card names constructor arguments the network does not take, the weights do not fit
            it, or the class names do not match its outputs.
    """
    from cnnzoo.registry import create_model, model_info

    card, state = (source.card, source.state_dict) if isinstance(source, Checkpoint) else (source, state_dict)
    in_chans = card.model_kwargs.get("in_chans", model_info(card.model_name).input_size[0])
    if in_chans != card.input.channels:
        raise CheckpointError(f"the model card builds {card.model_name} for {in_chans}-channel input but describes "
                              f"{card.input.channels}-channel images")
    try:
        model = create_model(card.model_name, **card.model_kwargs)
    except (TypeError, ValueError, RuntimeError) as err:  # unknown or out-of-range constructor arguments
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"the model card's constructor arguments do not fit {card.model_name}: {reason}") \
            from None
    if card.appended_classes:
        model.append_classifier(card.appended_classes)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise CheckpointError(f"weights do not fit {card.model_name}: {' '.join(first[:2])[:300]}") from None
    if model.num_classes != card.num_classes:
        raise CheckpointError(f"the model card names {card.num_classes} classes but {card.model_name} has "
                              f"{model.num_classes} outputs")
    return model.eval()


def write_class_indices(folder: str | Path, classes: list[str]) -> Path:
    """``class_indices.json`` beside a run's checkpoints: {"class_name": index}."""
    path = Path(folder) / "class_indices.json"
    path.write_text(json.dumps({name: i for i, name in enumerate(classes)}, indent=1) + "\n")
    return path
