"""The training engine: bit-exact resume after interruptions mid-epoch (max_steps and SIGTERM), checkpoint
atomicity and fallback, a non-finite loss, schedules, weight-decay groups, auxiliary losses and exact evaluation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnzoo import checkpoint as ckpt_mod
from cnnzoo.artifact import InputSpec, ModelCard
from cnnzoo.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from cnnzoo.data import load_data
from cnnzoo.errors import UserError
from cnnzoo.evaluation import evaluate as evaluate_checkpoint
from cnnzoo.train import (SCHEDULES, NonFiniteLossError, StopRequest, TrainConfig, _loss, _param_groups, _schedule,
                          build_for_data, find_resumable, fit)


def _config(out, **kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, lr=1e-2, deterministic=True, progress=False, out=str(out), seed=5)
    return TrainConfig(**dict(base, **kw))


@pytest.fixture(scope="module")
def reference(small, tmp_path_factory):
    """An uninterrupted 2-epoch run (dropout-free lenet5_relu with BN-free layers; RNG states still restored)."""
    out = tmp_path_factory.mktemp("ref")
    model = build_for_data("lenet5", small)
    history = fit(model, small, _config(out))
    return model, history, out


def _same_weights(a: nn.Module, b_state: dict) -> bool:
    return all(torch.equal(v, b_state[k]) for k, v in a.state_dict().items())


def test_run_folder(reference):
    _, history, out = reference
    assert {p.name for p in out.iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl", "config.json", "curves.png",
                                                "class_indices.json"}
    assert [e["epoch"] for e in history.epochs] == [1, 2] and history.epochs[-1]["step"] == 14
    ck = load_checkpoint(out / "last.pt")
    assert ck.card.model_name == "lenet5" and ck.card.input.size == (1, 32, 32) and ck.card.classes[3] == "3"
    assert ck.card.input.resize == "stretch"  # the 8x8 digit file is stretched onto 32x32, as in training
    assert ck.train_state is not None and load_checkpoint(out / "best.pt").train_state is None


# Run in a fresh interpreter: a real SIGTERM in a process where earlier tests ran OpenVINO's bf16 (AMX) kernels
# segfaulted in signal delivery under pytest (not reproducible outside it); the engine is the same either way.
SIGTERM_RUN = """
import signal, sys
sys.path.insert(0, {tests!r})
from test_train import _config
from cnnzoo.data import load_data
from cnnzoo.train import StopRequest, build_for_data, fit

small = load_data("digits", limit=200)
model = build_for_data("lenet5", small)
calls = {{"n": 0}}

def sigterm_on_fourth(module, inputs):
    calls["n"] += module.training
    if calls["n"] == 4 and module.training:
        signal.raise_signal(signal.SIGTERM)

model.register_forward_pre_hook(sigterm_on_fourth)
with StopRequest.on_signals() as stop:  # what `cnnzoo train` does; fit alone installs no handler
    history = fit(model, small, _config({out!r}), stop=stop)
