"""Every registered network builds, trains one step, and honours the model contract (models/base.py)."""

import pytest
import torch
from torch import nn

from cnnzoo.models import ZooModel
from cnnzoo.registry import create_model, list_models, model_info
from modelsizes import smallest_input, sweep

NAMES = list_models()


def _main(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", sweep(NAMES))
def test_contract(name):
    torch.manual_seed(0)
    size = smallest_input(name)
    model = create_model(name, num_classes=7)
    assert isinstance(model, ZooModel) and model.num_classes == 7
    x = torch.randn(2, *size)

    # One training step: the output shape, finite values, and a gradient for every parameter.
    out = model.train()(x)
    outputs = out if isinstance(out, tuple) else (out,)
    assert all(o.shape == (2, 7) for o in outputs)
    assert all(torch.isfinite(o).all() for o in outputs)
    sum(o.float().square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"

    model.eval()
    with torch.inference_mode():
        features = model.forward_features(x)
        assert features.dim() == 4 and features.shape[1] == model.num_features
        logits = model(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
        torch.testing.assert_close(model.forward_head(features), logits, rtol=0, atol=0)

        # The CAM layer's output is the feature map forward_features returns.
        seen = []
        hook = model.get_submodule(model.cam_layer).register_forward_hook(lambda m, i, o: seen.append(o))
        model(x)
        hook.remove()
        torch.testing.assert_close(seen[-1], features)

    classifier = model.get_classifier()
    assert isinstance(classifier, (nn.Linear, nn.Conv2d))
    model.reset_classifier(3)
    assert model.num_classes == 3
    with torch.inference_mode():
        assert model(x).shape == (2, 3)

    stages = model.stages()
    assert len(stages) >= 2 and len({n for n, _ in stages}) == len(stages)
    assert all(isinstance(m, nn.Module) for _, m in stages)


@pytest.mark.parametrize("name", [n for n in NAMES if model_info(n).small_input])
def test_small_input(name):
    """small_input=True keeps a 32x32 image from collapsing to 1x1 before the last stage."""
    channels = model_info(name).input_size[0]
    model = create_model(name, num_classes=10, small_input=True).eval()
    x = torch.randn(1, channels, 32, 32)
    with torch.inference_mode():
        features = model.forward_features(x)
        assert model.forward_head(features).shape == (1, 10)
    assert min(features.shape[-2:]) >= 2, f"{name}: 32x32 input ends at {tuple(features.shape[-2:])}"


def test_in_chans_and_defaults():
    assert create_model("lenet5").num_classes == 10
    assert create_model("lenet5", in_chans=3).features.c1.in_channels == 3
    # None keeps the model's own default, so CLI flags defaulting to None never override it.
    assert create_model("lenet5", num_classes=None, in_chans=None).num_classes == 10
