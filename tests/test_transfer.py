"""Transfer learning: weights from cnnzoo checkpoints and torchvision files, and the three fine-tuning modes
(which parameters change, which stay bit-identical, frozen batch-norm statistics included)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from cnnzoo.checkpoint import build_model, load_checkpoint
from cnnzoo.data import Data, TensorSplit, load_data
from cnnzoo.errors import UserError
from cnnzoo.registry import create_model
from cnnzoo.train import TrainConfig, build_for_data, fit
from cnnzoo.transfer import apply_finetune, freeze_norm_stats, load_pretrained

FIVE = ["01", "23", "45", "67", "89"]  # the fine-tuning task: which pair of digits


def _pairs(split: TensorSplit) -> TensorSplit:
    return dataclasses.replace(split, labels=split.labels // 2, source=f"{split.source}/pairs")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """resnet20 (batch norm) trained briefly on 10-class digits at 16x16, and the 5-class task built from them."""
    folder = tmp_path_factory.mktemp("pretrain")
    digits = load_data("digits", input_size=(1, 16, 16), limit=400)
    config = TrainConfig(epochs=1, batch_size=64, out=str(folder), progress=False)
    fit(build_for_data("resnet20", digits), digits, config)
    five = Data("digit-pairs", FIVE, digits.spec, _pairs(digits.train), _pairs(digits.val))
    return folder / "last.pt", five


def _finetune(pretrained, tmp_path, mode: str, new_fc: bool):
    path, five = pretrained
    model = build_for_data("resnet20", five)
    config = TrainConfig(epochs=1, batch_size=64, init=str(path), finetune=mode, new_fc=new_fc, out=str(tmp_path),
                         progress=False)
    history = fit(model, five, config)
    return model, load_checkpoint(path).state_dict, history


# mode, new_fc, state_dict prefixes that must change (all others stay bit-identical), trainable parameters
MODES = [
    ("all", False, ("stem", "layer1", "layer2", "layer3", "fc"), 269_109),
    ("last:1", False, ("layer3", "fc"), 203_845),
    ("head", False, ("fc",), 64 * 5 + 5),
    ("head", True, ("fc.1",), 10 * 5 + 5),
]


@pytest.mark.parametrize("mode, new_fc, trained, trainable", MODES, ids=["all", "last1", "head", "head-new-fc"])
def test_finetune_changes_exactly_the_trained_part(pretrained, tmp_path, capsys, mode, new_fc, trained, trainable):
    model, before, history = _finetune(pretrained, tmp_path, mode, new_fc)
    assert f"{trainable:,} trainable parameters" in capsys.readouterr().out
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    after = model.state_dict()
    old_name = {"fc.0.weight": "fc.weight", "fc.0.bias": "fc.bias"}  # --new-fc keeps the old classifier as fc.0
    for key, value in after.items():
        if key.endswith("num_batches_tracked") or old_name.get(key, key) not in before:
            continue  # counters move with every forward in training mode; a replaced fc has nothing to compare
        old = before[old_name.get(key, key)]
        if key.startswith(trained):
            if value.dtype.is_floating_point:
                assert not torch.equal(value, old), f"{key} should have been trained"
        else:
            # frozen: weights and BN running statistics bit-identical
            assert torch.equal(value, old), f"{key} should be frozen ({mode})"
    print(f"{mode}{' --new-fc' if new_fc else ''}: epoch {history.epochs[-1]['time']:.2f} s")
    # The run's checkpoint rebuilds the fine-tuned network exactly (appended classifier included).
    ckpt = load_checkpoint(tmp_path / "last.pt")
    _, five = pretrained
    assert ckpt.card.classes == tuple(FIVE) and ckpt.card.input == five.spec
    assert ckpt.card.appended_classes == model.appended_classes == (5 if new_fc else None)
    rebuilt = build_model(ckpt)
    x = torch.randn(2, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))
    if new_fc:  # --init from a --new-fc run: load_pretrained rebuilds the appended classifier too
        again = create_model("resnet20", num_classes=5, in_chans=1)
        report = load_pretrained(again, tmp_path / "last.pt")
        assert report.appended_fc == 5 and again.appended_classes == 5 and not report.classifier_replaced
        assert report.card == ckpt.card  # what --init adopts the normalisation from, with no second read
        with torch.inference_mode():
            torch.testing.assert_close(again.eval()(x), rebuilt(x))


def _graph_size(tensor: torch.Tensor) -> int:
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_head_skips_the_backbone_backward():
    """Why `head` is faster per epoch than `all`, measured without a clock: autograd records no backbone op."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    sizes = {}
    for mode in ("all", "head"):
        model = apply_finetune(create_model("resnet20", num_classes=5, in_chans=1), mode).train()
        freeze_norm_stats(model)
        features = model.forward_features(x)
        assert features.requires_grad == (mode == "all")
        sizes[mode] = _graph_size(model.forward_head(features).sum())
    print(f"backward graph nodes: all {sizes['all']}, head {sizes['head']}")
    assert sizes["head"] * 20 < sizes["all"]