print(history.interrupted, history.stop_reason, len(history.epochs))
"""


def test_resume_is_bit_exact_after_sigterm_and_max_steps(small, reference, tmp_path):
    ref_model, ref_history, _ = reference
    # 1) SIGTERM during step 4 of epoch 1: the step finishes, a resumable checkpoint is written.
    script = SIGTERM_RUN.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-3:] == ["True", "signal", "0"]  # interrupted by the signal, no epoch finished
    assert load_checkpoint(tmp_path / "last.pt").train_state["position"]["batch"] == 4
    # 2) resume, stopped again mid-epoch 2 by max_steps; 3) resume to the end.
    second = fit(build_for_data("lenet5", small), small, _config(tmp_path, resume=str(tmp_path), max_steps=10))
    assert second.stop_reason == "max_steps" and len(second.epochs) == 1
    assert load_checkpoint(tmp_path / "last.pt").train_state["position"] == {
        "epoch": 1, "batch": 3, "stats": load_checkpoint(tmp_path / "last.pt").train_state["position"]["stats"]}
    final_model = build_for_data("lenet5", small)
    final = fit(final_model, small, _config(tmp_path, resume=str(tmp_path)))
    assert not final.interrupted
    assert _same_weights(final_model, ref_model.state_dict())  # bit for bit
    keys = ("train_loss", "train_top1", "val_loss", "val_top1", "step")
    assert [{k: e[k] for k in keys} for e in final.epochs] == [{k: e[k] for k in keys} for e in ref_history.epochs]


def test_fit_installs_no_signal_handler(small, tmp_path):
    """fit is a library call: the process's SIGTERM/SIGINT handlers are the caller's, during and after the run;
    a StopRequest given to fit stops it resumably."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    seen = []
    model = build_for_data("lenet5", small)
    stop = StopRequest()

    def watch(module, inputs):
        seen.append({sig: signal.getsignal(sig) for sig in before})
        stop.request()

    model.register_forward_pre_hook(watch)
    history = fit(model, small, _config(tmp_path), stop=stop)
    assert all(s == before for s in seen) and {sig: signal.getsignal(sig) for sig in before} == before
    assert history.interrupted and history.stop_reason == "signal"
    assert load_checkpoint(tmp_path / "last.pt").train_state["position"]["batch"] == 1


def test_corrupt_last_falls_back_to_the_kept_previous(reference, tmp_path, capsys):
    _, _, out = reference
    for name in ("last.pt", "best.pt"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    previous = sorted(out.glob("last-*.pt"))
    assert len(previous) == 1  # keep_last=1: the epoch-1 checkpoint
    (tmp_path / previous[0].name).write_bytes(previous[0].read_bytes())
    raw = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "last.pt")
    ck, path = find_resumable(tmp_path)
    assert path.name == previous[0].name and ck.record["epoch"] == 1
    assert f"resuming from {path} instead" in capsys.readouterr().err
    (tmp_path / previous[0].name).unlink()  # nothing left to fall back on: one line, the error, no warning first
    with pytest.raises(CheckpointError, match="no resumable checkpoint"):
        find_resumable(tmp_path)
    assert capsys.readouterr().err == ""


