"""`cnnzoo models`, `cnnzoo summary`, and the README's model table."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnzoo import catalog
from cnnzoo.catalog import BEGIN, END, cached_table, render_markdown, render_text
from cnnzoo.cli import build_parser, main
from cnnzoo.registry import list_models, model_info

README = Path(__file__).resolve().parents[1] / "README.md"


def test_summary_lenet5(capsys):
    assert main(["summary", "lenet5"]) == 0
    out = capsys.readouterr().out
    for params in ("156", "2,416", "48,120", "10,164", "850", "61,706 params"):
        assert params in out


def test_summary_json_and_csv(capsys):
    assert main(["summary", "lenet5", "--format", "json", "--num-classes", "5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layers"][-1]["out_shape"] == [5]
    assert main(["summary", "lenet5", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("layer,type,output")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "lenet6"], "unknown model 'lenet6'; did you mean lenet5"),
        (["summary", "lenet5", "--input-size", "1x8x8"], "input 1x8x8 is too small for lenet5"),
        (["models", "nothing*"], "no model matches"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("size", ["big", "0x32", "1x2x3x4"])
def test_bad_flag_value_is_a_usage_error(size, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", "lenet5", "--input-size", size])
    assert exit_info.value.code == 2 and "--input-size" in capsys.readouterr().err


def test_input_size_without_channels_keeps_the_model_s(capsys):
    assert main(["summary", "lenet5", "--input-size", "32", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == [1, 32, 32]


def test_version_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "cnnzoo", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("cnnzoo ")


def test_every_command_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"models", "summary"} <= set(commands)
    for name, sub in commands.items():
        assert sub.format_help().startswith(f"usage: cnnzoo {name}"), name


def test_summary_depth_and_window_columns(capsys):
    assert main(["summary", "resnet50", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    text = out.splitlines()
    first, last = [i for i, line in enumerate(text) if set(line) == {"-"}]  # the rules around the rows
    body = text[first + 1 : last]
    lines = {line.split()[0]: line.split() for line in body}
    assert list(lines) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert lines["layer4"][1:3] == ["Sequential", "2048x7x7"] and lines["layer4"][-2:] == ["427", "32"]
    assert lines["conv1"][3:7] == ["7", "2", "3", "1"]  # kernel, stride, pad, groups
    assert main(["summary", "mobilenet_v2", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["layers"]}
    assert rows["features.2.block.1.0"]["groups"] == 96 and rows["features.2.block.1.0"]["stride"] == [2, 2]
    assert main(["summary", "efficientnet_b0", "--format", "csv", "--depth", "2"]) == 0
    csv_rows = [line.split(",") for line in capsys.readouterr().out.strip().splitlines()]
    assert csv_rows[0][-2:] == ["gated", "aux"] and csv_rows[-3][0] == "features.8" and csv_rows[-3][-2] == "1"
    assert sum(int(r[csv_rows[0].index("params")]) for r in csv_rows[1:]) == 5_288_548


def test_summary_lists_auxiliary_heads(capsys):
    assert main(["summary", "inception_v3"]) == 0
    out = capsys.readouterr().out
    aux = [line for line in out.splitlines() if line.startswith("AuxLogits.")]
    assert aux and all(line.endswith("aux") for line in aux)
    assert "27,161,264 params" in out and "aux: training-only auxiliary heads" in out


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_depth_must_be_positive(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", "lenet5", "--depth", bad])
    assert exit_info.value.code == 2 and "--depth" in capsys.readouterr().err


def test_models_prints_the_table(capsys, current_cache):
    assert main(["models"]) == 0
    assert capsys.readouterr().out.strip() == render_text(cached_table())
    assert main(["models", "resnet1*", "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| model |") and len(lines) == 2 + len(list_models("resnet1*"))
    assert all(line.startswith("| resnet1") for line in lines[2:])


def test_model_cache_lists_the_registry():
    # Names and static columns here; params and MACs against a fresh trace of each network in test_summary.py.
    rows = cached_table()
    assert [r.name for r in rows] == list_models(), "the cached model table is stale: run `make readme-table`"
    for row in rows:
        info = model_info(row.name)
        assert (row.family, row.year, row.input_size, row.small_input) == (info.family, info.year, info.input_size,
                                                                           info.small_input)  # fmt: skip


def test_models_reads_the_cache_without_torch(tmp_path):
    # A fresh interpreter, with the cache marked current: `cnnzoo models` must not import torch (about 2 s).
    code = (
        "import sys; from pathlib import Path; from cnnzoo import catalog; "
        f"catalog.CACHE = Path({str(tmp_path / 'table.json')!r}); catalog.write_cache(catalog.cached_table("
        f"{str(catalog.CACHE)!r})); from cnnzoo.cli import main; main(['models', 'vgg1*']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "vgg16_bn" in out.stdout and "resnet" not in out.stdout


def test_stale_cache_is_measured_again(tmp_path, monkeypatch, capsys):
    cached = [r for r in cached_table() if r.name.startswith("lenet5")]
    stale = tmp_path / "table.json"
    stale.write_text(json.dumps({"fingerprint": "old", "models": []}))
    monkeypatch.setattr(catalog, "CACHE", stale)
    assert not catalog.cache_is_current()
    assert main(["models", "lenet5*"]) == 0
    captured = capsys.readouterr()
    assert "measured every network" in captured.err
    assert captured.out.strip() == render_text(cached)


def test_write_cache_round_trip(tmp_path):
    rows = catalog.measure_table("lenet5*")
    path = tmp_path / "table.json"
    catalog.write_cache(rows, path)
    assert cached_table(path) == rows and catalog.cache_is_current(path)
    assert [(r.params, r.macs) for r in rows] == [(61_706, 416_520), (61_706, 416_520)]


def test_readme_model_table_is_current():
    # The README against the cache, and the cache against a fresh trace of every network (test_summary.py).
    text = README.read_text()
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == render_markdown(cached_table()), "README model table is stale: run `make readme-table`"


@pytest.fixture
def current_cache(tmp_path, monkeypatch):
    """The committed cache, marked current whatever the state of the sources."""
    path = tmp_path / "table.json"
    catalog.write_cache(cached_table(), path)
    monkeypatch.setattr(catalog, "CACHE", path)
