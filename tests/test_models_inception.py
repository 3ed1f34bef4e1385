"""The Inception family: golden parameter counts, auxiliary heads, small inputs, receptive fields through
branches, the paper-exact GoogLeNet, timm's names for Inception-v4 / Inception-ResNet-v2, TorchScript."""

import pytest
import torch
import torchvision
from torch import nn

from cnnzoo.errors import UserError
from cnnzoo.layers import LocalResponseNorm
from cnnzoo.registry import create_model, list_models, model_info
from cnnzoo.summary import summarize

# At 1000 classes. torchvision's meta["num_params"] counts googlenet and inception_v3 without their aux heads.
GOLDEN = {
    ("googlenet", True): 13_004_888,
    ("googlenet", False): 6_624_904,
    ("inception_v1", True): 13_378_280,
    ("inception_v1", False): 6_998_552,
    ("inception_v3", True): 27_161_264,
    ("inception_v3", False): 23_834_568,
    ("inception_bn", None): 11_285_224,
    ("inception_v4", None): 42_679_816,  # timm
    ("inception_resnet_v2", None): 55_843_464,  # timm
}
NAMES = sorted({name for name, _ in GOLDEN})
AUX_OUTPUTS = {"googlenet": 3, "inception_v1": 3, "inception_v3": 2}  # (logits, aux2, aux1) / (logits, aux)

# small_input=True at 32x32: (first module after the stem, its output H=W, final feature map H=W).
SMALL = {
    "googlenet": ("inception3a", 32, 8),
    "inception_v1": ("inception3a", 32, 8),
    "inception_bn": ("inception3a", 32, 8),
    "inception_v3": ("Mixed_5b", 28, 6),
    "inception_v4": ("features.6", 24, 5),
    "inception_resnet_v2": ("mixed_5b", 28, 6),
}


def _meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_inception_model_is_covered():
    assert set(list_models("inception*") + list_models("googlenet")) == set(NAMES)
    assert all(model_info(n).small_input for n in NAMES)
    assert model_info("inception_v3").input_size == (3, 299, 299)


@pytest.mark.parametrize(("name", "aux"), list(GOLDEN))
def test_golden_parameter_counts(name, aux):
    kwargs = {} if aux is None else {"aux_logits": aux}
    assert _params(_meta(name, **kwargs)) == GOLDEN[name, aux]


@pytest.mark.parametrize("name", list(AUX_OUTPUTS))
def test_aux_logits_only_in_training_mode(name):
    model = _meta(name, num_classes=10, small_input=True)
    x = torch.empty(2, 3, 32, 32, device="meta")
    out = model.train()(x)
    assert isinstance(out, tuple) and len(out) == AUX_OUTPUTS[name]
    assert all(o.shape == (2, 10) for o in out)
    assert isinstance(model.eval()(x), torch.Tensor) and model(x).shape == (2, 10)

    plain = _meta(name, num_classes=10, small_input=True, aux_logits=False)
    assert not [k for k in plain.state_dict() if k.startswith("aux") or k.startswith("AuxLogits")]
    out = plain.train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


@pytest.mark.parametrize("name", list(AUX_OUTPUTS))
def test_reset_classifier_resets_aux_heads(name):
    model = _meta(name, small_input=True)
    old = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    model.reset_classifier(5)
    new = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 5]
    assert len(old) == len(new) == AUX_OUTPUTS[name]  # the classifier and every auxiliary classifier
    out = model.train()(torch.empty(2, 3, 32, 32, device="meta"))
    assert [o.shape for o in out] == [(2, 5)] * AUX_OUTPUTS[name]


def test_real_training_step_reaches_the_aux_heads():
    """The trainer's loss = main + 0.3 * sum(aux) trains the auxiliary classifiers too."""
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=4, small_input=True).train()
    logits, *aux = model(torch.randn(2, 3, 32, 32))
    target = torch.tensor([0, 3])
    loss = nn.functional.cross_entropy(logits, target) + 0.3 * sum(nn.functional.cross_entropy(a, target) for a in aux)
    loss.backward()
    assert model.aux1.fc2.weight.grad.abs().sum() > 0 and model.aux2.conv.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(SMALL))
def test_small_input_keeps_the_grid(name):
    first, first_size, final_size = SMALL[name]
    model = _meta(name, num_classes=10, small_input=True).eval()
    seen = []
    model.get_submodule(first).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.empty(1, 3, 32, 32, device="meta")
    features = model.forward_features(x)
    assert seen[0][-2:] == (first_size, first_size)
    assert features.shape == (1, model.num_features, final_size, final_size)
    assert model(x).shape == (1, 10)
    # The default stem still reduces by 32 overall (stride-2 convs and pools in the stem).
    default = _meta(name).eval()
    size = model_info(name).input_size[1]
    assert default.forward_features(torch.empty(1, 3, size, size, device="meta")).shape[-1] in (7, 8)


