"""CPU inference benchmark: PyTorch eager vs cnnzoo's ONNX Runtime and OpenVINO paths, and the HTTP service.

    .venv/bin/python benchmarks/inference.py [--quick] [--threads N] [--models lenet5,resnet18,...]

For each network (random weights, BatchNorm statistics set from one random batch) it saves a checkpoint, exports it to ONNX with
cnnzoo.exporting (parity-checked), opens each file with cnnzoo.runtime.open_runtime on each backend and measures
`Runtime.logits`: latency at batch 1 (median and p90, ms) and throughput at batch 16 (images/s). Ratios are
speed-ups over eager and the fraction of the best backend's speed; `auto` is the backend open_runtime(.onnx,
"auto") picks. Then the service: `cnnzoo serve mobilenet_v2.onnx` in a subprocess, requests/s and p50/p99
latency at concurrency 1 and 16 with a 224x224 JPEG.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODELS = {"lenet5": (1, 32, 32), "resnet18": (3, 224, 224), "mobilenet_v2": (3, 224, 224),
          "efficientnet_b0": (3, 224, 224)}
BACKENDS = ("torch", "onnxruntime", "openvino")


def timed(fn, iters: int, budget_s: float) -> list[float]:
    """Seconds per call, after two warm-up calls; stops early once budget_s is spent (at least 3 calls)."""
    fn()
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def calibrate_batchnorm(model, size: tuple[int, int, int]) -> None:
    """BatchNorm statistics from one random batch, as training would set them. With the initial statistics
    (mean 0, variance 1) the activations of a random MobileNet or EfficientNet shrink layer by layer into float32
    denormals, which x86 computes 10-100x slower: PyTorch eager (no flush-to-zero) then looked 50x slower than
    OpenVINO (which flushes them) for a reason no trained network has."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: exactly this batch's statistics
    if norms:
        with torch.no_grad():
            model.train()(torch.randn(8, *size, generator=torch.Generator().manual_seed(0)))
    model.eval()


def prepare(name: str, size: tuple[int, int, int], folder: Path) -> tuple[Path, Path]:
    import torch

    from cnnzoo.checkpoint import save_checkpoint
    from cnnzoo.exporting import export
    from cnnzoo.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10 if name == "lenet5" else 1000)
    calibrate_batchnorm(model, size)
    mean, std = ([0.5], [0.5]) if size[0] == 1 else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    ckpt = folder / f"{name}.pt"
    save_checkpoint(ckpt, {"model_name": name, "model_kwargs": {"num_classes": model.num_classes},
                           "state_dict": model.state_dict(), "classes": [str(i) for i in range(model.num_classes)],
                           "input_size": list(size), "mean": mean, "std": std,
                           "resize_size": size[1] if size[1] == 32 else 256, "appended_fc": None, "epoch": 0,
                           "step": 0, "best_metric": 0.0, "metrics": {}, "config": {}})
    # random-init logits of deep nets are large; the check here is only that the file is sound
    export(ckpt, folder / f"{name}.onnx", atol=1e-2)
    return ckpt, folder / f"{name}.onnx"


