"""CPU inference benchmark: every backend x precision cnnzoo can run, cnnzoo's `auto` choice, and the HTTP service.

    .venv/bin/python benchmarks/inference.py [--quick] [--threads N] [--models lenet5,resnet18,...] [--no-service]

Networks and images. The accuracy columns need real images and networks with real decisions, and nothing may be
downloaded: scikit-learn's 8x8 digits are written as an ImageFolder (train/, val/) and every network is made a
digits classifier by a short training at its own input size: lenet5 at 32x32 (the digits stretched), resnet18,
mobilenet_v2 and efficientnet_b0 at 224x224 (the photo preprocessing: the digit upscaled, centre crop), 30 Adam
steps of 32 images with --quick, 120 without. The compute is the real network's at 224; the decisions have margins,
as a trained network's do (a random network with a fitted linear head has none worth measuring: see
make_classifier).

Configurations (all on the same checkpoint): torch eager and torch.compile at fp32 and bf16 (autocast), ONNX Runtime
fp32 and int8 (QDQ), OpenVINO fp32, bf16 and int8 (NNCF), and cnnzoo auto: `cnnzoo.export(..., precision="auto")`
with the digits as --data, opened with open_runtime(path) as predict and serve do. Each configuration's top-1
agreement with torch eager fp32 (and its top-1) is measured on the validation digits, and judged by cnnzoo's
default gate (agreement >= 99.5 %, top-1 drop <= 0.5 points). Speed: images/s of `logits` at batch 1 and 16,
measured interleaved (every configuration once per round, the median per-call time over all rounds), so load from
other processes on a shared machine spreads over all rows alike. "% peak": the network's multiply-accumulates per
image (cnnzoo.summarize(...).total_macs) x images/s, as a fraction of this machine's measured matmul peak at that
precision (torch.mm fp32 and bf16, torch._int_mm int8; 2 FLOP per MAC). "auto / best": auto's images/s over the
fastest configuration that passes the same gate.

Then the service: `cnnzoo serve` of mobilenet_v2's auto export in a subprocess, concurrency 1 and 16 with a 224x224
JPEG (a raw-socket HTTP/1.1 client, so the client's own cost stays small), requests/s, p50/p99 latency, and the
ratio to the same runtime's own batch-16 throughput measured in this process, interleaved with the service over
rounds; with the server's CPU time per request and the runtime's CPU time per image, which bound what the service
can reach on this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODELS = {"lenet5": (1, 32, 32), "resnet18": (3, 224, 224), "mobilenet_v2": (3, 224, 224),
          "efficientnet_b0": (3, 224, 224)}
BATCHES = (1, 16)
DIGITS_SIZE = 8


# ---------------------------------------------------------------------------------------------------------------
# Images and networks
# ---------------------------------------------------------------------------------------------------------------


def write_digits(root: Path, per_split: dict[str, int]) -> Path:
    """scikit-learn's digits as 8x8 grey PNGs in root/{train,val}/<digit>/ (a fixed shuffle)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    start = 0
    for split, count in per_split.items():
        for i in order[start : start + count]:
            path = root / split / str(digits.target[i]) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L").save(path)
        start += count
    return root


def card_for(name: str, size: tuple[int, int, int]):
    from cnnzoo.artifact import InputSpec, ModelCard, photo_spec

    # lenet5: the digits' own contract (8x8 stretched to 32x32, grey); the others: photos at 224
    spec = InputSpec(1, 32, 32, (0.5,), (0.5,), "stretch") if size[0] == 1 else photo_spec(size)
    return ModelCard(name, {"num_classes": 10}, tuple(str(d) for d in range(10)), spec)


def folder_arrays(folder: Path, card) -> tuple[np.ndarray, np.ndarray]:
    from cnnzoo.images import open_image, preprocess
    from cnnzoo.precision import labelled_images

    items = labelled_images(folder, card.classes)
    x = np.stack([preprocess(open_image(p, channels=card.input.channels), card.input) for p, _ in items])
    return x, np.array([y for _, y in items])


