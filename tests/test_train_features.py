"""Issue #11's training features: EMA, early stopping, gradient clipping and batch-level augmentation exact under
resume (bit for bit with deterministic=True), each checked against an oracle of its own (the EMA recurrence, the
clipped norm); class weights and the balanced sampler; stochastic depth; tiny datasets (batch shrunk, the
batch-norm warning); recipes; TensorBoard; the curves figure; ensembles and test-time augmentation in evaluate
and predict; the end-of-run messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from cnnzoo.checkpoint import load_checkpoint
from cnnzoo.cli import main
from cnnzoo.data import load_data
from cnnzoo.errors import UserError
from cnnzoo.evaluation import evaluate
from cnnzoo.layers import DropPath
from cnnzoo.train import (TrainConfig, _class_weights, build_for_data, drop_path_kwargs, dump_recipe, fit,
                          load_recipe)


def _config(out, **kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=32, lr=1e-2, deterministic=True, progress=False, out=str(out), seed=5)
    return TrainConfig(**dict(base, **kw))


EXTRAS = dict(ema=0.9, clip_grad=0.5, patience=10, erase=0.25, mixup=0.2, cutmix=1.0)
COMPARED = ("step", "train_loss", "train_top1", "val_loss", "val_top1", "ema_val_loss", "ema_val_top1")


def _rows(out) -> list[dict]:
    return [{k: r[k] for k in COMPARED} for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_clipping_mixing_and_patience_survive_an_exact_resume(small, tmp_path):
    fit("lenet5", small, _config(tmp_path / "ref", **EXTRAS))
    out = tmp_path / "resumed"
    first = fit("lenet5", small, _config(out, max_steps=4, **EXTRAS))  # epoch 1, batch 4
    assert first.interrupted and not first.epochs
    second = fit("lenet5", small, _config(out, resume=str(out), max_steps=10, **EXTRAS))  # epoch 2, batch 3
    assert second.stop_reason == "max_steps" and len(second.epochs) == 1
    third = fit("lenet5", small, _config(out, resume=str(out), **EXTRAS))
    assert not third.interrupted and len(third.epochs) == 3
    for name in ("last.pt", "ema.pt", "best.pt"):
        assert _equal_states(load_checkpoint(out / name).state_dict, load_checkpoint(tmp_path / "ref" / name)
                             .state_dict), name
    assert _rows(out) == _rows(tmp_path / "ref")
    ema = load_checkpoint(out / "last.pt").train_state["ema"]
    assert int(ema["n_averaged"]) == 21  # one update per optimizer step
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in EXTRAS} == EXTRAS and config["aug"] == "affine" and config["flip"] is False


def test_ema_is_the_moving_average_of_the_weights(small, tmp_path):
    model = build_for_data("lenet5", small, seed=1)
    snapshots = []

    def after_step(optimizer, args, kwargs):
        snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})

    handle = register_optimizer_step_post_hook(after_step)
    try:
        fit(model, small, _config(tmp_path, epochs=1, ema=0.75))
    finally:
        handle.remove()
    expected = dict(snapshots[0])  # the first update copies the weights
    for weights in snapshots[1:]:
        expected = {k: 0.75 * expected[k] + 0.25 * weights[k] for k in expected}
    ema = load_checkpoint(tmp_path / "ema.pt").state_dict
    assert len(snapshots) == 7
    for k, v in expected.items():
        torch.testing.assert_close(ema[k], v, rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_gradient_norm(small, tmp_path):
    norms = []

    def before_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        fit("lenet5", small, _config(tmp_path / "free", epochs=1))
        free, norms[:] = list(norms), []
        fit("lenet5", small, _config(tmp_path / "clipped", epochs=1, clip_grad=0.05))
    finally:
        handle.remove()
    assert max(free) > 0.05  # clipping had work to do
    assert max(norms) <= 0.05 * (1 + 1e-5)


def test_early_stopping_is_exact_under_resume_and_a_finished_run_is_complete(small, tmp_path, capsys):
    # A learning rate too small to change any prediction: val top-1 never improves after epoch 1.
    still = dict(epochs=6, opt="sgd", lr=1e-9, patience=2)
    ref = fit("lenet5", small, _config(tmp_path / "ref", **still))
    assert ref.stop_reason == "patience" and not ref.interrupted and len(ref.epochs) == 3
    out = tmp_path / "resumed"
    fit("lenet5", small, _config(out, max_steps=9, **still))  # stopped in epoch 2
    resumed = fit("lenet5", small, _config(out, resume=str(out), **still))
    assert resumed.stop_reason == "patience" and len(resumed.epochs) == 3
    assert _equal_states(load_checkpoint(out / "last.pt").state_dict,
                         load_checkpoint(tmp_path / "ref" / "last.pt").state_dict)
    before = (out / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "already complete" in printed and "epoch " not in printed.splitlines()[-1].split("(")[0]
    assert (out / "last.pt").stat().st_mtime_ns == before  # nothing rewritten


def test_class_weights_and_the_balanced_sampler(small):
    data = load_data("digits")
    keep = torch.cat([torch.nonzero(data.train.labels == c).flatten()[: 140 if c == 0 else 10] for c in range(10)])
    data.train.images, data.train.labels = data.train.images[keep], data.train.labels[keep]
    weights = _class_weights(data)
    torch.testing.assert_close(weights, torch.tensor([230 / 1400] + [230 / 100] * 9))  # n / (K x count)
    counts = {}
    for balanced in (False, True):
        loader = data.loader("train", 23, train=True, seed=0, balanced=balanced)
        labels = torch.cat([y for _, y, _ in loader])
        counts[balanced] = torch.bincount(labels, minlength=10)
    assert counts[False][0] == 140  # a permutation: every image once
    assert counts[True].sum() == 230 and 11 <= counts[True][0] <= 35 and counts[True].min() >= 11  # about 23 each
    with pytest.raises(UserError, match="choose one"):
        fit("lenet5", small, TrainConfig(class_weights=True, balanced=True))


def test_stochastic_depth_where_the_network_has_it(small):
    assert drop_path_kwargs("resnet20", 0.1) == {"drop_path_rate": 0.1}
    assert drop_path_kwargs("efficientnet_b0", 0.1) == {"drop_path": 0.1}
    model = build_for_data("resnet20", small, drop_path=0.2)
    assert model.cnnzoo_spec["model_kwargs"]["drop_path_rate"] == 0.2
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)  # the deepest block's; linear in depth (Huang et al.)
    with pytest.raises(UserError, match="lenet5 has no stochastic depth"):
        build_for_data("lenet5", small, drop_path=0.1)
    with pytest.raises(UserError, match="built with stochastic depth"):
        fit(build_for_data("resnet20", small), small, TrainConfig(drop_path=0.1))


def test_drop_path_of_one_drops_every_branch_without_nan():
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(DropPath(1.0).train()(x), torch.zeros_like(x))
    assert torch.equal(DropPath(1.0).eval()(x), x)


def test_the_trainer_tells_the_network_its_progress_every_epoch_and_again_on_resume(small, tmp_path, monkeypatch):
    """NASNet's ScheduledDropPath grows with training: fit calls set_training_progress(epoch / epochs) before each
    epoch, a resumed run from where it stopped (the schedule is a function of the epoch alone)."""
    seen = []
    model = build_for_data("lenet5", small)
    monkeypatch.setattr(type(model), "set_training_progress", lambda self, progress: seen.append(progress))
    out = tmp_path / "run"
    fit(model, small, _config(out, epochs=3, max_steps=8))  # stops inside the second epoch
    assert seen == [0.0, pytest.approx(1 / 3)]
    seen.clear()
    fit("lenet5", small, _config(out, epochs=3, resume=str(out)))
    assert seen == [pytest.approx(1 / 3), pytest.approx(2 / 3)]


def test_tiny_data_shrinks_the_batch_and_warns_about_batch_norm(tmp_path, capsys):
    data = load_data("fake", input_size=(3, 16, 16), num_classes=2, fake_samples=24)
    history = fit("resnet20", data, TrainConfig(epochs=1, batch_size=128, progress=False, out=str(tmp_path)))
    err = capsys.readouterr().err
    assert "batch size 128 is larger than the 24 training images; using 24" in err
    assert "1 step(s) an epoch: batch-norm running statistics lag" in err and "--batch-size 2" in err
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 24 and len(history.epochs) == 1


def test_recipes_and_print_config(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 12\nlr: 1e-3\naug: randaugment\ncrop_scale: [0.5, 1]\nema: 0.99\n")
    loaded = load_recipe(recipe)
    assert loaded == dict(epochs=12, lr=0.001, aug="randaugment", crop_scale=(0.5, 1), ema=0.99)
    assert load_recipe(_dumped(tmp_path, TrainConfig(**loaded))) == {**vars(TrainConfig(**loaded))}
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "lenet5", "--data", "digits", "--config", str(recipe), "--epochs", "7",
                 "--print-config"]) == 0
    printed = load_recipe(_text(tmp_path, capsys.readouterr().out))
    assert printed["epochs"] == 7 and printed["lr"] == 0.001 and printed["aug"] == "randaugment"
    assert printed["opt"] == "adamw" and printed["flip"] is False and printed["crop_pad"] == 3  # family, data
    assert not (tmp_path / "runs").exists()  # --print-config trains nothing
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    assert main(["train", "lenet5", "--data", "digits", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown key(s) epoch (did you mean epochs?)" in capsys.readouterr().err


def _text(folder, text: str):
    (folder / "printed.yaml").write_text(text)
    return folder / "printed.yaml"


def _dumped(folder, config: TrainConfig):
    return _text(folder, dump_recipe(config))


def test_tensorboard_events_hold_the_metrics(small, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit("lenet5", small, _config(tmp_path, epochs=2, tensorboard=True))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("top1/val", "val_top1"), ("loss/train", "train_loss"), ("lr", "lr")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [1, 2]
        assert [v for _, v in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_training_figure_has_title_lr_panel_and_a_log_axis_for_spikes():
    from cnnzoo.plots import training_figure

    def rows(losses):
        return [dict(epoch=i + 1, train_loss=v, val_loss=v, train_top1=0.5, val_top1=0.4 + 0.01 * i)
                for i, v in enumerate(losses)]

    fig = training_figure(rows([2.3, 386.0, 0.9, 0.4]), title="resnet18 on cifar10: momentum lr 0.1",
                          lr=([0, 1, 2], [0.1, 0.05, 0.0]))
    loss_ax, top1_ax, lr_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and top1_ax.get_yscale() == "linear"
    assert fig._suptitle.get_text() == "resnet18 on cifar10: momentum lr 0.1"
    assert list(lr_ax.lines[0].get_ydata()) == [0.1, 0.05, 0.0]
    assert training_figure(rows([2.3, 1.2, 0.9])).axes[0].get_yscale() == "linear"


# ------------------------------------------------------------------------------------- ensembles and TTA
@pytest.fixture(scope="module")
def trained(small, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    fit("lenet5", small, _config(out / "a", epochs=1))
    fit("lenet5", small, _config(out / "b", epochs=1, seed=6))
    files = out / "files"
    files.mkdir()
    for i, image in enumerate(small.val.images[:6].numpy()):
        Image.fromarray(image[0]).save(files / f"{i}.png")
    return out / "a" / "last.pt", out / "b" / "last.pt", sorted(files.iterdir())


def test_an_ensemble_of_two_identical_checkpoints_is_either_one(small, trained):
    a, b, _ = trained
    one, two = evaluate(a, small, workers=0), evaluate([a, a], small, workers=0)
    assert (two.top1, two.top5, two.confusion) == (one.top1, one.top5, one.confusion)
    assert two.loss == pytest.approx(one.loss, rel=1e-6)  # float64 probabilities against float32 logits
    wrong = [(m["path"], m["true"], m["predicted"]) for m in two.misclassified]
    assert wrong == [(m["path"], m["true"], m["predicted"]) for m in one.misclassified]
    assert [m["probability"] for m in two.misclassified] == pytest.approx(
        [m["probability"] for m in one.misclassified], abs=1e-5)
    assert [m["top1"] for m in two.members] == [one.top1, one.top1]
    mixed = evaluate([a, b], small, workers=0)
    assert [m["path"] for m in mixed.members] == [str(a), str(b)] and "ensemble of 2" in mixed.table()


def test_macro_scores_and_balanced_accuracy_match_scikit_learn(small, trained):
    from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

    report = evaluate(trained[0], small, workers=0)
    cells = [(i, j, c) for i, row in enumerate(report.confusion) for j, c in enumerate(row)]
    y_true = np.repeat([i for i, _, _ in cells], [c for _, _, c in cells])
    y_pred = np.repeat([j for _, j, _ in cells], [c for _, _, c in cells])
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(10), average="macro", zero_division=0)
    assert report.macro == pytest.approx(dict(precision=p, recall=r, f1=f), abs=1e-6)
    assert report.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-6)


def test_tta_none_is_the_plain_prediction_and_flip_averages_mirrors(trained):
    from cnnzoo.images import open_image
    from cnnzoo.prediction import predict
    from cnnzoo.runtime import open_runtime, softmax

    a, _, files = trained
    runtime = open_runtime(a, "torch")
    images = [open_image(f, channels=1) for f in files]
    plain = runtime.predict(images, topk=10)
    assert [p.topk for p in predict(runtime, files, topk=10, tta="none")] == plain
    assert [p.topk for p in predict([runtime, runtime], files, topk=10)] == plain
    batch = np.stack([runtime.preprocess(im) for im in images])
    mirrored = softmax(runtime.logits(np.ascontiguousarray(batch[..., ::-1])))
    expected = (softmax(runtime.logits(batch)) + mirrored) / 2
    for p, row in zip(predict(runtime, files, topk=10, tta="flip"), expected):
        got = dict(p.topk)
        assert [got[str(c)] for c in range(10)] == pytest.approx(row.tolist(), abs=1e-12)
    flat = Image.new("L", (8, 8), 128)  # every crop of a uniform image is the image: crops == plain
    assert runtime.predict([flat]) == [p.topk for p in predict(runtime, [_saved(flat, files[0].parent)],
                                                                tta="crops")]


def _saved(image: Image.Image, folder):
    image.save(folder / "flat.png")
    return folder / "flat.png"


def test_ensembles_refuse_other_classes(trained, tmp_path):
    data = load_data("fake", input_size=(1, 32, 32), num_classes=3, fake_samples=12)
    fit("lenet5", data, TrainConfig(epochs=1, batch_size=4, progress=False, out=str(tmp_path)))
    with pytest.raises(UserError, match="other classes"):
        evaluate([trained[0], tmp_path / "last.pt"])


def test_cli_evaluate_and_predict_ensembles_with_csv(trained, tmp_path, capsys):
    a, b, files = trained
    capsys.readouterr()
    assert main(["evaluate", str(a), str(b), "--tta", "flip", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "ensemble of 2 with test-time augmentation flip" in printed and "balanced accuracy" in printed
    written = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert (written["tta"], written["model"]) == ("flip", "ensemble of 2 (lenet5)")
    argv = ["predict", str(a), str(b), *map(str, files[:3]), "--topk", "2", "--csv", str(tmp_path / "p.csv"),
            "--json"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["ensemble"] == [str(a), str(b)] and len(answer["predictions"]) == 3
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "path,class_1,probability_1,class_2,probability_2,error" and len(rows) == 4
    first = answer["predictions"][0]["topk"][0]
    assert rows[1].split(",")[:3] == [str(files[0]), first["class"], f"{first['probability']:.6f}"]


def test_end_of_run_messages_name_only_what_exists(tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "lenet5", "--data", "digits", "--limit", "64", "--epochs", "1", "--max-steps", "1",
                 "--no-progress", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"run folder: {out}  (no epoch finished yet; last.pt: resume with --resume)"
    assert not (out / "best.pt").exists() and not (out / "curves.png").exists()
    # The resumed run is not boxed by the recorded --max-steps (it would stop again after one step).
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"run folder: {out}  (best val top-1 ") and last.endswith(
        "at epoch 1; curves.png, last.pt, best.pt)")