def bench_models(names: list[str], quick: bool, threads: int, folder: Path) -> list[dict]:
    from cnnzoo.runtime import open_runtime

    rows = []
    iters1, iters16, budget = (20, 3, 3.0) if quick else (200, 20, 20.0)
    for name in names:
        size = MODELS[name]
        ckpt, onnx = prepare(name, size, folder)
        auto = open_runtime(onnx, "auto", threads=threads).backend
        x1 = np.random.default_rng(0).standard_normal((1, *size), dtype=np.float32)
        x16 = np.random.default_rng(1).standard_normal((16, *size), dtype=np.float32)
        for backend in BACKENDS:
            rt = open_runtime(ckpt, "torch") if backend == "torch" else open_runtime(onnx, backend, threads=threads)
            lat = timed(lambda: rt.logits(x1), iters1, budget)
            thr = timed(lambda: rt.logits(x16), iters16, budget)
            rows.append({"model": name, "backend": backend, "auto": backend == auto,
                         "p50_ms": 1e3 * statistics.median(lat), "p90_ms": 1e3 * float(np.percentile(lat, 90)),
                         "img_s": 16 / statistics.median(thr)})
            print(f"  {name:16s} {backend:12s} batch 1 {rows[-1]['p50_ms']:8.2f} ms   batch 16 "
                  f"{rows[-1]['img_s']:8.1f} img/s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | backend | batch 1 p50 ms | p90 ms | x eager | / best | batch 16 img/s | x eager | / best |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]
        eager = next(r for r in group if r["backend"] == "torch")
        best_lat, best_thr = min(r["p50_ms"] for r in group), max(r["img_s"] for r in group)
        for r in group:
            label = r["backend"] + (" (auto)" if r["auto"] else "")
            out.append(f"| {name} | {label} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                       f"{eager['p50_ms'] / r['p50_ms']:.2f} | {best_lat / r['p50_ms']:.2f} | {r['img_s']:.1f} | "
                       f"{r['img_s'] / eager['img_s']:.2f} | {r['img_s'] / best_thr:.2f} |")
    return "\n".join(out)


def goals(rows: list[dict]) -> list[str]:
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]
        auto = next(r for r in group if r["auto"])
        eager = next(r for r in group if r["backend"] == "torch")
        lat = min(r["p50_ms"] for r in group) / auto["p50_ms"]
        thr = auto["img_s"] / max(r["img_s"] for r in group)
        ok = "ok" if min(lat, thr) >= 0.9 else "MISSED"
        lines.append(f"auto ({auto['backend']}) on {name}: {lat:.0%} of the best batch-1 speed, {thr:.0%} of the best "
                     f"batch-16 throughput, {eager['p50_ms'] / auto['p50_ms']:.1f}x eager at batch 1 [{ok}]")
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg_224() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def bench_service(onnx: Path, quick: bool, threads: int) -> list[dict]:
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cnnzoo", "serve", str(onnx), "--port", str(port)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    log: list[str] = []
    ready = False
    for line in iter(proc.stderr.readline, ""):
        log.append(line)
        ready |= " ready on " in line
        if ready and any("Uvicorn running on" in x for x in log):
            break
    startup = time.perf_counter() - started
    threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    rss = _rss_mb(proc.pid)
    body = jpeg_224()
    results = []
    try:
        for concurrency in (1, 16):
            total = (60 if quick else 400) * (1 if concurrency == 1 else 4)

            async def run():
                latencies: list[float] = []
                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:
                    for _ in range(3):
                        await http.post("/v1/predict", content=body)
                    left = [total]

                    async def worker():
                        while left[0] > 0:
                            left[0] -= 1
                            t = time.perf_counter()
                            response = await http.post("/v1/predict", content=body)
                            assert response.status_code == 200, response.text
                            latencies.append(time.perf_counter() - t)

                    t0 = time.perf_counter()
                    await asyncio.gather(*(worker() for _ in range(concurrency)))
                    return latencies, time.perf_counter() - t0

            latencies, wall = asyncio.run(run())
            results.append({"concurrency": concurrency, "req_s": len(latencies) / wall,
                            "p50_ms": 1e3 * float(np.percentile(latencies, 50)),
                            "p99_ms": 1e3 * float(np.percentile(latencies, 99))})
    finally:
        proc.terminate()
        proc.wait(30)
    backend = next((x.split(" ready on ")[1].split()[0] for x in log if " ready on " in x), "?")
    print(f"service: mobilenet_v2 on {backend}; start-up to ready {startup:.2f} s, resident memory {rss:.0f} MB",
          flush=True)
    return results


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about a minute)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the CPUs available)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--no-service", action="store_true", help="skip the HTTP service benchmark")
    args = parser.parse_args()
    from cnnzoo.runtime import default_threads

    threads = args.threads or default_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    import onnxruntime
    import openvino

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}, "
          f"{threads} threads, {os.cpu_count()} CPUs{' (quick)' if args.quick else ''}")
    with tempfile.TemporaryDirectory(prefix="cnnzoo-bench-") as tmp:
        rows = bench_models(names, args.quick, threads, Path(tmp))
        print(table(rows))
        print("\n".join(goals(rows)))
        if not args.no_service:
            if "mobilenet_v2" not in names:
                prepare("mobilenet_v2", MODELS["mobilenet_v2"], Path(tmp))
            service = bench_service(Path(tmp) / "mobilenet_v2.onnx", args.quick, threads)
            print("| service (mobilenet_v2, JPEG 256x256) | requests/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
            for r in service:
                print(f"| concurrency {r['concurrency']} | {r['req_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
