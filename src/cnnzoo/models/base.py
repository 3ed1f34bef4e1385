"""The contract every cnnzoo network honours, so that fine-tuning, CAM, export and analysis are written once.

    forward(x) == forward_head(forward_features(x))
    forward_features(x)  -> the last spatial feature map, N x num_features x H x W
    forward_head(x)      -> pooling, dropout, classifier: N x num_classes
    reset_classifier(n)  -> a new, freshly initialised final linear layer with n outputs
    append_classifier(n) -> keep the classifier and put a new n-way layer on top of it (fine-tuning with --new-fc);
                            ``appended_classes`` records it for the model card
    stages()             -> the ordered (name, module) list that fine-tuning freezes from the front
    cam_layer            -> the module whose output is the feature map CAM-style explanations use
    set_training_progress(p) -> schedules inside the network (NASNet's drop-path), called by the trainer per epoch
    aux_classifiers      -> {auxiliary head: the dotted path of its final class layer}, the heads the architecture
                            can have (GoogLeNet's aux1/aux2, Inception-v3's AuxLogits, NASNet's aux_head);
                            aux_heads() lists those built (aux_logits=True); reset_classifier resets their class
                            layers with the main one, and load_pretrained keeps, drops or initialises them

A module whose weights other code bases save under other key names (torchvision's older or flatter layouts) defines
``rename_state_keys(state_dict, prefix)``, called on load and by ``load_pretrained`` before it matches names.

forward, forward_features and forward_head stay TorchScript-compatible: no get_submodule, no super() calls.
"""

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

__all__ = ["ZooModel"]

# The layer append_classifier puts on top of a classifier: a linear layer on the logits or, on the class maps of a
# convolutional classifier (NiN, SqueezeNet), a 1x1 convolution, which equals a linear layer on the pooled logits.
_ON_TOP = {
    nn.Linear: lambda old, n: nn.Linear(old.out_features, n),
    nn.Conv2d: lambda old, n: nn.Conv2d(old.out_channels, n, 1),
}


class ZooModel(nn.Module, metaclass=ABCMeta):
    # Set by every network's __init__: num_classes, num_features. (No class-level annotations: TorchScript
    # would try to resolve them.)
    classifier_path = "fc"  # dotted path of the final nn.Linear, replaced by reset_classifier
    stage_names = ()  # dotted module names, one per stage, in forward order (fine-tuning freezes from the front)
    cam_layer = ""  # dotted module name whose output equals forward_features(x)
    channels_last = False  # memory-format hint the trainer and predictor follow (depthwise nets)
    appended_classes = None  # set by append_classifier: the classes of the layer put on top of the classifier
    aux_classifiers = {}  # auxiliary head module -> dotted path of its final class layer (training-only heads)

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def forward_head(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.get_submodule(self.classifier_path)

    def _set_module(self, path: str, module: nn.Module) -> None:
        parent, _, leaf = path.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, leaf, module)

    def _set_classifier(self, module: nn.Module) -> None:
        self._set_module(self.classifier_path, module)

    def aux_heads(self) -> list[str]:
        """The auxiliary heads this instance has (an absent head is an Identity without parameters)."""
        return [head for head in self.aux_classifiers if not isinstance(self.get_submodule(head), nn.Identity)]

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised final linear layer with ``num_classes`` outputs, and the same for the final
        layer of every auxiliary head."""
        for path in [self.classifier_path] + [self.aux_classifiers[head] for head in self.aux_heads()]:
            old = self.get_submodule(path)
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
            self._set_module(path, new.to(old.weight.device))
        self.num_classes = num_classes

    def append_classifier(self, num_classes: int) -> None:
        """Keep the classifier and put a new ``num_classes``-way layer on top of it: the classifier becomes
        ``nn.Sequential(old, new)`` at the same path and ``classifier_path`` points at the new layer, so
        get_classifier, reset_classifier and freezing act on it."""
        old = self.get_classifier()
        new = _ON_TOP[type(old)](old, num_classes).to(device=old.weight.device, dtype=old.weight.dtype)
        self._set_classifier(nn.Sequential(old, new))
        self.classifier_path = f"{self.classifier_path}.1"
        self.num_classes = num_classes
        self.appended_classes = num_classes

    def set_training_progress(self, progress: float) -> None:
        """A schedule inside the network (NASNet's ScheduledDropPath) follows the fraction of training done; the
        trainer calls this before every epoch with epoch / epochs. Most networks have none."""

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(name, self.get_submodule(name)) for name in self.stage_names]
