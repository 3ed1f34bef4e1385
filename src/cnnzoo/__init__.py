"""cnnzoo: the classic image-classification CNNs, from LeNet-5 to EfficientNet, and everything done with them.

The public API is imported lazily, so that `import cnnzoo.runtime` (ONNX Runtime / OpenVINO inference)
does not import torch.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "list_models": "cnnzoo.registry",
    "create_model": "cnnzoo.registry",
    "model_info": "cnnzoo.registry",
    "summarize": "cnnzoo.summary",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cnnzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
