"""torchrun with 2 CPU processes (gloo on loopback): a worker killed mid-run is restarted by --max-restarts=1 and
training resumes from the last checkpoint; the distributed evaluation of a validation set whose size is odd
equals the single-process one exactly (no padded duplicates).

One torchrun launch covers both (each costs several interpreter starts). Robust on a loaded machine: no timing,
a generous timeout, the kill placed by step count, not by clock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

from cnnzoo.checkpoint import load_checkpoint
from cnnzoo.data import load_data
from cnnzoo.evaluation import evaluate

# Rank 1 of the first attempt kills itself (SIGKILL: no cleanup, no checkpoint) at its 8th training step, that
# is step 3 of epoch 2 (5 steps per epoch). Rank 0 has written last.pt for epoch 1 by then: rank 1's steps of
# epoch 2 wait in the per-step collective for rank 0, which joins only after writing it.
WORKER = textwrap.dedent("""
    import os, signal, sys
    import cnnzoo.train as T
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["RANK"] == "1":
        original, calls = T._loss, [0]
        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 8:
                open(os.environ["KILL_MARKER"], "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        T._loss = dying
    from cnnzoo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_restart_resumes_and_eval_is_exact(tmp_path):
    script, out, marker = tmp_path / "worker.py", tmp_path / "run", tmp_path / "killed"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", KILL_MARKER=str(marker), GLOO_SOCKET_IFNAME="lo",
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--max-restarts=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--monitor-interval=0.5",
           str(script), "train", "lenet5", "--data", "digits", "--limit", "301", "--epochs", "3",
           "--batch-size", "32", "--lr", "0.01", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert marker.exists(), "the worker was never killed"
    assert f"resuming from {out / 'last.pt'} (epoch 2, batch 0)" in log, log[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["step"] == 15  # 151 images per rank: 5 steps
    # Distributed evaluation (151 + 150 images) equals a single-process evaluation of the same weights.
    data = load_data("digits", limit=301)
    assert len(data.val) == 301
    report = evaluate(out / "last.pt", data)
    assert report.images == 301
    assert report.top1 == rows[-1]["val_top1"] and report.top5 == rows[-1]["val_top5"]
    assert abs(report.loss - rows[-1]["val_loss"]) < 1e-6
    assert load_checkpoint(out / "last.pt").record["epoch"] == 3
