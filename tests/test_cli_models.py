"""`cnnzoo models`, `cnnzoo summary`, and the README's model table."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnzoo.catalog import BEGIN, END, model_table, render_markdown
from cnnzoo.cli import build_parser, main

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


def test_readme_model_table_is_current():
    text = README.read_text()
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == render_markdown(model_table()), "README model table is stale: run `make readme-table`"