def test_a_run_recorded_on_a_missing_device_resumes_with_a_device_flag(reference, small, tmp_path, capsys):
    """The recorded config is checked after the command line's flags replace its values: a run stopped on a GPU
    machine resumes here with --device cpu (and without the flag is refused in one line)."""
    from cnnzoo.cli import main

    _, _, out = reference
    ck = load_checkpoint(out / "last-1.pt" if (out / "last-1.pt").exists() else sorted(out.glob("last-*.pt"))[0])
    record = {k: v for k, v in ck.record.items() if k not in ("format", "version", "card", "state_dict",
                                                                "state_dict_sha256")}
    record["config"] = {**record["config"], "device": "cuda:7", "out": str(tmp_path)}
    save_checkpoint(tmp_path / "last.pt", ck.card, ck.state_dict, **record)
    for name in ("config.json", "metrics.jsonl"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cuda:7" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "last.pt").record["epoch"] == 2


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    card = ModelCard("lenet5", {}, tuple("0123456789"), InputSpec(1, 32, 32, (0.5,), (0.5,)))
    save_checkpoint(path, card, {"x": torch.ones(3)})

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, card, {"x": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path).state_dict["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_load_refuses_non_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    torch.save({"weights": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not a cnnzoo checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small, tmp_path):
    model = build_for_data("lenet5", small)
    calls = {"n": 0}

    def nan_in_epoch_two(module, inputs, output):
        calls["n"] += module.training
        return output * float("nan") if module.training and calls["n"] == 10 else output

    model.register_forward_hook(nan_in_epoch_two)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 10"):
        fit(model, small, _config(tmp_path))
    good = load_checkpoint(tmp_path / "last.pt")
    assert good.record["epoch"] == 1 and all(torch.isfinite(v).all() for v in good.state_dict.values())


def test_evaluate_is_micro_and_refuses_other_classes(small, reference):
    _, history, out = reference
    report = evaluate_checkpoint(out / "last.pt", small)
    model = build_model(load_checkpoint(out / "last.pt"))
    # The oracle: the digits stretched to 32x32 by PIL and normalised by hand, as an image file would be.
    stretched = np.stack([np.asarray(Image.fromarray(im[0].numpy()).resize((32, 32), Image.Resampling.BILINEAR))
                          for im in small.val.images])
    x = (torch.from_numpy(stretched).float()[:, None] / 255 - small.spec.mean[0]) / small.spec.std[0]
    with torch.inference_mode():
        pred = model(x).argmax(1)
    assert report.top1 == (pred == small.val.labels).sum().item() / 200 == history.epochs[-1]["val_top1"]
    assert sum(map(sum, report.confusion)) == 200 and len(report.misclassified) == int((pred != small.val.labels).sum())
    recall0 = report.confusion[0][0] / sum(report.confusion[0])
    assert report.per_class[0]["recall"] == pytest.approx(recall0)
    other = load_data("fake", input_size=(1, 32, 32), num_classes=10, fake_samples=20)
    with pytest.raises(UserError, match="differ"):
        evaluate_checkpoint(out / "last.pt", other)


def test_resume_refuses_another_architecture(small, reference):
    _, _, out = reference
    with pytest.raises(UserError, match="lenet5 checkpoint, not lenet5_relu"):
        fit(build_for_data("lenet5_relu", small), small, _config(out, resume=str(out)))


def test_schedules_and_warmup(small):
    model = build_for_data("lenet5", small)
    base = dict(epochs=10, lr=1.0, opt="sgd", weight_decay=0.0, warmup=1.0)

    def lrs(sched: str) -> list[float]:
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        s = _schedule(opt, TrainConfig(sched=sched, **base), per_epoch=10)
        out = []
        for _ in range(100):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        return out

    cos = lrs("cosine")
    assert cos[0] == pytest.approx(0.1)  # warmup: (t + 1) / 10 of the cosine factor
    assert cos[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert cos[-1] < 1e-3
    step = lrs("step")  # every epochs // 3 = 3 epochs
    assert step[10] == pytest.approx(1.0) and step[30] == pytest.approx(0.1) and step[60] == pytest.approx(0.01)
    multi = lrs("multistep")  # at 5 and 7
    assert multi[49] == pytest.approx(1.0) and multi[50] == pytest.approx(0.1) and multi[70] == pytest.approx(0.01)
    one = lrs("onecycle")
    assert max(one) == pytest.approx(1.0, rel=1e-2) and one[-1] < 1e-3
    assert lrs("constant")[50] == 1.0
    assert set(SCHEDULES) == {"constant", "step", "multistep", "cosine", "onecycle"}


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = _param_groups(model, TrainConfig(lr=0.1, weight_decay=5e-4))
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert sum(len(g["params"]) for g in groups) == 6


def test_auxiliary_losses_weighted():
    y = torch.tensor([0, 1])
    main, aux1, aux2 = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    ce = nn.CrossEntropyLoss()
    loss, logits = _loss((main, aux1, aux2), y, ce, 0.3)
    torch.testing.assert_close(loss, ce(main, y) + 0.3 * ce(aux1, y) + 0.3 * ce(aux2, y))
    assert logits is main


def test_unknown_optimizer_and_schedule(small, tmp_path):
    with pytest.raises(UserError, match="unknown optimizer 'lbfgs'"):
        fit("lenet5", small, _config(tmp_path, opt="lbfgs"))
    with pytest.raises(UserError, match="unknown schedule"):
        fit("lenet5", small, _config(tmp_path, sched="poly"))
    assert not any(tmp_path.iterdir())  # nothing written
