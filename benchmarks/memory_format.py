"""Throughput of each efficient family's reference model in NCHW vs channels_last, fp32 vs bf16 autocast.

Depthwise convolutions are slow in PyTorch's default NCHW layout on CPU; this measures how much the models'
``channels_last`` hint buys. For every model and input size it prints forward (eval, inference mode) and
forward+backward (train mode, no optimizer step) images per second, each with its ratio to the NCHW fp32 run of
the same model at the same size. 32x32 runs use ``small_input=True`` (stride-1 stem).

    OMP_NUM_THREADS=1 python benchmarks/memory_format.py --quick
    python benchmarks/memory_format.py --device cuda --sizes 224

Throughput depends on the thread count (set OMP_NUM_THREADS). Each figure is the fastest of a few iterations;
with one CPU thread they are timed in process CPU time, so that other load on a shared machine does not count.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from torch import nn

from cnnzoo.registry import create_model, list_models, model_info

REFERENCES = ["mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0", "resnet18"]
# (batch, warm-up iterations, timed iterations) per input size; --quick uses the second table.
FULL = {32: (64, 3, 10), 224: (16, 2, 5)}
QUICK = {32: (16, 1, 4), 224: (4, 1, 3)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device):
    # Single-threaded on CPU, the process's CPU time is the time the work took however busy the machine is;
    # otherwise (several threads, or a GPU) only wall time is meaningful.
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def throughput(model: nn.Module, x: torch.Tensor, backward: bool, bf16: bool, warmup: int, iters: int) -> float:
    """Images per second of forward (eval, inference mode) or forward+backward (train mode), from the fastest
    of `iters` timed iterations after `warmup` untimed ones."""
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train(backward)
    grad = contextlib.nullcontext() if backward else torch.inference_mode()

    def step() -> None:
        with grad, autocast:
            out = model(x)
        if backward:
            out.float().logsumexp(1).mean().backward()  # any scalar of the logits; no optimizer step
            model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    clock = _clock(x.device)
    times = []
    for _ in range(iters):
        _sync(x.device)
        start = clock()
        step()
        _sync(x.device)
        times.append(clock() - start)
    return x.shape[0] / min(times)  # the fastest iteration: the least disturbed by other load on the machine


def bench_model(name: str, size: int, schedule: tuple[int, int, int], device: torch.device) -> list[list]:
    """Rows [model, size, layout, dtype, fwd img/s, fwd ratio, fwd+bwd img/s, fwd+bwd ratio] for one model."""
    batch, warmup, iters = schedule
    kwargs = {"small_input": True} if size < 64 and model_info(name).small_input else {}
    torch.manual_seed(0)
    model = create_model(name, **kwargs).to(device)
    x = torch.randn(batch, model_info(name).input_size[0], size, size, device=device)
    rows, base = [], {}
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model, xf = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        for dtype in ("fp32", "bf16"):
            speeds = [throughput(model, xf, backward, dtype == "bf16", warmup, iters) for backward in (False, True)]
            if not base:
                base = dict(enumerate(speeds))
            rows.append([name, size, layout, dtype, speeds[0], speeds[0] / base[0], speeds[1], speeds[1] / base[1]])
    return rows


def format_table(rows: list[list]) -> str:
    header = f"{'model':<20} {'size':>4} {'layout':<13} {'dtype':<5} {'fwd img/s':>10} {'ratio':>6} "
    header += f"{'fwd+bwd img/s':>13} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for name, size, layout, dtype, fwd, fwd_r, train, train_r in rows:
        lines.append(
            f"{name:<20} {size:>4} {layout:<13} {dtype:<5} {fwd:>10.1f} {fwd_r:>5.2f}x {train:>13.1f} {train_r:>5.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches and few iterations (a smoke run)")
    parser.add_argument("--models", nargs="+", default=None, help="registered names (default: the references)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224], help="square input sizes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    registered = set(list_models())
    names = args.models or [n for n in REFERENCES if n in registered]
    schedule = QUICK if args.quick else FULL
    device = torch.device(args.device)
    mode = "quick" if args.quick else "full"
    clock = "process CPU time" if _clock(device) is time.process_time else "wall time"
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {mode} run, {clock}")
    rows = []
    for name in names:
        for size in args.sizes:
            rows += bench_model(name, size, schedule.get(size, schedule[224]), device)
            print(f"  {name} at {size}x{size} done", file=sys.stderr, flush=True)
    print(format_table(rows))


if __name__ == "__main__":
    main()
