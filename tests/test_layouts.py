"""timm weight files, as a user would have them: a randomly initialised timm network (random BatchNorm statistics,
so an epsilon or a padding difference shows) saved as .pth and as .safetensors, loaded with load_pretrained into the
cnnzoo network of the same architecture. The oracle is timm's own forward pass.

Files of a foreign layout load through their named converter (cnnzoo.layouts) with outputs equal to timm's; files
whose architecture differs from the cnnzoo network (the SE paper's released layout, ReLU6, TensorFlow padding) are
refused with the difference named, never loaded by order."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.registry import create_model
from cnnzoo.transfer import load_pretrained
from modelsizes import FULL
from oracles import randomize_bn

timm = pytest.importorskip("timm")
slow = pytest.mark.skipif(not FULL, reason="large timm network: run with CNNZOO_SLOW=1")

# (cnnzoo name, timm name, the layout load_pretrained reports: "" for a load by name)
LOADS = [
    ("vgg11_bn", "vgg11_bn", "timm VGG (convolutional pre-logits)"),
    pytest.param("vgg16", "vgg16", "timm VGG (convolutional pre-logits)", marks=slow),
    ("mobilenet_v3_small", "mobilenetv3_small_100", "timm EfficientNet builder"),  # BatchNorm eps 1e-5 vs our 1e-3
    pytest.param("mobilenet_v3_large", "mobilenetv3_large_100", "timm EfficientNet builder", marks=slow),
    ("mobilenet_v2", "mobilenetv2_100", "timm EfficientNet builder"),
    ("efficientnet_b0", "efficientnet_b0", "timm EfficientNet builder"),
    pytest.param("efficientnet_b5", "efficientnet_b5", "timm EfficientNet builder", marks=slow),  # eps again
    ("mnasnet0_5", "mnasnet_050", "timm EfficientNet builder"),
    pytest.param("mnasnet0_75", "mnasnet_075", "timm EfficientNet builder", marks=slow),
    ("convnext_tiny", "convnext_tiny", "timm ConvNeXt"),
    ("regnet_x_400mf", "regnetx_004_tv", "timm RegNet"),
    ("regnet_y_400mf", "regnety_004", "timm RegNet"),
    pytest.param("regnet_y_8gf", "regnety_080_tv", "timm RegNet", marks=slow),
    ("preact_resnet18", "resnetv2_18", "timm ResNetV2 (pre-activation)"),
    pytest.param("preact_resnet50", "resnetv2_50", "timm ResNetV2 (pre-activation)", marks=slow),
    ("se_resnet18", "seresnet18", ""),
    pytest.param("senet154", "senet154", "", marks=slow),
    ("densenet121", "densenet121", ""),
    ("legacy_se_resnet18", "legacy_seresnet18", "timm legacy SENet (the SE paper's release)"),
    pytest.param("legacy_se_resnet50", "legacy_seresnet50", "timm legacy SENet (the SE paper's release)", marks=slow),
    pytest.param("legacy_se_resnext50_32x4d", "legacy_seresnext50_32x4d", "timm legacy SENet (the SE paper's release)",
                 marks=slow),
    pytest.param("legacy_senet154", "legacy_senet154", "timm legacy SENet (the SE paper's release)", marks=slow),
    ("tf_efficientnet_b0", "tf_efficientnet_b0", "timm EfficientNet builder"),  # TensorFlow padding, eps 1e-3
    pytest.param("tf_efficientnet_b3", "tf_efficientnet_b3", "timm EfficientNet builder", marks=slow),
    pytest.param("tf_efficientnet_b7", "tf_efficientnet_b7", "timm EfficientNet builder", marks=slow),
    ("tf_efficientnetv2_b0", "tf_efficientnetv2_b0", "timm EfficientNet builder"),  # TensorFlow padding
    pytest.param("tf_efficientnetv2_s", "tf_efficientnetv2_s", "timm EfficientNet builder", marks=slow),
]

# (cnnzoo name, timm name, the file's name, what the refusal names)
REFUSALS = [
    ("se_resnet18", "legacy_seresnet18", "legacy_seresnet18", "load the file into cnnzoo's legacy_ network"),
    pytest.param("se_resnet50", "legacy_seresnet50", "legacy_seresnet50", "pool the stem in ceil mode", marks=slow),
    ("legacy_se_resnet18", "seresnet18", "seresnet18", "does not fit this model"),
    ("mobilenet_v1", "mobilenetv1_100", "mobilenetv1_100", "ReLU6"),
    ("efficientnet_b0", "tf_efficientnet_b0", "tf_efficientnet_b0.ns_jft_in1k", "pad like TensorFlow"),
    ("efficientnet_v2_b0", "tf_efficientnetv2_b0", "weights", "pad like TensorFlow"),
    ("mobilenet_v3_small", "mobilenetv2_100", "mobilenetv2_100", "does not fit this model"),
    ("resnet18", "resnetv2_18", "resnetv2_18", "converts it for the networks matching 'preact_resnet"),
    ("tf_efficientnet_b0", "efficientnet_b0", "efficientnet_b0.ra_in1k", "not a TensorFlow port"),
    ("efficientnet_v2_b0", "tf_efficientnetv2_b0", "tf_efficientnetv2_b0", "pad like TensorFlow"),
    ("tf_efficientnetv2_s", "efficientnetv2_s", "efficientnetv2_s", "not a TensorFlow port"),  # eps 1e-5, symmetric
]


LEGACY = {"legacy_se_resnet18": "legacy_seresnet18", "legacy_se_resnet34": "legacy_seresnet34",
          "legacy_se_resnet50": "legacy_seresnet50", "legacy_se_resnet101": "legacy_seresnet101",
          "legacy_se_resnet152": "legacy_seresnet152", "legacy_se_resnext50_32x4d": "legacy_seresnext50_32x4d",
          "legacy_se_resnext101_32x4d": "legacy_seresnext101_32x4d", "legacy_senet154": "legacy_senet154"}


@pytest.mark.parametrize("ours", LEGACY)
def test_legacy_se_networks_count_timms_parameters(ours):
    with torch.device("meta"):
        mine = sum(p.numel() for p in create_model(ours).parameters())
        theirs = sum(p.numel() for p in timm.create_model(LEGACY[ours], pretrained=False).parameters())
    assert mine == theirs


def _timm_files(timm_name: str, folder, stem: str | None = None) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model(timm_name, pretrained=False, num_classes=10)).eval()
    state = theirs.state_dict()
    stem = stem or timm_name
    torch.save(state, folder / f"{stem}.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{stem}.safetensors"))
    return theirs, [folder / f"{stem}.pth", folder / f"{stem}.safetensors"]


@pytest.mark.parametrize(("ours", "timm_name", "layout"), LOADS)
def test_timm_file_loads_with_timms_outputs(ours, timm_name, layout, tmp_path):
    theirs, files = _timm_files(timm_name, tmp_path)
    # In float64, so that float32 summation order (timm's ResNetV2-50 vs ours: 2e-5) does not hide a real difference.
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.inference_mode():
        expected = theirs.double()(x)
    assert expected.abs().max() > 1e-2
    for path in files:  # a .pth keeps timm's module order, a .safetensors file sorts its keys: both must work
        model = create_model(ours, num_classes=10)
        report = load_pretrained(model, path)
        assert report.layout == layout and report.num_classes == 10 and not report.classifier_replaced
        assert (f"converted from the {layout} layout" in str(report)) == bool(layout)
        with torch.inference_mode():
            # 1e-5 of the logits' scale: the BatchNorm epsilon folded into float32 running variances (MobileNetV3,
            # EfficientNet-B5) rounds at float32 precision; the renamed layouts agree to ~1e-15.
            torch.testing.assert_close(model.double().eval()(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_timm_file_with_another_class_count_keeps_the_backbone(tmp_path):
    """A 1000-class timm file fine-tuned into 5 classes: every converted tensor but the classifier is timm's."""
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model("mobilenetv3_small_100", pretrained=False)).eval()
    torch.save(theirs.state_dict(), tmp_path / "mbv3.pth")
    model = create_model("mobilenet_v3_small", num_classes=5)
    report = load_pretrained(model, tmp_path / "mbv3.pth", num_classes=5)
    assert report.file_classes == 1000 and report.classifier_replaced and model.num_classes == 5
    with torch.inference_mode():  # the features (the classifier's input) are timm's
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(model.eval().forward_features(x), theirs.forward_features(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.features[0][0].weight, theirs.conv_stem.weight)


@pytest.mark.parametrize(("ours", "timm_name", "stem", "reason"), REFUSALS)
def test_timm_file_of_another_architecture_is_refused(ours, timm_name, stem, reason, tmp_path):
    _, files = _timm_files(timm_name, tmp_path, stem)
    for path in files:
        model = create_model(ours, num_classes=10)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(UserError, match=reason):
            load_pretrained(model, path)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_tf_efficientnet_pads_like_timm_at_odd_and_even_sizes(tmp_path):
    """TensorFlow's "SAME" padding depends on the input size: at 65 (2^k + 1) every stride-2 convolution happens to pad
    symmetrically, at 64, 67 and 33x40 some pad nothing before and one pixel after. A timm tf_efficientnet_b0 file
    (under its timm name) gives timm's outputs at all of them; the same tensors in the symmetrically padded
    efficientnet_b0 (with timm's eps, so only the padding differs) only at 65."""
    theirs, files = _timm_files("tf_efficientnet_b0", tmp_path)
    theirs.double()
    model = create_model("tf_efficientnet_b0", num_classes=10)
    load_pretrained(model, files[0])
    model.double().eval()
    symmetric = create_model("efficientnet_b0", num_classes=10).double().eval()
    symmetric.load_state_dict(model.state_dict())
    for m in symmetric.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
    for size in ((65, 65), (64, 64), (67, 67), (33, 40)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        with torch.inference_mode():  # a random network's logits barely depend on x: the feature maps show it
            expected, features = theirs(x), theirs.forward_features(x)
            tol = {"rtol": 1e-5, "atol": 1e-5 * features.abs().max()}
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
            torch.testing.assert_close(model.forward_features(x), features, **tol)
            assert torch.allclose(symmetric.forward_features(x), features, **tol) == (size == (65, 65)), size


def test_tf_efficientnetv2_pads_like_timm_at_odd_and_even_sizes(tmp_path):
    """As for tf_efficientnet_b0: a timm tf_efficientnetv2_b0 file gives timm's outputs at 65, 64, 67 and 33x40; the
    same tensors in the symmetrically padded efficientnet_v2_b0 (the same eps) only at 65, where "SAME" is symmetric."""
    theirs, files = _timm_files("tf_efficientnetv2_b0", tmp_path)
    theirs.double()
    model = create_model("tf_efficientnetv2_b0", num_classes=10)
    assert load_pretrained(model, files[1]).layout == "timm EfficientNet builder"
    model.double().eval()
    symmetric = create_model("efficientnet_v2_b0", num_classes=10).double().eval()
    symmetric.load_state_dict(model.state_dict())
    for size in ((65, 65), (64, 64), (67, 67), (33, 40)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        with torch.inference_mode():
            expected, features = theirs(x), theirs.forward_features(x)
            tol = {"rtol": 1e-5, "atol": 1e-5 * features.abs().max()}
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
            torch.testing.assert_close(model.forward_features(x), features, **tol)
            assert torch.allclose(symmetric.forward_features(x), features, **tol) == (size == (65, 65)), size