@pytest.mark.parametrize(
    ("name", "branches", "after"),
    [
        # stem 7x7/2, pool 3x3/2, 1x1, 3x3, pool 3x3/2: RF 27, jump 8; 3x3 branches reach 43, 5x5 ones 59
        ("googlenet", ["inception3a.branch1.conv", "inception3a.branch2.1.conv"], "inception3b.branch1.conv"),
        ("inception_v1", ["inception3a.branch2.1.0", "inception3a.branch3.1.0"], "inception3b.branch1.0"),
        ("inception_bn", ["inception3a.branches.1.1.0", "inception3a.branches.2.2.0"], "inception3b.branches.0.0"),
        ("inception_v3", ["Mixed_6b.branch7x7_3.conv", "Mixed_6b.branch7x7dbl_5.conv"], "Mixed_6c.branch1x1.conv"),
        ("inception_resnet_v2", ["repeat.0.branch1.1.conv", "repeat.0.branch2.2.conv"], "repeat.0.conv2d"),
    ],
)
def test_receptive_field_through_branches_is_the_max(name, branches, after):
    summary = summarize(_meta(name), model_info(name).input_size, name)
    rfs = [summary.row(b).rf for b in branches]
    assert rfs[0] != rfs[1]  # the branches really differ
    assert summary.row(after).rf == max(rfs)


def test_receptive_fields_by_hand():
    googlenet = summarize(_meta("googlenet"), (3, 224, 224))
    assert googlenet.row("maxpool2").rf == (27, 27) and googlenet.row("maxpool2").jump == (8, 8)
    assert googlenet.row("inception3b.branch1.conv").rf == (43, 43)  # torchvision's "5x5" branch is 3x3
    assert summarize(_meta("inception_v1"), (3, 224, 224)).row("inception3b.branch1.0").rf == (59, 59)
    v3 = summarize(_meta("inception_v3"), (3, 299, 299))
    rf, jump = v3.row("Mixed_6b.branch1x1.conv").rf, v3.row("Mixed_6b.branch1x1.conv").jump
    # 1x7 then 7x1: the width grows first, by 6 jumps, then the height catches up
    assert v3.row("Mixed_6b.branch7x7_2.conv").rf == (rf[0], rf[1] + 6 * jump[1])
    assert v3.row("Mixed_6b.branch7x7_3.conv").rf == (rf[0] + 6 * jump[0], rf[1] + 6 * jump[1])


def test_inception_v1_is_the_paper_network():
    paper, tv = _meta("inception_v1"), _meta("googlenet")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper.modules())
    assert sum(isinstance(m, LocalResponseNorm) for m in paper.modules()) == 2
    assert paper.inception4a.branch3[1][0].kernel_size == (5, 5)
    assert tv.inception4a.branch3[1].conv.kernel_size == (3, 3)
    assert paper.maxpool4.kernel_size == 3 and tv.maxpool4.kernel_size == 2
    assert paper.dropout.p == 0.4 and tv.dropout.p == 0.2
    assert _meta("inception_v1", dropout=0.1).dropout.p == 0.1


def test_timm_module_names():
    v4 = _meta("inception_v4").state_dict()
    assert {"features.0.conv.weight", "features.3.conv.bn.running_var", "features.10.branch1.2.conv.weight",
            "features.21.branch2_3b.bn.bias", "last_linear.weight"} <= set(v4)
    irv2 = _meta("inception_resnet_v2").state_dict()
    assert {"conv2d_1a.conv.weight", "mixed_5b.branch3.1.bn.weight", "repeat.9.conv2d.bias",
            "repeat_1.19.branch1.2.conv.weight", "mixed_7a.branch2.2.bn.running_mean", "repeat_2.8.conv2d.weight",
            "block8.conv2d.bias", "conv2d_7b.bn.weight", "classif.weight"} <= set(irv2)
    # timm's BatchNorm eps 1e-3 everywhere (TF-slim's)
    assert all(m.eps == 1e-3 for m in _meta("inception_v4").modules() if isinstance(m, nn.BatchNorm2d))


def test_configurable_arguments():
    for name in NAMES:
        model = _meta(name, num_classes=7, in_chans=1, dropout=0.3)
        assert model.num_classes == 7 and model.get_classifier().out_features == 7
        x = torch.empty(1, 1, *model_info(name).input_size[1:], device="meta")
        assert model.eval()(x).shape == (1, 7)
        assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
        assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 1
    with pytest.raises(UserError, match="transform_input"):
        create_model("inception_v3", in_chans=1, transform_input=True)


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_eval(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, small_input=True).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        y = model(x)
        torch.testing.assert_close(scripted(x), y)
    # A freshly built network's eval-mode logits neither vanish nor explode (torchvision's init does both).
    assert 1e-2 < y.abs().max() < 1e2


def test_googlenet_training_outputs_in_torchvisions_order():
    """torchvision's GoogLeNet returns (logits, aux_logits2, aux_logits1) in training mode; with its weights ours
    returns the same three tensors in the same order (dropout off so that both are deterministic)."""
    torch.manual_seed(0)
    theirs = torchvision.models.googlenet(aux_logits=True, init_weights=True, dropout=0.0, dropout_aux=0.0)
    ours = create_model("googlenet", dropout=0.0, dropout_aux=0.0)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 224, 224)
    expected, got = theirs.train()(x), ours.train()(x)
    assert got._fields == ("logits", "aux_logits2", "aux_logits1")
    for mine, tv in zip(got, expected):
        torch.testing.assert_close(mine, tv, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got.aux_logits1, got.aux_logits2)
