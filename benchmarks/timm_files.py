"""timm weight files as a user has them, loaded into the cnnzoo network of the same name or family.

    .venv/bin/python benchmarks/timm_files.py        (timm is a test extra; a few minutes on 2 cores)

Each timm network is randomly initialised with random BatchNorm statistics, saved as .pth and as .safetensors in a
temporary folder and loaded with cnnzoo.load_pretrained into the cnnzoo network a user would pick. One row per pair:
equal (the outputs are timm's), refused (with the reason), or DIFFERENT (loaded, other outputs: the silent failure
that must never happen). The last line counts them. tests/test_layouts.py asserts the same on a subset.
"""

import sys
import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from cnnzoo import create_model, load_pretrained
from cnnzoo.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from oracles import randomize_bn  # noqa: E402

# (cnnzoo name, timm name), one pair a line
PAIRS = [line.split() for line in """
resnet18 resnet18
resnet34 resnet34
resnet50 resnet50
resnet101 resnet101
resnext50_32x4d resnext50_32x4d
resnext101_32x8d resnext101_32x8d
wide_resnet50_2 wide_resnet50_2
se_resnet18 seresnet18
se_resnet34 seresnet34
se_resnet50 seresnet50
se_resnext50_32x4d seresnext50_32x4d
senet154 senet154
se_resnet18 legacy_seresnet18
se_resnet50 legacy_seresnet50
se_resnext50_32x4d legacy_seresnext50_32x4d
senet154 legacy_senet154
legacy_se_resnet18 legacy_seresnet18
legacy_se_resnet34 legacy_seresnet34
legacy_se_resnet50 legacy_seresnet50
legacy_se_resnet101 legacy_seresnet101
legacy_se_resnext50_32x4d legacy_seresnext50_32x4d
legacy_se_resnext101_32x4d legacy_seresnext101_32x4d
legacy_senet154 legacy_senet154
vgg11 vgg11
vgg11_bn vgg11_bn
vgg13 vgg13
vgg13_bn vgg13_bn
vgg16 vgg16
vgg16_bn vgg16_bn
vgg19 vgg19
vgg19_bn vgg19_bn
mobilenet_v3_large mobilenetv3_large_100
mobilenet_v3_small mobilenetv3_small_100
mobilenet_v2 mobilenetv2_100
mobilenet_v1 mobilenetv1_100
mnasnet0_5 mnasnet_050
mnasnet0_75 mnasnet_075
mnasnet1_0 mnasnet_100
preact_resnet18 resnetv2_18
preact_resnet34 resnetv2_34
preact_resnet50 resnetv2_50
resnet50v2 resnetv2_50
efficientnet_b0 efficientnet_b0
efficientnet_b1 efficientnet_b1
efficientnet_b2 efficientnet_b2
efficientnet_b3 efficientnet_b3
efficientnet_b4 efficientnet_b4
efficientnet_b5 efficientnet_b5
efficientnet_b0 tf_efficientnet_b0
efficientnet_b5 tf_efficientnet_b5
tf_efficientnet_b0 tf_efficientnet_b0
tf_efficientnet_b4 tf_efficientnet_b4
tf_efficientnet_b0 efficientnet_b0
efficientnet_v2_s tf_efficientnetv2_s
efficientnet_v2_s efficientnetv2_s
tf_efficientnetv2_s tf_efficientnetv2_s
tf_efficientnetv2_b0 tf_efficientnetv2_b0
tf_efficientnetv2_b3 tf_efficientnetv2_b3
regnet_x_400mf regnetx_004_tv
regnet_y_400mf regnety_004
regnet_y_800mf regnety_008_tv
regnet_x_1_6gf regnetx_016
regnet_y_8gf regnety_080_tv
convnext_tiny convnext_tiny
convnext_small convnext_small
densenet121 densenet121
densenet169 densenet169
inception_v3 inception_v3
inception_v4 inception_v4
inception_resnet_v2 inception_resnet_v2
xception legacy_xception
nasnet_a_large nasnetalarge
""".strip().splitlines()]


def verdict(model, path: Path, x: torch.Tensor, expected: torch.Tensor) -> tuple[str, str]:
    try:
        load_pretrained(model, path)
    except UserError as err:
        return "refused", str(err).split(": ", 1)[-1][:110]
    with torch.no_grad():
        diff = ((model.eval()(x) - expected).abs().max() / expected.abs().max()).item()
    return ("equal" if diff < 1e-4 else "DIFFERENT"), f"{diff:.1e}"


def main() -> None:
    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="cnnzoo-timm-"))
    counts = {"equal": 0, "refused": 0, "DIFFERENT": 0}
    print("| cnnzoo | timm | .pth | .safetensors |\n|---|---|---|---|")
    for ours_name, timm_name in PAIRS:
        torch.manual_seed(0)
        theirs = randomize_bn(timm.create_model(timm_name, pretrained=False, num_classes=10)).eval()
        size = 299 if any(k in timm_name for k in ("xception", "inception", "nasnet")) else 96
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            expected = theirs(x)
        state = theirs.state_dict()
        files = [folder / f"{timm_name}.pth", folder / f"{timm_name}.safetensors"]
        torch.save(state, files[0])
        save_file({k: v.contiguous() for k, v in state.items()}, str(files[1]))
        verdicts = [verdict(create_model(ours_name, num_classes=10), f, x, expected) for f in files]
        for kind, _ in verdicts:
            counts[kind] += 1
        print(f"| {ours_name} | {timm_name} | {verdicts[0][0]} ({verdicts[0][1]}) | {verdicts[1][0]} |", flush=True)
        for f in files:
            f.unlink()
    folder.rmdir()
    print(counts)


if __name__ == "__main__":
    main()
