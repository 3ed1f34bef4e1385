"""Input sizes for tests, found on the meta device (no weights, no arithmetic)."""

import os
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


# The cost of the registry sweeps is set by the largest networks: regnet_y_128gf's 645M parameters (a 30 s
# contract step, an 18 s parity run) and the 1000-layer CIFAR ResNets' 4000-6000 modules (30 s to script, 25 s to
# export), and the networks above 100M parameters or 1500 modules. Each has smaller siblings of the same blocks in
# the default sweeps; CNNZOO_SLOW=1 runs them all.
FULL = os.environ.get("CNNZOO_SLOW") == "1"
HEAVY_PARAMS, HEAVY_MODULES = 100_000_000, 1500


@cache
def size_of(name: str) -> tuple[int, int]:
    """(parameters, modules) of a registered network at its defaults, counted on the meta device."""
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters()), sum(1 for _ in model.modules())


def heavy(name: str) -> bool:
    params, modules = size_of(name)
    return params > HEAVY_PARAMS or modules > HEAVY_MODULES


def sweep(names) -> list:
    """The names, the heavy ones marked to run only with CNNZOO_SLOW=1."""
    import pytest

    slow = pytest.mark.skipif(not FULL, reason="heavy (modelsizes.heavy): swept with CNNZOO_SLOW=1")
    return [pytest.param(n, marks=slow) if heavy(n) else n for n in names]
