"""Every network torchvision also has: same parameter count, torchvision's state_dict loads strictly by name,
and eval-mode outputs agree. torchvision's models are randomly initialised: nothing is downloaded."""

import pytest
import torch
import torchvision

from cnnzoo.registry import create_model, list_models
from modelsizes import smallest_input, sweep

TORCHVISION = set(torchvision.models.list_models(module=torchvision.models))
SHARED = [n for n in list_models() if n in TORCHVISION]
AUX = {"googlenet": {"aux_logits": True, "init_weights": True}, "inception_v3": {"aux_logits": True, "init_weights": True}}


def test_shared_names_cover_the_families():
    expected = {"alexnet", "vgg16_bn", "googlenet", "inception_v3", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
                "densenet121", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0", "efficientnet_b0"}
    assert expected <= set(SHARED), sorted(expected - set(SHARED))


@pytest.mark.parametrize("name", sweep(SHARED))
def test_torchvision_parity(name):
    torch.manual_seed(0)
    theirs = torchvision.models.get_model(name, weights=None, **AUX.get(name, {})).eval()
    with torch.device("meta"):  # our weights come from theirs: skip our own initialisation
        ours = create_model(name)
    ours.to_empty(device="cpu")
    state = theirs.state_dict()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    # The same tensors in the same order (what load_pretrained's by-order converter relies on), under the same
    # names wherever our keys are torchvision's (MobileNetV2 renames its `conv.*` keys only when loading).
    ours_layout, their_layout = list(ours.state_dict().items()), list(state.items())
    assert [v.shape for _, v in ours_layout] == [v.shape for _, v in their_layout]
    if {k for k, _ in ours_layout} == set(state):
        assert [k for k, _ in ours_layout] == [k for k, _ in their_layout]
    ours.load_state_dict(state, strict=True)
    ours.eval()
    x = torch.randn(1, *smallest_input(name, train=False))
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
