"""`cnnzoo train | evaluate | split-data | baseline | demo`: thin handlers over cnnzoo.train, cnnzoo.evaluation,
cnnzoo.data, cnnzoo.baseline and cnnzoo.demo. torch is imported only when a handler runs."""

from __future__ import annotations

import argparse
import json

from cnnzoo.choices import DATASETS
from cnnzoo.cli import input_size_arg
from cnnzoo.ensemble import TTA_MODES

# cnnzoo.augment.PRESETS, spelled out so that --help does not import torch (a test keeps them equal).
AUG_PRESETS = {
    "none": "no augmentation",
    "crop-flip": "pad + random crop + flip (the CIFAR recipe)",
    "imagenet": "RandomResizedCrop over --crop-scale of the area + flip",
    "affine": "small rotations, scalings and shifts (handwriting)",
    "autoaugment": "the data's crop + AutoAugment",
    "randaugment": "the data's crop + RandAugment",
    "trivialaugment": "the data's crop + TrivialAugment",
    "augmix": "the data's crop + AugMix",
}


def _fractions(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two fractions LOW,HIGH such as 0.35,1, got {text!r}") from None
    return low, high


def _data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", choices=DATASETS, required=required, default=None, help="dataset")
    p.add_argument("--data-dir", help="folder or archive of the dataset (imagefolder: holds train/ and val/)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR/MNIST into --data-dir (needs the network)")
    p.add_argument("--limit", type=int, help="at most this many images per split (a fixed random subset)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="registered model name (omit with --resume)")
    _data_args(p, required=False)
    p.add_argument("--input-size", type=input_size_arg, help="H, HxW or C,H,W (default: the dataset's / the model's)")
    p.add_argument("--strict-data", action="store_true", help="an unreadable image is an error, not a warning")
    p.add_argument("--num-classes", type=int, default=10, help="classes of --data fake")
    g = p.add_argument_group("optimisation (defaults: the model family's)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per process")
    g.add_argument("--lr", type=float)
    g.add_argument("--opt", help="sgd, momentum, adagrad, rmsprop, adam, adamw")
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action="store_true", default=None)
    g.add_argument("--sched", help="constant, step, multistep, cosine, onecycle")
    g.add_argument("--warmup", type=float, help="epochs of linear warmup")
    g.add_argument("--step-size", type=int, help="epochs between step decays")
    g.add_argument("--milestones", type=lambda s: [int(v) for v in s.split(",")], help="multistep epochs, e.g. 30,60")
    g.add_argument("--gamma", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--aux-weight", type=float, help="auxiliary-head loss weight (GoogLeNet/Inception)")
    g = p.add_argument_group("model and run")
    g.add_argument("--small-input", action="store_true", default=None, help="3x3 stride-1 stem for 32x32 images")
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    g.add_argument("--amp-dtype", choices=("float16", "bfloat16"))
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--seed", type=int)
    g.add_argument("--deterministic", action="store_true", default=None, help="bit-exact reruns and resumes on CPU")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    g.add_argument("--workers", type=int, help="DataLoader workers (imagefolder)")
    g.add_argument("--out", help="run folder (default runs/MODEL-DATA[-N])")
    g.add_argument("--force", action="store_true", default=None,
                   help="write into an --out folder that holds an earlier run's files (they are replaced)")
    g.add_argument("--resume", help="run folder or checkpoint to continue exactly")
    g.add_argument("--keep-last", type=int, help="previous last.pt versions kept as fallbacks (default 1)")
    g.add_argument("--max-steps", type=int, help="stop resumably after this many optimizer steps")
    g.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under torchrun (CUDA)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    g = p.add_argument_group(
        "augmentation (default: chosen from the data, shown in the run's first lines: digits affine; MNIST "
        "crop-flip without flips; CIFAR crop-flip; ImageFolder of images up to 64 px crop-flip, without flips when "
        "grey; photos imagenet over (0.35, 1) of the area under 5000 images, (0.08, 1) above)")
    g.add_argument("--aug", choices=list(AUG_PRESETS), metavar="PRESET",
                   help="; ".join(f"{k}: {v}" for k, v in AUG_PRESETS.items()))
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (--no-flip for handwriting and text)")
    g.add_argument("--crop-scale", type=_fractions, metavar="LOW,HIGH", help="area range of imagenet's resized crop")
    g.add_argument("--crop-pad", type=int, metavar="PX", help="crop-flip's padding / affine's largest shift")
    g.add_argument("--erase", type=float, metavar="P", help="random erasing probability per image (e.g. 0.25)")
    g.add_argument("--mixup", type=float, metavar="ALPHA", help="mixup with Beta(ALPHA, ALPHA) (e.g. 0.2)")
    g.add_argument("--cutmix", type=float, metavar="ALPHA", help="cutmix with Beta(ALPHA, ALPHA) (e.g. 1.0)")
    g = p.add_argument_group("regularisers and controls")
    g.add_argument("--ema", type=float, metavar="DECAY", help="moving average of the weights (e.g. 0.999), "
                                                              "evaluated every epoch, saved as ema.pt")
    g.add_argument("--patience", type=int, metavar="N", help="stop after N epochs without a better val top-1")
    g.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradients' global L2 norm")
    g.add_argument("--class-weights", action="store_true", default=None,
                   help="weight the loss by inverse class frequency (imbalanced folders)")
    g.add_argument("--balanced", action="store_true", default=None,
                   help="draw every class equally often (imbalanced folders)")
    g.add_argument("--drop-path", type=float, metavar="RATE", help="stochastic depth (networks that have it)")
    g.add_argument("--tensorboard", action="store_true", default=None, help="TensorBoard logs in RUN/tensorboard")
    g = p.add_argument_group("recipes")
    g.add_argument("--config", metavar="RECIPE.yaml", help="TrainConfig keys from a YAML file; flags override them")
    g.add_argument("--print-config", action="store_true", help="print the effective recipe as YAML and exit")
    g = p.add_argument_group("transfer learning")
    g.add_argument("--init", help="initial weights: cnnzoo checkpoint or torchvision/timm state_dict")
    g.add_argument("--finetune", help="all | last:N | head")
    g.add_argument("--new-fc", action="store_true", default=None, help="append a new classifier on the old one")
    g.add_argument("--lr-backbone", type=float, help="learning rate of everything but the classifier")


def _plan(args: argparse.Namespace):
    """(model, data, config) from the flags; with --resume, from the checkpoint's record, flags overriding it."""
    import dataclasses

    from cnnzoo.data import load_data
    from cnnzoo.errors import UserError
    from cnnzoo.registry import model_info
    from cnnzoo.train import TrainConfig, build_for_data, load_recipe, resume_plan

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None)
             is not None}
    flags = dict(load_recipe(args.config), **flags) if args.config else flags
    data_flags = {k: v for k, v in dict(data_dir=args.data_dir, limit=args.limit, input_size=args.input_size).items()
                  if v is not None}
    if args.resume:
        name, model_kwargs, data_options, config = resume_plan(args.resume, flags)
        if args.model and args.model != name:
            raise UserError(f"{args.resume} is a {name} run, not {args.model}")
        data_options = dict(data_options, **data_flags)
    else:
        if not args.model or not args.data:
            raise UserError("train needs MODEL and --data (or --resume RUN)")
        name, model_kwargs, config = args.model, {}, TrainConfig(**flags)
        data_options = dict(name=args.data, num_classes=args.num_classes, **data_flags)
    data = load_data(data_options.pop("name"), default_input_size=model_info(name).input_size, download=args.download,
                     strict=args.strict_data, **data_options)
    extra = {k: v for k, v in model_kwargs.items() if k not in ("num_classes", "in_chans", "small_input")}
    model = build_for_data(name, data, small_input=config.small_input or model_kwargs.get("small_input", False),
                           seed=config.seed, drop_path=config.drop_path, **extra)
    return model, data, config


