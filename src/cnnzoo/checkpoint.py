"""Checkpoints: one dict of tensors and plain Python values, written atomically, loaded with ``weights_only=True``.

The format is fixed in docs/interfaces.md. A checkpoint carries everything evaluate, predict and export need
(model name and constructor arguments, weights, class names, input size, normalisation), so none of them takes
any other argument; resumable checkpoints also carry ``train_state``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from cnnzoo.errors import UserError

__all__ = ["FORMAT", "VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "build_model",
           "write_class_indices"]

FORMAT, VERSION = "cnnzoo-checkpoint", 1
REQUIRED = ("model_name", "model_kwargs", "state_dict", "classes", "input_size", "mean", "std", "resize_size")


class CheckpointError(UserError):
    """A checkpoint file that is missing, truncated, corrupt or not a cnnzoo checkpoint."""


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


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically: a crash at any moment leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: str | Path) -> dict:
    """Load a cnnzoo checkpoint; nothing but tensors and plain containers is ever unpickled."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, forbidden global: all mean "not a usable checkpoint"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {reason[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnnzoo checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}, this cnnzoo reads {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return ckpt


def build_model(ckpt: dict) -> torch.nn.Module:
    """The network a checkpoint describes, with its weights loaded, in eval mode."""
    from cnnzoo.registry import create_model

    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    if ckpt.get("appended_fc"):
        from cnnzoo.transfer import append_classifier

        append_classifier(model, ckpt["appended_fc"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"weights do not fit {ckpt['model_name']}: {' '.join(first[:2])[:300]}") from None
    return model.eval()


def write_class_indices(folder: str | Path, classes: list[str]) -> Path:
    """``class_indices.json`` beside a run's checkpoints: {"class_name": index}."""
    path = Path(folder) / "class_indices.json"
    path.write_text(json.dumps({name: i for i, name in enumerate(classes)}, indent=1) + "\n")
    return path