def make_classifier(name: str, card, data: Path, steps: int):
    """A digits classifier trained end to end at the network's own input size: ``steps`` Adam steps of 32 images
    (lenet5: 200 steps of 64). A short training still gives the decisions real margins: a network with random
    convolutions and a fitted linear head decides on differences near float32 rounding (bf16 then agreed with fp32
    on 37% of the digits for mobilenet_v2), which says nothing about a trained network."""
    import torch

    from cnnzoo.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    x, y = folder_arrays(data / "train", card)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    small = name == "lenet5"
    batch, steps, lr = (64, 200, 5e-3) if small else (32, steps, 3e-3)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=order)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    # BatchNorm statistics of the trained weights (a cumulative average over 256 training images): the running
    # averages of so short a training still remember the first steps' weights, and eval mode then predicted one class
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for start in range(0, min(len(x), 256) if norms else 0, 32):
            model(x[start : start + 32])
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------------


class Compiled:
    """torch.compile (inductor) of the network, at fp32 or under bf16 autocast: the Runtime.logits interface."""

    def __init__(self, model, input_size, bf16: bool):
        import torch

        self.torch, self.input_size, self.bf16 = torch, input_size, bf16
        self.model = torch.compile(model, dynamic=False)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(torch.from_numpy(batch)).float().numpy()


@dataclass
class Config:
    label: str
    precision: str
    runtime: object
    times: dict[int, list[float]] = field(default_factory=lambda: {b: [] for b in BATCHES})
    agreement: float = float("nan")
    top1: float = float("nan")

    def img_s(self, batch: int) -> float:
        return batch / statistics.median(self.times[batch])


def configurations(name: str, model, card, folder: Path, data: Path, threads: int) -> tuple[list[Config], object]:
    """Every configuration of one network, and the auto export's report."""
    from cnnzoo.checkpoint import save_checkpoint
    from cnnzoo.exporting import QUANTISERS, export
    from cnnzoo.precision import int8_card, load_gate_images
    from cnnzoo.runtime import open_runtime

    ckpt = folder / f"{name}.pt"
    save_checkpoint(ckpt, card, model.state_dict(), epoch=0, step=0, best_metric=0.0, metrics={}, config={})
    onnx = export(ckpt, folder / f"{name}.onnx", atol=1e-2).path  # random features: large logits, loose check
    calibration = load_gate_images(data / "train", data / "val", card, calib_images=100).calibration[:, None]
    QUANTISERS["onnx"](onnx, folder / f"{name}-qdq.onnx", int8_card(card), calibration)
    QUANTISERS["openvino"](onnx, folder / f"{name}-nncf.xml", int8_card(card), calibration)
    auto = export(ckpt, folder / f"{name}-auto", precision="auto", calib_data=data / "train", val_data=data / "val",
                  atol=1e-2)
    opened = [
        ("torch eager fp32", "fp32", lambda: open_runtime(ckpt, "torch", precision="fp32")),
        ("torch eager bf16", "bf16", lambda: open_runtime(ckpt, "torch", precision="bf16")),
        ("torch.compile fp32", "fp32", lambda: Compiled(model, card.input.size, False)),
        ("torch.compile bf16", "bf16", lambda: Compiled(model, card.input.size, True)),
        ("onnxruntime fp32", "fp32", lambda: open_runtime(onnx, "onnxruntime", threads=threads, precision="fp32")),
        ("onnxruntime int8", "int8", lambda: open_runtime(folder / f"{name}-qdq.onnx", "onnxruntime", threads=threads)),
        ("openvino fp32", "fp32", lambda: open_runtime(onnx, "openvino", threads=threads, precision="fp32")),
        ("openvino bf16", "bf16", lambda: open_runtime(onnx, "openvino", threads=threads, precision="bf16")),
        ("openvino int8", "int8", lambda: open_runtime(folder / f"{name}-nncf.xml", "openvino", threads=threads)),
    ]
    configs = []
    for label, precision, opener in opened:
        try:
            configs.append(Config(label, precision, opener()))
        except Exception as err:  # e.g. bf16 on a CPU without it: the row says why
            print(f"  {name}: {label} unavailable: {err}", file=sys.stderr)
    rt = open_runtime(auto.path, threads=threads)
    configs.append(Config(f"cnnzoo auto = {rt.backend} {rt.precision}", rt.precision, rt))
    return configs, auto