def _cmd_train(args: argparse.Namespace) -> int:
    from cnnzoo.train import StopRequest, dump_recipe, fit, resolve_config

    model, data, config = _plan(args)
    if args.print_config:
        print(dump_recipe(resolve_config(config, model.cnnzoo_spec["model_name"], data)), end="")
        return 0
    with StopRequest.on_signals() as stop:  # SIGTERM / Ctrl-C: finish the step, write a resumable checkpoint
        history = fit(model, data, config, stop=stop)
    if history.is_main:
        print(_ending(history))
    return 130 if history.stop_reason == "signal" else 0


RUN_OUTPUTS = ("curves.png", "last.pt", "best.pt", "ema.pt", "tensorboard")  # what the end-of-run line names


def _ending(history) -> str:
    """The last line of a run: where it is, how it ended and the files that are really there."""
    files = ", ".join(n for n in RUN_OUTPUTS if (history.run_dir / n).exists())
    if history.already_complete:
        return f"run folder: {history.run_dir}  (already complete; {files})"
    if not history.epochs:
        return f"run folder: {history.run_dir}  (no epoch finished yet; {files}: resume with --resume)"
    best = max(history.epochs, key=lambda e: e["val_top1"])
    how = {"patience": "stopped early, ", "signal": "interrupted, ", "max_steps": "stopped at --max-steps, "}
    return (f"run folder: {history.run_dir}  ({how.get(history.stop_reason, '')}best val top-1 "
            f"{history.best_metric:.4f} at epoch {best['epoch']}; {files})")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnzoo.evaluation import evaluate

    checkpoints = args.checkpoint if len(args.checkpoint) > 1 else args.checkpoint[0]
    report = evaluate(checkpoints, split=args.split, batch_size=args.batch_size, device=args.device, tta=args.tta,
                      name=args.data, data_dir=args.data_dir, limit=args.limit, download=args.download or None)
    kind = ("-ensemble" if len(args.checkpoint) > 1 else "") + (f"-tta-{args.tta}" if args.tta != "none" else "")
    folder = Path(args.out) if args.out else Path(args.checkpoint[0]).parent / f"eval-{args.split}{kind}"
    paths = report.write(folder)
    wrote = ", ".join(map(str, paths))
    print(json.dumps(report.to_dict(), indent=1) if args.json else f"{report.table()}\n\nwrote {wrote}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from cnnzoo.data import split_data

    counts = split_data(args.src, args.dst, val=args.val, seed=args.seed)
    print(f"{args.dst}: {counts['train']} train, {counts['val']} val images; class_indices.json written")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from cnnzoo.baseline import svm_baseline
    from cnnzoo.data import load_data

    data = load_data(args.data, args.data_dir, download=args.download, limit=args.limit,
                     input_size=args.input_size, default_input_size=(3, 32, 32))
    print(svm_baseline(data, features=args.features))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cnnzoo.demo import run_demo

    result = run_demo(out=args.out, epochs=args.epochs)
    return 0 if result.cnn_accuracy >= result.svm_accuracy else 1


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on a dataset", description=__doc__)
    _train_args(p)
    p.set_defaults(handler=_cmd_train)

    p = subparsers.add_parser("evaluate", help="top-1/top-5, per-class scores, confusion matrix of a checkpoint "
                                                "(or of an ensemble)")
    p.add_argument("checkpoint", nargs="+", metavar="CKPT",
                   help="a checkpoint; several (same classes) are an ensemble averaging their probabilities")
    _data_args(p, required=False)
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device")
    p.add_argument("--out", help="folder for confusion.csv/.png, misclassified.csv, eval.json")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: average the probabilities of mirrored and/or shifted views")
    p.set_defaults(handler=_cmd_evaluate)

    p = subparsers.add_parser("split-data", help="split a class-per-folder tree into train/ and val/")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--val", type=float, default=0.2, help="fraction of each class for validation")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_split)

    p = subparsers.add_parser("baseline", help="RBF SVM on raw pixels or CNN features, on the CNN's split")
    p.add_argument("method", choices=("svm",))
    _data_args(p, required=True)
    p.add_argument("--input-size", type=input_size_arg)
    p.add_argument("--features", metavar="CKPT", help="use the pooled features of this trained CNN")
    p.set_defaults(handler=_cmd_baseline)

    p = subparsers.add_parser("demo", help="the main job: lenet5 on digits vs an SVM, then predict a few digits")
    p.add_argument("--out", help="run folder (default runs/demo[-N])")
    p.add_argument("--epochs", type=int, help="override the default epochs")
    p.set_defaults(handler=_cmd_demo)
