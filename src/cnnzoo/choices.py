"""The names the command line offers as choices, defined once and imported by the library modules that implement
them. Torch-free and dependency-free, so that `cnnzoo COMMAND --help` starts at once."""

__all__ = ["DATASETS", "BACKENDS", "EXPORT_FORMATS", "TORCHSCRIPT_METHODS"]

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder", "fake")  # cnnzoo.data
BACKENDS = ("torch", "onnxruntime", "openvino")  # cnnzoo.runtime
EXPORT_FORMATS = ("onnx", "torchscript", "openvino")  # cnnzoo.exporting
TORCHSCRIPT_METHODS = ("trace", "script")  # cnnzoo.exporting