def measure_accuracy(configs: list[Config], x: np.ndarray, y: np.ndarray) -> None:
    reference = None
    for c in configs:
        top = np.concatenate([c.runtime.logits(x[i : i + 16]) for i in range(0, len(x), 16)]).argmax(1)
        reference = top if reference is None else reference  # torch eager fp32 comes first
        c.agreement, c.top1 = 100 * float(np.mean(top == reference)), 100 * float(np.mean(top == y))


def measure_speed(configs: list[Config], size: tuple[int, int, int], rounds: int, calls: dict[int, int],
                  peaks: dict[str, float], threads: int) -> None:
    """Interleaved: each round times every configuration at every batch size (two warm-up calls first) and the
    matmul peaks, which keep their best: load from other processes lowers a measured peak, never raises it."""
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *size), dtype=np.float32) for b in BATCHES}
    for c in configs:
        for b in BATCHES:
            c.runtime.logits(inputs[b])
            c.runtime.logits(inputs[b])
    for _ in range(rounds):
        for precision, peak in matmul_peaks(threads).items():
            peaks[precision] = max(peaks[precision], peak)
        for c in configs:
            for b in BATCHES:
                for _ in range(calls[b]):
                    t = time.perf_counter()
                    c.runtime.logits(inputs[b])
                    c.times[b].append(time.perf_counter() - t)


def matmul_peaks(threads: int) -> dict[str, float]:
    """This machine's measured matmul throughput (FLOP/s, 2 per MAC) at each precision, with ``threads``."""
    import torch

    torch.set_num_threads(threads)
    n, peaks = 1024, {}
    makers = {
        "fp32": lambda: (torch.randn(n, n), torch.randn(n, n), torch.mm),
        "bf16": lambda: (torch.randn(n, n).bfloat16(), torch.randn(n, n).bfloat16(), torch.mm),
        "int8": lambda: (torch.randint(-128, 127, (n, n), dtype=torch.int8),
                         torch.randint(-128, 127, (n, n), dtype=torch.int8), torch._int_mm),
    }
    for precision, make in makers.items():
        try:
            a, b, mm = make()
            mm(a, b)
            best = min(_timed_once(lambda: mm(a, b)) for _ in range(7))
            peaks[precision] = 2 * n**3 / best
        except (RuntimeError, NotImplementedError):
            peaks[precision] = peaks["fp32"]
    return peaks


def _timed_once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------


def passes(c: Config, reference: Config) -> bool:
    from cnnzoo.precision import Gate

    gate = Gate()
    return c.precision == "fp32" or (c.agreement >= gate.min_agreement and reference.top1 - c.top1 <= gate.max_drop)


def model_rows(name: str, configs: list[Config], macs: int, peaks: dict[str, float]) -> list[str]:
    reference, auto = configs[0], configs[-1]
    rows = []
    for b in BATCHES:
        alternatives = [c for c in configs[:-1] if passes(c, reference)]
        best = max(alternatives, key=lambda c: c.img_s(b))
        for c in configs:
            ips = c.img_s(b)
            peak = 100 * 2 * macs * ips / peaks[c.precision]
            gate = "yes" if passes(c, reference) else "no"
            ratio = f"**{ips / best.img_s(b):.2f}**" if c is auto else f"{ips / reference.img_s(b):.2f}"
            rows.append(f"| {name} | {b} | {c.label} | {ips:,.1f} | {ratio} | {c.agreement:.2f} | {c.top1:.1f} | "
                        f"{gate} | {peak:.1f} |")
    return rows


