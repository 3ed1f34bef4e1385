"""The contract every cnnzoo network honours, so that fine-tuning, CAM, export and analysis are written once.

    forward(x) == forward_head(forward_features(x))
    forward_features(x)  -> the last spatial feature map, N x num_features x H x W
    forward_head(x)      -> pooling, dropout, classifier: N x num_classes
    reset_classifier(n)  -> a new, freshly initialised final linear layer with n outputs
    stages()             -> the ordered (name, module) list that fine-tuning freezes from the front
    cam_layer            -> the module whose output is the feature map CAM-style explanations use

forward, forward_features and forward_head stay TorchScript-compatible: no get_submodule, no super() calls.
"""

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

__all__ = ["ZooModel"]


class ZooModel(nn.Module, metaclass=ABCMeta):
    # Set by every network's __init__: num_classes, num_features. (No class-level annotations: TorchScript
    # would try to resolve them.)
    classifier_path = "fc"  # dotted path of the final nn.Linear, replaced by reset_classifier
    stage_names = ()  # dotted module names, one per stage, in forward order (fine-tuning freezes from the front)
    cam_layer = ""  # dotted module name whose output equals forward_features(x)
    channels_last = False  # memory-format hint the trainer and predictor follow (depthwise nets)

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def forward_head(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.get_submodule(self.classifier_path)

    def reset_classifier(self, num_classes: int) -> None:
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
        parent, _, leaf = self.classifier_path.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, new)
        self.num_classes = num_classes

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(name, self.get_submodule(name)) for name in self.stage_names]
