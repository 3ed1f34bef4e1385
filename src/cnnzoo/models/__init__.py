"""One module per architecture family. Importing this package imports each of them, which registers its models."""

import importlib
import pkgutil

from cnnzoo.models.base import ZooModel

__all__ = ["ZooModel"]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
