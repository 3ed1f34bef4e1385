"""Input sizes for tests, found on the meta device (no weights, no arithmetic)."""

from functools import cache

import torch

from cnnzoo.registry import create_model, model_info
from cnnzoo.summary import InputSizeError, summarize

CANDIDATES = (32, 48, 64, 96, 128, 160, 224, 299)


@cache
def smallest_input(name: str, train: bool = True) -> tuple[int, int, int]:
    """The smallest square input (C, S, S) the network takes, in eval mode and (train=True) in training mode,
    where auxiliary heads can need more."""
    channels = model_info(name).input_size[0]
    with torch.device("meta"):
        model = create_model(name, num_classes=7)
    for size in CANDIDATES:
        try:
            summarize(model, (channels, size, size), name)
            if train:
                model.train()(torch.zeros(2, channels, size, size, device="meta"))
            return channels, size, size
        except (InputSizeError, RuntimeError):
            continue
    raise AssertionError(f"{name} takes none of the sizes {CANDIDATES}")
