"""Published ImageNet accuracies of the registered networks: figures reported by others, never measured here.

Every figure is ImageNet-1K (ILSVRC-2012) validation accuracy in percent, copied from a named source:

- ``TORCHVISION``: torchvision's documented metrics of its released weights
  (``torchvision.models.get_model_weights(name).<WEIGHTS>.meta["_metrics"]["ImageNet-1K"]``: acc@1, acc@5), as
  torchvision 0.29.1 ships them, for every convolutional network torchvision has (its transformers left out).
  A test checks each figure against the installed torchvision. ``IMAGENET1K_V1`` weights were trained with the
  original, paper-era recipe; ``IMAGENET1K_V2`` (and the SWAG weights, pre-trained on Instagram images) with
  later recipes that add several points without changing the architecture. Comparing architectures means
  comparing recipes too, so the figure a network shows (``published(name)``) is its V1 figure; the others
  stay available through ``published_all(name)``.
- ``PAPERS``: for networks torchvision lacks, a figure from the network's paper, from its authors' release notes
  or from the Keras applications table, named exactly in its source string, and only where the number is known
  exactly. Paper figures often use another test protocol (10 crops, a validation subset); the source says which.

A network in neither table shows no figure. Nothing here is computed, estimated or interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Published", "TORCHVISION", "PAPERS", "PREFERRED_WEIGHTS", "published", "published_all"]

PREFERRED_WEIGHTS = "IMAGENET1K_V1"  # the original recipe: architectures compared on like-for-like training

# name: {torchvision weights: (top-1 %, top-5 %)}; torchvision 0.29.1, weights.meta["_metrics"]["ImageNet-1K"]
TORCHVISION: dict[str, dict[str, tuple[float, float]]] = {
    "alexnet": {"IMAGENET1K_V1": (56.522, 79.066)},
    "convnext_base": {"IMAGENET1K_V1": (84.062, 96.87)},
    "convnext_large": {"IMAGENET1K_V1": (84.414, 96.976)},
    "convnext_small": {"IMAGENET1K_V1": (83.616, 96.65)},
    "convnext_tiny": {"IMAGENET1K_V1": (82.52, 96.146)},
    "densenet121": {"IMAGENET1K_V1": (74.434, 91.972)},
    "densenet161": {"IMAGENET1K_V1": (77.138, 93.56)},
    "densenet169": {"IMAGENET1K_V1": (75.6, 92.806)},
    "densenet201": {"IMAGENET1K_V1": (76.896, 93.37)},
    "efficientnet_b0": {"IMAGENET1K_V1": (77.692, 93.532)},
    "efficientnet_b1": {"IMAGENET1K_V1": (78.642, 94.186), "IMAGENET1K_V2": (79.838, 94.934)},
    "efficientnet_b2": {"IMAGENET1K_V1": (80.608, 95.31)},
    "efficientnet_b3": {"IMAGENET1K_V1": (82.008, 96.054)},
    "efficientnet_b4": {"IMAGENET1K_V1": (83.384, 96.594)},
    "efficientnet_b5": {"IMAGENET1K_V1": (83.444, 96.628)},
    "efficientnet_b6": {"IMAGENET1K_V1": (84.008, 96.916)},
    "efficientnet_b7": {"IMAGENET1K_V1": (84.122, 96.908)},
    "efficientnet_v2_l": {"IMAGENET1K_V1": (85.808, 97.788)},
    "efficientnet_v2_m": {"IMAGENET1K_V1": (85.112, 97.156)},
    "efficientnet_v2_s": {"IMAGENET1K_V1": (84.228, 96.878)},
    "googlenet": {"IMAGENET1K_V1": (69.778, 89.53)},
    "inception_v3": {"IMAGENET1K_V1": (77.294, 93.45)},
    "mnasnet0_5": {"IMAGENET1K_V1": (67.734, 87.49)},
    "mnasnet0_75": {"IMAGENET1K_V1": (71.18, 90.496)},
    "mnasnet1_0": {"IMAGENET1K_V1": (73.456, 91.51)},
    "mnasnet1_3": {"IMAGENET1K_V1": (76.506, 93.522)},
    "mobilenet_v2": {"IMAGENET1K_V1": (71.878, 90.286), "IMAGENET1K_V2": (72.154, 90.822)},
    "mobilenet_v3_large": {"IMAGENET1K_V1": (74.042, 91.34), "IMAGENET1K_V2": (75.274, 92.566)},
    "mobilenet_v3_small": {"IMAGENET1K_V1": (67.668, 87.402)},
    "regnet_x_16gf": {"IMAGENET1K_V1": (80.058, 94.944), "IMAGENET1K_V2": (82.716, 96.196)},
    "regnet_x_1_6gf": {"IMAGENET1K_V1": (77.04, 93.44), "IMAGENET1K_V2": (79.668, 94.922)},
    "regnet_x_32gf": {"IMAGENET1K_V1": (80.622, 95.248), "IMAGENET1K_V2": (83.014, 96.288)},
    "regnet_x_3_2gf": {"IMAGENET1K_V1": (78.364, 93.992), "IMAGENET1K_V2": (81.196, 95.43)},
    "regnet_x_400mf": {"IMAGENET1K_V1": (72.834, 90.95), "IMAGENET1K_V2": (74.864, 92.322)},
    "regnet_x_800mf": {"IMAGENET1K_V1": (75.212, 92.348), "IMAGENET1K_V2": (77.522, 93.826)},
    "regnet_x_8gf": {"IMAGENET1K_V1": (79.344, 94.686), "IMAGENET1K_V2": (81.682, 95.678)},
    # No V1: both figures are of SWAG weights, pre-trained on 3.6B Instagram images, so none is shown by default.
    "regnet_y_128gf": {"IMAGENET1K_SWAG_E2E_V1": (88.228, 98.682), "IMAGENET1K_SWAG_LINEAR_V1": (86.068, 97.844)},
    "regnet_y_16gf": {"IMAGENET1K_V1": (80.424, 95.24), "IMAGENET1K_V2": (82.886, 96.328),
                      "IMAGENET1K_SWAG_E2E_V1": (86.012, 98.054), "IMAGENET1K_SWAG_LINEAR_V1": (83.976, 97.244)},
    "regnet_y_1_6gf": {"IMAGENET1K_V1": (77.95, 93.966), "IMAGENET1K_V2": (80.876, 95.444)},
    "regnet_y_32gf": {"IMAGENET1K_V1": (80.878, 95.34), "IMAGENET1K_V2": (83.368, 96.498),
                      "IMAGENET1K_SWAG_E2E_V1": (86.838, 98.362), "IMAGENET1K_SWAG_LINEAR_V1": (84.622, 97.48)},
    "regnet_y_3_2gf": {"IMAGENET1K_V1": (78.948, 94.576), "IMAGENET1K_V2": (81.982, 95.972)},
    "regnet_y_400mf": {"IMAGENET1K_V1": (74.046, 91.716), "IMAGENET1K_V2": (75.804, 92.742)},
    "regnet_y_800mf": {"IMAGENET1K_V1": (76.42, 93.136), "IMAGENET1K_V2": (78.828, 94.502)},
    "regnet_y_8gf": {"IMAGENET1K_V1": (80.032, 95.048), "IMAGENET1K_V2": (82.828, 96.33)},
    "resnet101": {"IMAGENET1K_V1": (77.374, 93.546), "IMAGENET1K_V2": (81.886, 95.78)},
    "resnet152": {"IMAGENET1K_V1": (78.312, 94.046), "IMAGENET1K_V2": (82.284, 96.002)},
    "resnet18": {"IMAGENET1K_V1": (69.758, 89.078)},
    "resnet34": {"IMAGENET1K_V1": (73.314, 91.42)},
    "resnet50": {"IMAGENET1K_V1": (76.13, 92.862), "IMAGENET1K_V2": (80.858, 95.434)},
    "resnext101_32x8d": {"IMAGENET1K_V1": (79.312, 94.526), "IMAGENET1K_V2": (82.834, 96.228)},
    "resnext101_64x4d": {"IMAGENET1K_V1": (83.246, 96.454)},
    "resnext50_32x4d": {"IMAGENET1K_V1": (77.618, 93.698), "IMAGENET1K_V2": (81.198, 95.34)},
    "shufflenet_v2_x0_5": {"IMAGENET1K_V1": (60.552, 81.746)},
    "shufflenet_v2_x1_0": {"IMAGENET1K_V1": (69.362, 88.316)},
    "shufflenet_v2_x1_5": {"IMAGENET1K_V1": (72.996, 91.086)},
    "shufflenet_v2_x2_0": {"IMAGENET1K_V1": (76.23, 93.006)},
    "squeezenet1_0": {"IMAGENET1K_V1": (58.092, 80.42)},
    "squeezenet1_1": {"IMAGENET1K_V1": (58.178, 80.624)},
    "vgg11": {"IMAGENET1K_V1": (69.02, 88.628)},
    "vgg11_bn": {"IMAGENET1K_V1": (70.37, 89.81)},
    "vgg13": {"IMAGENET1K_V1": (69.928, 89.246)},
    "vgg13_bn": {"IMAGENET1K_V1": (71.586, 90.374)},
    "vgg16": {"IMAGENET1K_V1": (71.592, 90.382)},
    "vgg16_bn": {"IMAGENET1K_V1": (73.36, 91.516)},
    "vgg19": {"IMAGENET1K_V1": (72.376, 90.876)},
    "vgg19_bn": {"IMAGENET1K_V1": (74.218, 91.842)},
    "wide_resnet101_2": {"IMAGENET1K_V1": (78.848, 94.284), "IMAGENET1K_V2": (82.51, 96.02)},
    "wide_resnet50_2": {"IMAGENET1K_V1": (78.468, 94.086), "IMAGENET1K_V2": (81.602, 95.758)},
}

_ALEXNET = "Krizhevsky et al. 2012, Table 2, 1 CNN (error 40.7 / 18.2 %; 10 crops per image)"
# The authors' released models, in their repositories' READMEs: single 224 crop of the 256 resize, as torchvision.
_RESNET = ("He et al. 2016, the released ResNet-50, github.com/KaimingHe/deep-residual-networks README, 1-crop "
           "validation error (error 24.7 / 7.8 %)")
_SENET = ("Hu et al. 2018, the released {}, github.com/hujie-frank/SENet README, Table 1, single-crop validation "
          "error (error {} / {} %)")
_MOBILENET = "Howard et al. 2017 (arXiv:1704.04861), Table 6, {} MobileNet-224 (no top-5 reported)"
_EFFICIENTNET = "Tan & Le 2019 (arXiv:1905.11946), Table 2, EfficientNet-B{} (Google's TensorFlow release)"
_EFFICIENTNET_V2 = ("Tan & Le 2021 (arXiv:2104.00298), Table 7, EfficientNetV2-{} trained on ImageNet-1K (no top-5 "
                    "reported)")
_INCEPTION_V4 = ("Szegedy et al. 2017 (arXiv:1602.07261), Table 2, {} (error {} / {} %; single crop, "
                 "non-blacklisted subset of the validation set)")

# name: (top-1 %, top-5 % or None, source); figures converted from the error rates the sources print.
PAPERS: dict[str, tuple[float | None, float | None, str]] = {
    "alexnet_v1": (59.3, 81.8, _ALEXNET),
    "resnet50_v1": (75.3, 92.2, _RESNET),
    "se_resnet50": (77.63, 93.64, _SENET.format("SE-ResNet-50", "22.37", "6.36")),
    "se_resnet101": (78.25, 94.28, _SENET.format("SE-ResNet-101", "21.75", "5.72")),
    "se_resnet152": (78.66, 94.46, _SENET.format("SE-ResNet-152", "21.34", "5.54")),
    "se_resnext50_32x4d": (79.03, 94.46, _SENET.format("SE-ResNeXt-50 (32 x 4d)", "20.97", "5.54")),
    "senet154": (81.32, 95.53, _SENET.format("SENet-154", "18.68", "4.47")),
    # The released models the paper measured, in their own layout (cnnzoo's legacy_ networks).
    "legacy_se_resnet50": (77.63, 93.64, _SENET.format("SE-ResNet-50", "22.37", "6.36")),
    "legacy_se_resnet101": (78.25, 94.28, _SENET.format("SE-ResNet-101", "21.75", "5.72")),
    "legacy_se_resnet152": (78.66, 94.46, _SENET.format("SE-ResNet-152", "21.34", "5.54")),
    "legacy_se_resnext50_32x4d": (79.03, 94.46, _SENET.format("SE-ResNeXt-50 (32 x 4d)", "20.97", "5.54")),
    "legacy_senet154": (81.32, 95.53, _SENET.format("SENet-154", "18.68", "4.47")),
    "mobilenet_v1": (70.6, None, _MOBILENET.format("1.0")),
    "mobilenet_v1_075": (68.4, None, _MOBILENET.format("0.75")),
    "mobilenet_v1_050": (63.7, None, _MOBILENET.format("0.5")),
    "mobilenet_v1_025": (50.6, None, _MOBILENET.format("0.25")),
    "inception_v1": (None, 89.93, "Szegedy et al. 2015 (arXiv:1409.4842), Table 5, 1 model, 1 crop "
                                  "(top-5 error 10.07 %; no top-1 reported)"),
    "inception_bn": (74.8, 92.2, _INCEPTION_V4.format("BN-Inception", 25.2, 7.8)),
    # cnnzoo's Inception-v4 follows the released TF-slim checkpoint (see cnnzoo.models.inception).
    "inception_v4": (80.2, 95.2, "TF-Slim pre-trained models table (tensorflow/models, research/slim README), "
                                 "Inception V4 (single crop)"),
    # cnnzoo's Inception-ResNet-v2 is the released TF-slim model (see cnnzoo.models.inception), which Keras ships.
    "inception_resnet_v2": (80.3, 95.3, "Keras applications table, InceptionResNetV2 (the released TF-slim weights)"),
    # The Keras applications these networks are built after (their docstrings name them).
    "xception": (79.0, 94.5, "Keras applications table, Xception (as Chollet 2017, arXiv:1610.02357, Table 1)"),
    "resnet50v2": (76.0, 93.0, "Keras applications table, ResNet50V2"),
    "resnet101v2": (77.2, 93.8, "Keras applications table, ResNet101V2"),
    "resnet152v2": (78.0, 94.2, "Keras applications table, ResNet152V2"),
    "nasnet_a_mobile": (74.4, 91.9, "Keras applications table, NASNetMobile"),
    "nasnet_a_large": (82.5, 96.0, "Keras applications table, NASNetLarge"),
    "efficientnet_v2_b0": (78.7, 94.3, "Keras applications table, EfficientNetV2B0"),
    "efficientnet_v2_b1": (79.8, 95.0, "Keras applications table, EfficientNetV2B1"),
    "efficientnet_v2_b2": (80.5, 95.1, "Keras applications table, EfficientNetV2B2"),
    "efficientnet_v2_b3": (82.0, 95.8, "Keras applications table, EfficientNetV2B3"),
    # Google's TensorFlow releases, which the tf_ networks are (the papers measured these models).
    **{f"tf_efficientnet_b{i}": (top1, top5, _EFFICIENTNET.format(i)) for i, (top1, top5) in enumerate([
        (77.1, 93.3), (79.1, 94.4), (80.1, 94.9), (81.6, 95.7), (82.9, 96.4), (83.6, 96.7), (84.0, 96.8), (84.3, 97.0),
    ])},
    "tf_efficientnetv2_s": (83.9, None, _EFFICIENTNET_V2.format("S")),
    "tf_efficientnetv2_m": (85.1, None, _EFFICIENTNET_V2.format("M")),
    "tf_efficientnetv2_l": (85.7, None, _EFFICIENTNET_V2.format("L")),
    **{f"tf_efficientnetv2_b{i}": (top1, top5, f"Keras applications table, EfficientNetV2B{i} (Google's release)")
       for i, (top1, top5) in enumerate([(78.7, 94.3), (79.8, 95.0), (80.5, 95.1), (82.0, 95.8)])},
}


@dataclass(frozen=True)
class Published:
    """One published ImageNet-1K validation result: reported by its source, not measured by cnnzoo."""

    top1: float | None  # percent
    top5: float | None  # percent
    source: str  # where the figures come from, precisely enough to look them up
    weights: str = ""  # the torchvision weights the figures belong to ("IMAGENET1K_V1"); "" for a paper figure

    @property
    def short_source(self) -> str:
        return f"torchvision {self.weights}" if self.weights else self.source.split(" (")[0].split(",")[0]

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "source": self.source, "weights": self.weights or None}


def _torchvision(name: str, weights: str) -> Published:
    top1, top5 = TORCHVISION[name][weights]
    recipe = "original recipe" if weights == PREFERRED_WEIGHTS else "later recipe, not comparable across networks"
    return Published(top1, top5, f"torchvision {weights} weights, documented metrics ({recipe})", weights)


def published_all(name: str) -> list[Published]:
    """Every published figure of a network, its preferred one (V1 or paper) first; [] when there is none."""
    if name in PAPERS:
        return [Published(*PAPERS[name])]
    weights = sorted(TORCHVISION.get(name, {}), key=lambda w: (w != PREFERRED_WEIGHTS, w))
    return [_torchvision(name, w) for w in weights]


def published(name: str) -> Published | None:
    """The figure shown for a network: torchvision's IMAGENET1K_V1 result, else its paper's; None when neither
    exists (torchvision's V2 and SWAG results alone are not shown: other recipes, or extra training data)."""
    found = published_all(name)
    return found[0] if found and found[0].weights in ("", PREFERRED_WEIGHTS) else None
