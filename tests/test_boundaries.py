"""The package's module boundaries (issue #10) and the one-line refusal of an input size a network cannot take.

Layers: a core (the registry, layers, models, summary, images, the model artifact, checkpoint I/O) that imports
nothing above it; a training side and an inference side on top of the core; the command line and the demo above
everything. The inference side does not import the training side (so a service never loads the trainer), and no two modules import each other at import
time (a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cnnzoo.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cnnzoo"
CORE = {"errors", "choices", "units", "options", "artifact", "registry", "layers", "models", "summary", "images",
        "checkpoint", "catalog", "published", "plots", "layouts"}
TRAINING = {"data", "augment", "train", "transfer", "distributed", "evaluation", "baseline"}
INFERENCE = {"runtime", "precision", "ensemble", "prediction", "explanation", "exporting", "serving", "compare",
             "visualize"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The cnnzoo modules a file imports (anywhere, or only in statements run at import time)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cnnzoo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnzoo"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _layer(module: str) -> str | None:
    part = module.split(".")[1] if module.count(".") else None
    for name, members in (("core", CORE), ("training", TRAINING), ("inference", INFERENCE)):
        if part in members:
            return name
    return None


def test_core_imports_nothing_above_it_and_inference_not_training():
    modules = _modules()
    # Training may use inference code (evaluation averages an ensemble as predict does); never the reverse.
    allowed = {"core": {"core"}, "training": {"core", "training", "inference"}, "inference": {"core", "inference"}}
    wrong = []
    for name, path in modules.items():
        layer = _layer(name)
        if layer is None:
            continue
        for target in _imports(path, top_level_only=False):
            other = _layer(target) if target in modules else None
            if other is not None and other not in allowed[layer]:
                wrong.append(f"{name} ({layer}) imports {target} ({other})")
    assert not wrong, wrong


def test_no_import_cycles():
    modules = _modules()
    # Every import counts, those inside functions too: a lazy import hides a cycle from Python, not from a reader.
    graph = {name: {t for t in _imports(path, top_level_only=False) if t in modules and t != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own sub-modules (cnnzoo.models registering the families) is how
    # packages load; the families importing the package back is the only edge of that kind.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node: str, stack: list[str]) -> None:
        visiting.add(node)
        for nxt in sorted(graph[node]):
            if nxt in visiting:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    assert not cycles, cycles


@pytest.mark.parametrize("argv, message", [
    (["train", "alexnet", "--data", "digits", "--epochs", "1"], "alexnet cannot take a 1x32x32 input"),
    (["train", "lenet5_relu", "--data", "digits", "--input-size", "64", "--epochs", "1"],
     "lenet5_relu cannot take a 1x64x64 input"),
    (["train", "lenet5", "--data", "fake", "--input-size", "3x8x8", "--epochs", "1"], "cannot take a 3x8x8 input"),
])
def test_train_refuses_an_input_the_network_cannot_take(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_export_refuses_sizes_the_network_cannot_take(tmp_path, capsys):
    from cnnzoo.data import load_data
    from cnnzoo.train import TrainConfig, fit

    data = load_data("digits", limit=32)
    fit("lenet5", data, TrainConfig(epochs=1, batch_size=16, progress=False, out=str(tmp_path / "run")))
    ckpt = str(tmp_path / "run" / "last.pt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the input-size parser's own limit: a usage mistake, one line
        main(["export", ckpt, "--out", str(tmp_path / "m.onnx"), "--input-size", "1x30000x30000"])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    for size in ("1x4000x4000", "16", "1x8x8"):
        assert main(["export", ckpt, "--out", str(tmp_path / "m.onnx"), "--input-size", size]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "lenet5" in err[0], err
        assert main(["summary", "lenet5", "--input-size", size]) == 2  # the same sizes, the same one line
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "lenet5" in err[0], err
    assert not (tmp_path / "m.onnx").exists()
    # HxW keeps the model's channels: the checkpoint's 1 channel, not 3.
    assert main(["export", ckpt, "--out", str(tmp_path / "m.onnx"), "--input-size", "32x32"]) == 0
    assert (tmp_path / "m.onnx").is_file()
    assert main(["export", ckpt, "--format", "openvino", "--out", str(tmp_path / "model.openvino")]) == 2
    assert "does not end in .xml" in capsys.readouterr().err