def test_frozen_norm_layers_keep_their_statistics():
    torch.manual_seed(0)
    model = apply_finetune(create_model("resnet20", num_classes=5, in_chans=1), "last:1")
    model.layer1[0].bn1 = nn.BatchNorm2d(16, affine=False)  # no parameters: follows its block (frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    freeze_norm_stats(model)
    model(torch.randn(4, 1, 16, 16))
    after = model.state_dict()
    for key in before:
        if "running_" in key:
            assert torch.equal(before[key], after[key]) != key.startswith("layer3"), key
    assert not model.stem[1].training and model.layer3[0].bn1.training and not model.layer1[0].bn1.training


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory):
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18().eval()
    folder = tmp_path_factory.mktemp("tv")
    state = theirs.state_dict()
    files = {
        "plain.pth": state,
        "ddp.pth": {f"module.{k}": v for k, v in state.items()},
        "wrapped.pt": {"model": state, "epoch": 90},  # torchvision's reference script saves weights under "model"
    }
    for name, content in files.items():
        torch.save(content, folder / name)
    save_file(state, folder / "plain.safetensors")
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, folder / "ddp.safetensors")
    return theirs, folder


@pytest.mark.parametrize("name", ["plain.pth", "ddp.pth", "wrapped.pt", "plain.safetensors", "ddp.safetensors"])
def test_torchvision_resnet18_loads_with_equal_outputs(torchvision_resnet18, name):
    theirs, folder = torchvision_resnet18
    ours = create_model("resnet18")
    report = load_pretrained(ours, folder / name)
    assert report.loaded == len(theirs.state_dict()) and not report.classifier_replaced
    assert report.stripped_prefix == ("module." if name.startswith("ddp") else "")
    assert "\n" not in str(report) and ("stripped prefix 'module.'" in str(report)) == name.startswith("ddp")
    assert report.card is None  # nobody's card: no input contract is claimed for a plain state_dict
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(ours.eval()(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_class_count_mismatch_replaces_the_classifier(torchvision_resnet18):
    theirs, folder = torchvision_resnet18
    ours = create_model("resnet18")
    report = load_pretrained(ours, folder / "plain.pth", num_classes=5)
    assert report.classifier_replaced and (report.file_classes, report.num_classes) == (1000, 5)
    assert "classifier replaced: 1000 -> 5 classes" in str(report)
    assert ours.fc.out_features == 5 and torch.equal(ours.layer4[1].conv2.weight, theirs.layer4[1].conv2.weight)
    # None keeps the file's classifier, resizing the model's (what --new-fc builds on).
    kept = create_model("resnet18", num_classes=5)
    report = load_pretrained(kept, folder / "plain.safetensors")
    assert not report.classifier_replaced and kept.num_classes == 1000 and torch.equal(kept.fc.weight, theirs.fc.weight)


def test_other_mismatches_name_the_first_differing_keys(torchvision_resnet18, tmp_path):
    _, folder = torchvision_resnet18
    with pytest.raises(UserError, match=r"shapes differ at conv1.weight \(64, 3, 3, 3\) vs file \(64, 3, 7, 7\)"):
        load_pretrained(create_model("resnet18", small_input=True), folder / "plain.pth")
    with pytest.raises(UserError, match=r"missing layer1.2.conv1.weight \(64, 64, 3, 3\)"):
        load_pretrained(create_model("resnet34"), folder / "plain.pth")
    with pytest.raises(UserError, match="no such weights file"):
        load_pretrained(create_model("resnet18"), tmp_path / "absent.pth")
    torch.save({"args": argparse.Namespace(lr=0.1), "model": {}}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="not a readable checkpoint"):  # weights_only refuses arbitrary objects
        load_pretrained(create_model("resnet18"), tmp_path / "pickled.pth")


def test_a_checkpoint_with_a_broken_card_is_refused_in_one_line(pretrained, tmp_path):
    """--init reads the card of a cnnzoo checkpoint (its classes, the normalisation it was trained with): one whose
    card is unusable is named, not loaded as bare weights."""
    path, _ = pretrained
    raw = torch.load(path, weights_only=True)
    del raw["card"]["input"]["mean"]
    torch.save(raw, tmp_path / "broken.pt")
    with pytest.raises(UserError, match=r"^\S*broken.pt: the model metadata lacks mean$"):
        load_pretrained(create_model("resnet20", num_classes=10, in_chans=1), tmp_path / "broken.pt")


def test_version_1_checkpoints_read_the_same_card_both_ways(tmp_path):
    """Checkpoints of cnnzoo's first format keep their card in flat keys; load_checkpoint and load_pretrained (what
    --init reads) both find it, and neither takes card keys for the training record."""
    torch.manual_seed(0)
    net = create_model("lenet5_relu", num_classes=3)
    net.append_classifier(2)
    state = net.state_dict()
    flat = {"model_name": "lenet5_relu", "model_kwargs": {"num_classes": 3}, "classes": ["a", "b"],
            "input_size": [1, 32, 32], "mean": [0.5], "std": [0.25], "resize_size": 36, "appended_fc": 2}
    torch.save({"format": "cnnzoo-checkpoint", "version": 1, "state_dict": state, **flat, "epoch": 4,
                "config": {"data": "digits"}}, tmp_path / "v1.pt")
    ckpt = load_checkpoint(tmp_path / "v1.pt")
    assert (ckpt.card.classes, ckpt.card.appended_classes, ckpt.card.extra) == (("a", "b"), 2, {"data": "digits"})
    assert (ckpt.card.input.mean, ckpt.card.input.std, ckpt.card.input.resize_size) == ((0.5,), (0.25,), 36)
    assert ckpt.record == {"epoch": 4, "config": {"data": "digits"}}
    again = create_model("lenet5_relu", num_classes=3)
    report = load_pretrained(again, tmp_path / "v1.pt")
    assert report.card == ckpt.card and report.appended_fc == 2 and report.loaded == len(state)
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(again.eval()(x), net.eval()(x))


def test_other_names_same_shapes_are_refused(torchvision_resnet18, tmp_path):
    """The same tensors in the same order under unknown names are not enough to load: files of other architectures
    hold the same shapes in the same order (tests/test_layouts.py has the real cases from timm)."""
    theirs, _ = torchvision_resnet18
    renamed = {k.replace("layer", "stage").replace("downsample", "shortcut"): v for k, v in theirs.state_dict().items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    save_file(renamed, tmp_path / "renamed.safetensors")
    for name in ("renamed.pth", "renamed.safetensors"):
        with pytest.raises(UserError, match=r"does not fit this model: missing layer1.0.conv1.weight"):
            load_pretrained(create_model("resnet18"), tmp_path / name)


@pytest.mark.parametrize("file_aux", [True, False], ids=["file-with-aux", "file-without-aux"])
def test_googlenet_auxiliary_heads(tmp_path, file_aux):
    torch.manual_seed(0)
    theirs = torchvision.models.googlenet(aux_logits=file_aux, init_weights=True).eval()
    torch.save(theirs.state_dict(), tmp_path / "googlenet.pth")
    ours = create_model("googlenet", aux_logits=not file_aux)
    report = load_pretrained(ours, tmp_path / "googlenet.pth")
    if file_aux:
        assert report.aux_dropped == ["aux1", "aux2"] and "dropped" in str(report)
    else:
        assert report.aux_initialised == ["aux1", "aux2"] and "newly initialised: aux1, aux2" in str(report)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(ours.eval()(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_finetune_mode_errors_and_stage_rule():
    model = create_model("lenet5_relu")
    with pytest.raises(UserError, match="last:N with 1 <= N <= 4"):
        apply_finetune(model, "last:5")
    with pytest.raises(UserError, match="unknown fine-tuning mode 'top'"):
        apply_finetune(model, "top")
    apply_finetune(model, "last:2")  # stages c1, c3, c5, f6: c5 and f6 train, with the classifier after them
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "features.c5.weight", "features.c5.bias", "f6.weight", "f6.bias", "fc.weight", "fc.bias"]
    apply_finetune(model, "all")
    assert all(p.requires_grad for p in model.parameters())


def test_new_fc_on_a_class_map_classifier():
    """NiN classifies with a 1x1 conv before pooling: the appended layer is a 1x1 conv too."""
    with torch.device("meta"):
        nin = apply_finetune(create_model("nin", num_classes=10), "head", new_fc_classes=3)
        assert nin.appended_classes == 3 and nin.num_classes == 3
        assert nin.eval()(torch.empty(1, 3, 224, 224)).shape == (1, 3)
    assert [n for n, p in nin.named_parameters() if p.requires_grad] == ["classifier.1.weight", "classifier.1.bias"]


@pytest.mark.parametrize("name", ["googlenet", "inception_v1", "inception_v3", "nasnet_a_mobile"])
def test_auxiliary_heads_are_declared_and_reset_with_the_classifier(name):
    """The contract's aux_classifiers name every training-only head: reset_classifier gives each the new class
    count, so a fine-tuned network's training outputs all have it (checked on the meta device, shapes only)."""
    from modelsizes import smallest_input

    with torch.device("meta"):
        model = create_model(name)
        assert model.aux_heads() == list(model.aux_classifiers) and model.aux_heads()
        model.reset_classifier(5)
        outputs = model.train()(torch.zeros(2, *smallest_input(name)))
    assert isinstance(outputs, tuple) and len(outputs) == 1 + len(model.aux_heads())
    assert all(o.shape == (2, 5) for o in outputs)
    with torch.device("meta"):
        assert create_model(name, aux_logits=False).aux_heads() == []


@pytest.mark.parametrize("channels", [1, 6])
def test_rgb_weights_into_a_grey_network_adapt_the_first_convolution(torchvision_resnet18, channels):
    """timm's adapt_input_conv: for one channel the RGB filters are summed, so a grey image gives what the RGB
    network gives on that image repeated into three channels (the oracle: torchvision's own network); for other
    counts they are repeated and rescaled by 3 / channels (with 6: each filter twice at half weight, so a constant
    image keeps its response)."""
    theirs, folder = torchvision_resnet18
    ours = create_model("resnet18", in_chans=channels, num_classes=10)
    report = load_pretrained(ours, folder / "plain.pth", num_classes=10)
    assert report.input_channels == (3, channels) and "adapted from 3 to" in str(report)
    trunk = nn.Sequential(*list(theirs.children())[:-2]).eval()
    grey = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        if channels == 1:
            expected = trunk(grey.repeat(1, 3, 1, 1))
            torch.testing.assert_close(ours.eval().forward_features(grey), expected, rtol=1e-4, atol=1e-4)
        else:
            constant = torch.full((1, channels, 64, 64), 0.3)
            got = ours.eval().conv1(constant)[..., 8:-8, 8:-8]  # away from the zero padding
            expected = theirs.conv1(torch.full((1, 3, 64, 64), 0.3))[..., 8:-8, 8:-8]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
