"""`cnnzoo compare` and `cnnzoo chart`: published figures equal to their source, static columns by their
definitions on hand-countable networks, the accuracy chart and the runs overlay as figures (their artists, not
their pixels), the CLI end to end, and docs/models.md kept current."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnzoo
from cnnzoo.cli import main
from cnnzoo.compare import (DOCS_TIMED, STATIC_HEADER, Comparison, chart_points, compare_runs, model_depth,
                            static_cells, static_row)
from cnnzoo.plots import ChartPoint, accuracy_figure, label_boxes, runs_figure, save_png
from cnnzoo.published import PAPERS, PREFERRED_WEIGHTS, TORCHVISION, published, published_all

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
PNG = b"\x89PNG\r\n\x1a\n"
SLOW = os.environ.get("CNNZOO_SLOW") == "1"

# Weight layers (conv + linear) on the longest path, counted by hand from the papers' tables.
HAND_DEPTHS = {
    "lenet5": 5,  # C1, C3, C5, F6, output
    "alexnet": 8,  # 5 conv + 3 FC
    "vgg16": 16,  # 13 conv + 3 FC
    "resnet18": 18,  # conv1 + 8 blocks x 2 + fc (the 1x1 projections are a shorter parallel path)
    "resnet50": 50,  # conv1 + 16 bottlenecks x 3 + fc
    "densenet121": 121,  # conv0 + 58 dense layers x 2 + 3 transitions + classifier
    "googlenet": 22,  # "22 layers deep when counting only layers with parameters" (Szegedy et al. 2015)
}


# ------------------------------------------------------------------------------------------------ published
def _torchvision_metrics(name: str) -> dict[str, tuple[float, float]]:
    from torchvision.models import get_model_weights

    found = {}
    for w in get_model_weights(name):
        m = w.meta["_metrics"]["ImageNet-1K"]
        if not math.isnan(m["acc@1"]):  # vgg16's IMAGENET1K_FEATURES has no classifier, so no accuracy
            found[w.name] = (m["acc@1"], m["acc@5"])
    return found


def test_torchvision_figures_equal_torchvision_meta():
    import torchvision

    for name, figures in TORCHVISION.items():
        assert figures == _torchvision_metrics(name), name
    # every registered network torchvision also has carries its V1 figures, marked as torchvision's
    shared = set(torchvision.models.list_models(module=torchvision.models)) & set(cnnzoo.list_models())
    assert len(shared) > 40
    for name in shared:
        metrics = _torchvision_metrics(name)
        pub = published(name)
        if PREFERRED_WEIGHTS in metrics:
            assert (pub.top1, pub.top5, pub.weights) == (*metrics[PREFERRED_WEIGHTS], PREFERRED_WEIGHTS), name
            assert "torchvision" in pub.source and "IMAGENET1K_V1" in pub.source
        else:  # only SWAG weights (extra training data): none shown by default, still listed
            assert pub is None and published_all(name), name
    assert [p.weights for p in published_all("resnet50")] == ["IMAGENET1K_V1", "IMAGENET1K_V2"]


def test_figures_present_exactly_where_a_source_exists():
    registered = set(cnnzoo.list_models())
    assert set(PAPERS) <= registered and not set(PAPERS) & set(TORCHVISION)
    for name in registered:
        pub = published(name)
        if name in PAPERS:
            top1, top5, source = PAPERS[name]
            assert (pub.top1, pub.top5, pub.source, pub.weights) == (top1, top5, source, "")
            # where the source prints error rates, the string quotes them: accuracy = 100 - error
            errors = re.search(r"error ([\d.]+)(?: / ([\d.]+))? %", source)
            if errors:
                quoted = [float(e) for e in errors.groups() if e is not None]
                assert [round(100 - e, 2) for e in quoted] == [v for v in (top1, top5) if v is not None], name
        elif name not in TORCHVISION:
            assert pub is None and published_all(name) == [], name
    for name in ("lenet5", "resnet20", "nin", "alexnet_half"):  # nothing published on ImageNet: nothing shown
        assert published(name) is None


# ------------------------------------------------------------------------------------------------ static rows
def test_depth_by_definition():
    class TwoBranches(nn.Module):  # conv-conv beside one conv, added, then a linear layer: longest path 3
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(1, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = torch.relu(self.b(self.a(x))) + self.c(x)
            return self.fc(y.mean((2, 3)))

    assert model_depth(TwoBranches(), (1, 8, 8)) == 3
    for name, depth in HAND_DEPTHS.items():
        assert static_row(name).depth == depth, name


def test_static_columns():
    for name in ("lenet5", "vgg16", "resnet18"):
        row = static_row(name)
        with torch.device("meta"):
            model = cnnzoo.create_model(name)
        params = sum(p.numel() for p in model.parameters())
        assert row.params == params
        assert row.size_mb == 4 * params / 2**20  # fp32 weights in MB of 2^20 bytes
        assert row.input_size == cnnzoo.model_info(name).input_size
    assert static_row("resnet18").macs == 1_814_073_344  # torchvision's meta "_ops": 1.814 GMACs
    cells = dict(zip(STATIC_HEADER, static_cells(static_row("vgg16"))))
    assert cells == {"model": "vgg16", "size (MB)": "527.8", "top-1": "71.592", "top-5": "90.382",
                     "params": "138,357,544", "depth": "16", "MACs": "15.5 G", "input": "3x224x224"}


# ------------------------------------------------------------------------------------------------ CLI, models
def test_cli_compare_static(capsys):
    from cnnzoo.cli.compare import BACKENDS as CLI_BACKENDS
    from cnnzoo.compare import BACKENDS

    assert CLI_BACKENDS == BACKENDS
    assert main(["compare", "lenet5", "vgg1?", "resnet18", "--no-timing", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["model"] for r in rows] == ["lenet5", "vgg11", "vgg13", "vgg16", "vgg19", "resnet18"]
    assert not any(k.endswith("_ms") for k in rows[0])  # no timing columns
    by_name = {r["model"]: r for r in rows}
    assert by_name["lenet5"]["top1"] == "" and by_name["lenet5"]["depth"] == "5"
    assert float(by_name["vgg16"]["top1"]) == TORCHVISION["vgg16"]["IMAGENET1K_V1"][0]
    assert by_name["resnet18"]["params"] == "11689512"

    assert main(["compare", "vgg16", "--no-timing"]) == 0
    text = capsys.readouterr().out
    assert "No timings" in text and "| vgg16 | 527.8 | 71.592 | 90.382 | 138,357,544 | 16 | 15.5 G |" in text
    assert "[1] torchvision IMAGENET1K_V1 weights" in text

    assert main(["compare", "no_such_net", "--no-timing"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_compare_timing_lenet5(tmp_path, capsys):
    cache = tmp_path / "cache"
    threads = torch.get_num_threads()
    args = ["compare", "lenet5", "--backends", "torch,onnxruntime", "--threads", "1", "--cache", str(cache),
            "--format", "json"]
    assert main(args) == 0
    assert torch.get_num_threads() == threads  # restored after timing
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["backends"] == ["torch", "onnxruntime"] and result["notes"] == []
    (row,) = result["models"]
    assert row["model"] == "lenet5" and set(row["time_ms"]) == {"torch", "onnxruntime"}
    assert all(0 < t < 1000 for t in row["time_ms"].values())
    machine = result["machine"]
    assert machine["versions"]["torch"] == torch.__version__.split("+")[0] and machine["cpu"] and machine["date"]
    assert machine["torch_threads"] == machine["runtime_threads"] == 1
    (export,) = cache.iterdir()  # keyed by name, input size and cnnzoo version
    assert export.name == f"lenet5-1x32x32-cnnzoo{cnnzoo.__version__}.onnx"
    stamp = export.stat().st_mtime_ns
    assert main([*args[:-2], "--format", "markdown"]) == 0  # the cached export is reused
    assert export.stat().st_mtime_ns == stamp
    text = capsys.readouterr().out
    row = r"\| lenet5 \| 0\.2 \|  \|  \| 61,706 \| 5 \| 416\.5 K \| 1x32x32 \| [\d.]+ \| [\d.]+ \|  \|"
    assert re.search(row, text)
    assert "Measured" in text and "onnxruntime" in text


# ------------------------------------------------------------------------------------------------ chart
def test_accuracy_chart_points_and_labels(tmp_path):
    points, title, note = chart_points(["lenet5", "resnet18", "vgg16", "mobilenet_v2", "alexnet_v1"])
    names = [p.label for p in points]
    assert names == ["resnet18", "vgg16", "mobilenet_v2", "alexnet_v1"]  # lenet5 has no published figure
    fig = accuracy_figure(points, title, note)
    (ax,) = [a for a in fig.axes]
    (bubbles,) = ax.collections
    offsets = bubbles.get_offsets()
    assert len(offsets) == 4 and ax.get_xscale() == "log"
    for p, (x, y), size in zip(points, offsets, bubbles.get_sizes()):
        assert (x, y) == pytest.approx((p.macs / 1e9, published(p.label).top1))
        assert size / bubbles.get_sizes().max() == pytest.approx(p.params / max(q.params for q in points))
    assert sorted(t.get_text() for t in ax.texts) == sorted(names)
    assert save_png(fig, tmp_path / "chart.png").read_bytes()[:8] == PNG


def test_chart_labels_do_not_collide():
    # 40 bubbles crowded into one decade of MACs and 4 points of accuracy, with long labels
    points = [ChartPoint(f"network_number_{i}", int(1e9 * 10 ** (i % 10 / 10)), 70 + (i * 7 % 40) / 10,
                         (i + 1) * 1_000_000, f"family{i % 5}") for i in range(40)]
    boxes = label_boxes(accuracy_figure(points))
    assert len(boxes) == 40
    assert not [(i, j) for i in range(40) for j in range(i) if boxes[i].overlaps(boxes[j])]


def test_cli_chart(tmp_path, capsys):
    out = tmp_path / "chart.png"
    assert main(["chart", "resnet18", "resnet50", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG and str(out) in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = cnnzoo.load_data("digits", limit=64)
    for name, model, epochs in (("a", "lenet5", 2), ("b", "lenet5_relu", 3)):
        cnnzoo.fit(model, data, cnnzoo.TrainConfig(epochs=epochs, out=str(root / name), progress=False))
    return root / "a", root / "b"


def _epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_compare_runs_table_and_overlay(runs, tmp_path):
    result = compare_runs(runs, curves=tmp_path / "curves.png")
    a, b = result.rows
    assert (a.run, a.model, a.data, a.epochs) == ("a", "lenet5", "digits", 2)
    assert (b.run, b.model, b.epochs) == ("b", "lenet5_relu", 3)
    for row, run in zip(result.rows, runs):
        epochs = _epochs(run)
        assert row.best_top1 == 100 * max(e["val_top1"] for e in epochs)
        assert row.last_top1 == 100 * epochs[-1]["val_top1"]
        assert row.train_seconds == epochs[-1]["time"] and row.img_s > 0
        assert (row.params, row.macs) == (61_706, 416_520)  # LeNet-5's textbook count; its summary's MACs
    assert result.curves.read_bytes()[:8] == PNG
    fig = runs_figure({r.label: r.epochs for r in result.runs})
    loss_ax, top1_ax = fig.axes
    for ax in (loss_ax, top1_ax):
        lines = ax.get_lines()
        assert [len(line.get_xdata()) for line in lines] == [2, 2, 3, 3]  # train and val per run
        assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()  # one colour per run
    assert [line.get_ydata()[-1] for line in top1_ax.get_lines()][1] == pytest.approx(result.rows[0].last_top1)


def test_loss_axis_is_logarithmic_when_the_loss_spans_decades():
    def epochs(losses):
        return [dict(epoch=i + 1, train_loss=v, val_loss=v, train_top1=0.5, val_top1=0.5) for i, v in enumerate(losses)]

    assert runs_figure({"x": epochs([2.3, 0.9, 0.4])}).axes[0].get_yscale() == "linear"
    assert runs_figure({"x": epochs([2.3, 0.1, 0.01])}).axes[0].get_yscale() == "log"


def test_cli_compare_and_chart_runs(runs, tmp_path, capsys):
    curves = tmp_path / "overlay.png"
    assert main(["compare", *map(str, runs), "--out", str(curves), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in result["runs"]] == ["a", "b"] and curves.read_bytes()[:8] == PNG
    points, _, _ = chart_points([str(r) for r in runs])
    assert [(p.label, p.params, p.family) for p in points] == [("a", 61_706, "LeNet"), ("b", 61_706, "LeNet")]
    assert [p.top1 for p in points] == [r["best_top1"] for r in result["runs"]]
    assert main(["chart", *map(str, runs), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    capsys.readouterr()
    assert main(["compare", str(runs[0]), "resnet18"]) == 2
    assert "not both" in capsys.readouterr().err
    # A mistyped run folder beside real ones: the message names it, for both commands.
    missing = tmp_path / "no-such-run"
    for command in ("compare", "chart"):
        assert main([command, *map(str, runs), str(missing)]) == 2
        err = capsys.readouterr().err
        assert f"{missing}: not a run folder" in err and str(runs[0]) not in err, err


# ------------------------------------------------------------------------------------------------ docs
def _docs_rows() -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in DOCS.read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line[2:-2].split(" | ")]
        rows[cells[0]] = cells
    return header, rows


# Cheap to build: checked on every run; CNNZOO_SLOW=1 checks every row.
DOCS_CHECKED = ("lenet5", "alexnet", "alexnet_v1", "zfnet", "vgg16", "resnet18", "googlenet", "mobilenet_v1",
                "squeezenet1_0", "nin")


def test_docs_models_static_columns_are_current():
    header, rows = _docs_rows()
    assert header[: len(STATIC_HEADER)] == list(STATIC_HEADER) and header[-1] == "source"
    assert list(rows) == cnnzoo.list_models(), "docs/models.md lists other networks: regenerate it (see its top)"
    for name, cells in rows.items():  # the published columns, for every row
        pub = published(name)
        assert cells[2:4] == list(static_cells(_pub_only(name))[2:4]), name
        assert (cells[-1] != "") == (pub is not None), name
    for name in (cnnzoo.list_models() if SLOW else DOCS_CHECKED):
        assert tuple(rows[name][: len(STATIC_HEADER)]) == static_cells(static_row(name)), \
            f"docs/models.md row {name} is stale: regenerate it (see its top)"
    timed = [i for i, h in enumerate(header) if h.endswith("(ms)")]
    assert timed and all(rows[name][i] for name in DOCS_TIMED for i in timed)  # the ten networks are timed
    assert "Measured" in DOCS.read_text()


def _pub_only(name: str):
    """A row whose only real content is the published figures (what static_cells shows of them)."""
    from cnnzoo.compare import ModelRow

    return ModelRow(name, "", (0, 0, 0), 0, 0, 0, published(name))


def test_comparison_renders_failed_timings():
    row = static_row("lenet5")
    row.times_ms = {"torch": 0.5, "onnxruntime": None}
    text = Comparison([row], ["torch", "onnxruntime"], {"date": "d", "cpu": "c", "physical_cores": 1,
                                                       "logical_cpus": 1, "torch_threads": 1, "runtime_threads": 1,
                                                       "os": "o", "python": "p", "versions": {
                                                           "cnnzoo": "0", "torch": "t", "onnxruntime": "r",
                                                           "openvino": None}}).to_markdown()
    assert "| 0.5 | failed |" in text
