"""cnnzoo: the classic image-classification CNNs, from LeNet-5 to EfficientNet, and everything done with them.

The public API is imported lazily, so that `import cnnzoo.runtime` (ONNX Runtime / OpenVINO inference)
does not import torch.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it. The modules are named apart from their functions
# (cnnzoo.prediction defines predict), so that importing a module never shadows a function here.
_API = {
    "list_models": "cnnzoo.registry",
    "create_model": "cnnzoo.registry",
    "model_info": "cnnzoo.registry",
    "summarize": "cnnzoo.summary",
    "ModelCard": "cnnzoo.artifact",
    "InputSpec": "cnnzoo.artifact",
    "load_data": "cnnzoo.data",
    "load_data_for": "cnnzoo.data",
    "split_data": "cnnzoo.data",
    "TrainConfig": "cnnzoo.train",
    "fit": "cnnzoo.train",
    "build_for_data": "cnnzoo.train",
    "StopRequest": "cnnzoo.train",
    "save_checkpoint": "cnnzoo.checkpoint",
    "load_checkpoint": "cnnzoo.checkpoint",
    "build_model": "cnnzoo.checkpoint",
    "evaluate": "cnnzoo.evaluation",
    "predict": "cnnzoo.prediction",
    "open_runtime": "cnnzoo.runtime",
    "open_image": "cnnzoo.images",
    "load_pretrained": "cnnzoo.transfer",
    "import_weights": "cnnzoo.importing",
    "apply_finetune": "cnnzoo.transfer",
    "explain": "cnnzoo.explanation",
    "export": "cnnzoo.exporting",
    "serve": "cnnzoo.serving",
    "svm_baseline": "cnnzoo.baseline",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cnnzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