HEADER = ["| model | batch | configuration | img/s | x eager fp32 (auto: / best passing) | agree % | top-1 % | "
          "gate | % peak |", "|---|---:|---|---:|---:|---:|---:|---|---:|"]


def goals(name: str, configs: list[Config]) -> list[str]:
    reference, auto = configs[0], configs[-1]
    lines = []
    for b in BATCHES:
        best = max((c for c in configs[:-1] if passes(c, reference)), key=lambda c: c.img_s(b))
        fp32 = max((c for c in configs[:-1] if c.precision == "fp32"), key=lambda c: c.img_s(b))
        int8 = max((c for c in configs[:-1] if c.precision == "int8"), key=lambda c: c.img_s(b))
        ratio = auto.img_s(b) / best.img_s(b)
        lines.append(f"{name} batch {b}: auto ({auto.label[14:]}) {ratio:.2f}x the best passing alternative "
                     f"({best.label}) [{'ok' if ratio >= 1.0 else 'MISSED'}]; the fastest int8 ({int8.label}) "
                     f"{int8.img_s(b) / fp32.img_s(b):.2f}x the fastest fp32 ({fp32.label}), "
                     f"{'passing' if passes(int8, reference) else 'failing'} the gate")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg_224() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (28, 28, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # photo-like blocks
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def _post(reader, writer, request: bytes) -> int:
    """One keep-alive HTTP/1.1 request on an open connection; the status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def load(port: int, body: bytes, concurrency: int, total: int) -> tuple[list[float], float]:
    request = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    left = [total]

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            assert await _post(reader, writer, request) == 200
        await ready.wait()
        while left[0] > 0:
            left[0] -= 1
            t = time.perf_counter()
            status = await _post(reader, writer, request)
            assert status == 200, status
            latencies.append(time.perf_counter() - t)
        writer.close()

    ready = asyncio.Event()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(0.5)  # every connection open and warm
    t0 = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    return latencies, time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def served(model: Path, threads: int):
    """`cnnzoo serve MODEL` in a subprocess, once it is ready: (port, pid)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "cnnzoo", "serve", str(model), "--port", str(port)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    log: list[str] = []
    for line in iter(proc.stderr.readline, ""):
        log.append(line)
        if " ready on " in "".join(log) and any("Uvicorn running on" in x for x in log):
            break
    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    try:
        if proc.poll() is not None:
            raise RuntimeError("".join(log[-20:]))
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def runtime_alone(runtime, x: np.ndarray, calls: int) -> tuple[float, float]:
    """The runtime's own images/s at batch len(x) (median call) and its CPU ms per image, in this process."""
    cpu = time.process_time()
    times = [_timed_once(lambda: runtime.logits(x)) for _ in range(calls)]
    return len(x) / statistics.median(times), 1e3 * (time.process_time() - cpu) / (calls * len(x))


def service_table(model: Path, quick: bool, threads: int) -> list[str]:
    """The service at concurrency 1 and 16 and the runtime alone at batch 16, interleaved over rounds (a burst of
    load from other processes then falls on both sides of the ratio), with the CPU time each needs per image."""
    from cnnzoo.images import open_image
    from cnnzoo.runtime import open_runtime

    runtime = open_runtime(model, threads=threads)
    body = jpeg_224()
    x = np.stack([runtime.preprocess(open_image(body, channels=3))] * 16)
    runtime.logits(x)
    rounds, total = (3, 100) if quick else (5, 200)
    own, runs = [], {1: [], 16: []}
    with served(model, threads) as (port, pid):
        for _ in range(rounds):
            own.append(runtime_alone(runtime, x, 10 if quick else 20))
            for concurrency in runs:
                cpu = cpu_seconds(pid)
                latencies, wall = asyncio.run(load(port, body, concurrency, total * (1 if concurrency == 1 else 4)))
                runs[concurrency].append((latencies, len(latencies) / wall,
                                          1e3 * (cpu_seconds(pid) - cpu) / len(latencies)))
    own_img_s = statistics.median(r for r, _ in own)
    own_cpu = statistics.median(c for _, c in own)
    lines = [f"| service (mobilenet_v2 auto = {runtime.backend} {runtime.precision}, 224x224 JPEG) | requests/s | "
             "p50 ms | p99 ms | / runtime batch-16 img/s | server CPU ms / request |", "|---|---:|---:|---:|---:|---:|"]
    for concurrency, rows in runs.items():
        latencies = [t for lat, _, _ in rows for t in lat]
        req_s = statistics.median(r for _, r, _ in rows)
        cpu_ms = statistics.median(c for _, _, c in rows)
        lines.append(f"| concurrency {concurrency} | {req_s:.1f} | {1e3 * np.percentile(latencies, 50):.1f} | "
                     f"{1e3 * np.percentile(latencies, 99):.1f} | {req_s / own_img_s:.2f} | {cpu_ms:.2f} |")
    cores = len(os.sched_getaffinity(0))
    lines.append(f"runtime alone at batch 16: {own_img_s:.1f} img/s, {own_cpu:.2f} ms CPU per image (medians of "
                 f"{rounds} rounds interleaved with the service's); at {cpu_ms:.2f} ms CPU per request the service's "
                 f"ceiling on {cores} cores is {1e3 * cores / cpu_ms:.0f} requests/s, "
                 f"{1e3 * cores / cpu_ms / own_img_s:.2f} of the runtime alone (the client's CPU not counted)")
    return lines


# ---------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (several minutes)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the CPUs available)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--no-service", action="store_true", help="skip the HTTP service benchmark")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    from cnnzoo.runtime import default_threads

    threads = args.threads or default_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import onnxruntime
    import openvino
    import torch

    from cnnzoo.summary import summarize

    torch.set_num_threads(threads)
    peaks = matmul_peaks(threads)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}, "
          f"{threads} threads, {os.cpu_count()} CPUs{' (quick)' if args.quick else ''}; matmul peak "
          + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()), flush=True)
    rounds, calls, steps = (3, {1: 5, 16: 2}, 30) if args.quick else (10, {1: 20, 16: 4}, 120)
    with tempfile.TemporaryDirectory(prefix="cnnzoo-bench-") as tmp:
        data = write_digits(Path(tmp) / "digits", {"train": 300 if args.quick else 1200, "val": 300})
        rows, lines, served = list(HEADER), [], None
        for name in names:
            card = card_for(name, MODELS[name])
            model = make_classifier(name, card, data, steps)
            configs, auto = configurations(name, model, card, Path(tmp), data, threads)
            x, y = folder_arrays(data / "val", card)
            measure_accuracy(configs, x, y)
            measure_speed(configs, MODELS[name], rounds, calls, peaks, threads)
            macs = summarize(model, MODELS[name]).total_macs
            rows += model_rows(name, configs, macs, peaks)
            lines += goals(name, configs)
            served = auto.path if name == "mobilenet_v2" else served
            print(f"{name}: auto export chose {auto.deploy.backend} {auto.deploy.precision}\n{auto}", file=sys.stderr,
                  flush=True)
        print("matmul peak (best measured) " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
        print("\n".join(rows))
        print("\n".join(lines))
        if not args.no_service:
            if served is None:
                card = card_for("mobilenet_v2", MODELS["mobilenet_v2"])
                served = configurations("mobilenet_v2", make_classifier("mobilenet_v2", card, data, steps), card,
                                        Path(tmp), data, threads)[1].path
            print("\n".join(service_table(served, args.quick, threads)))


if __name__ == "__main__":
    main()
