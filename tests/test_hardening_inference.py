"""Issue #15, the inference side: hostile model files run no code, the service stays live and answers standard
clients, every numeric option of serve/predict is range-checked, explain never overwrites its own input.

The hostile files are real: a test first shows that each one does run its code (creates its marker file) when it
is opened the unsafe way (torch.load without weights_only, torch.jit.load), so "no marker" below means something.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import socket
import subprocess
import sys
import struct
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

import cnnzoo
from cnnzoo.artifact import InputSpec, ModelCard
from cnnzoo.checkpoint import FORMAT, VERSION, save_checkpoint
from cnnzoo.cli import main
from cnnzoo.errors import UserError
from cnnzoo.registry import create_model
from cnnzoo.runtime import META_KEY, open_runtime
from cnnzoo.serving import Limits, create_app, serve, server_config

ROOT = Path(__file__).resolve().parents[1]
CLASSES = tuple("abcdefghij")
SPEC = InputSpec(3, 32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "crop", 36)
CARD = ModelCard("lenet5_relu", {"num_classes": 10, "in_chans": 3}, CLASSES, SPEC)
KB = 1024
TORCH_LOAD_TORCHSCRIPT = "'torch.load' received a zip file that looks like a TorchScript archive"


# ------------------------------------------------------------------------------------------------------------
# Hostile files
# ------------------------------------------------------------------------------------------------------------


class _Bomb(torch.nn.Module):
    """A TorchScript program dressed as a classifier: loading it maps ``path`` shared and writes 16 bytes into it
    (creating the file, or overwriting the start of an existing one), as the issue's archive did."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.touched = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path, self.training = state
        self.touched = int(torch.from_file(state[0], True, 16, dtype=torch.uint8).fill_(33).sum())


class _Reduce:
    """A pickled object whose unpickling calls open(marker, "w"): pickle's __reduce__ code execution."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _weights() -> dict:
    torch.manual_seed(0)
    return create_model("lenet5_relu", num_classes=10, in_chans=3).state_dict()


def torchscript_bomb(path: Path, marker: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save is "deprecated"
        program = torch.jit.script(_Bomb(str(marker)))
        torch.jit.save(program, str(path), _extra_files={f"{META_KEY}.json": CARD.to_json()})
    return path


def pickle_bomb(path: Path, marker: Path) -> Path:
    payload = {"format": FORMAT, "version": VERSION, "card": CARD.to_dict(), "state_dict": _weights(),
               "config": _Reduce(marker)}
    torch.save(payload, path)
    return path


def truncated(path: Path, marker: Path) -> Path:
    save_checkpoint(path, CARD, _weights(), epoch=1, step=1, best_metric=0.0, metrics={}, config={})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def crc_corrupted(path: Path, marker: Path) -> Path:
    """A checkpoint whose largest tensor had 16 bytes overwritten in place: the zip's CRC no longer matches, and
    torch.load alone would hand back the damaged weights."""
    save_checkpoint(path, CARD, _weights(), epoch=1, step=1, best_metric=0.0, metrics={}, config={})
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(member.header_offset + 26)  # the local header: name and extra lengths, then the stored bytes
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(member.header_offset + 30 + name_len + extra_len + member.file_size // 2)
        f.write(b"\x7f" * 16)
    return path


def torchscript_run_folder(path: Path, marker: Path) -> Path:
    """A run folder whose last.pt is the TorchScript program: the folder path skips any sniffing of a .pt name."""
    folder = path.with_suffix("")
    folder.mkdir()
    torchscript_bomb(folder / "last.pt", marker)
    return folder


HOSTILE = {"pickle-reduce": pickle_bomb, "torchscript-setstate": torchscript_bomb, "truncated": truncated,
           "crc-corrupted": crc_corrupted, "torchscript-run-folder": torchscript_run_folder}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A good checkpoint, an image, and each hostile kind with its own marker path (not created)."""
    folder = tmp_path_factory.mktemp("hostile")
    good = folder / "good.pt"
    save_checkpoint(good, CARD, _weights(), epoch=1, step=1, best_metric=0.0, metrics={}, config={})
    image = folder / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    hostile = {kind: (build(folder / f"{kind}.pt", folder / f"{kind}.marker"), folder / f"{kind}.marker")
               for kind, build in HOSTILE.items()}
    return {"good": good, "image": image, "hostile": hostile}


def test_the_hostile_files_do_run_code_when_opened_unsafely(tmp_path):
    """The oracle: each bomb creates its marker when opened the unsafe way, and only then."""
    ts_marker, pickle_marker = tmp_path / "ts.marker", tmp_path / "pickle.marker"
    ts = torchscript_bomb(tmp_path / "ts.pt", ts_marker)
    pkl = pickle_bomb(tmp_path / "pkl.pt", pickle_marker)
    assert not ts_marker.exists() and not pickle_marker.exists()  # building them ran nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert torch.jit.load(str(ts)).touched == 16 * 33
    assert ts_marker.read_bytes() == b"!" * 16
    torch.load(pkl, weights_only=False)
    assert pickle_marker.exists()
    # the corrupted checkpoint loads without complaint through torch.load alone, with other weights
    crc = torch.load(crc_corrupted(tmp_path / "crc.pt", tmp_path / "unused"), weights_only=True)["state_dict"]
    assert any(not torch.equal(crc[k], v) for k, v in _weights().items())
    # and through cnnzoo with the explicit flag: the runtime opens it (so the flag is what stands in the way)
    ts_marker.unlink()
    runtime = open_runtime(ts, trust_torchscript=True)
    assert ts_marker.exists() and runtime.backend == "torch" and runtime.classes == list(CLASSES)


def _one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cnnzoo {command}: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_server(monkeypatch):
    """`cnnzoo serve` in-process: binding a port would mean the hostile model was accepted."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)


# every CLI command that reads a model file: argv for (model path, image, output folder)
CLI = {
    "predict": lambda model, image, out: ["predict", model, image],
    "serve": lambda model, image, out: ["serve", model, "--port", "0"],
    "explain": lambda model, image, out: ["explain", model, image, "--out", out / "x.png"],
    "export": lambda model, image, out: ["export", model, "--out", out / "x.onnx"],
    "evaluate": lambda model, image, out: ["evaluate", model, "--data", "digits", "--out", out / "eval"],
}


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("command", CLI)
def test_cli_refuses_hostile_files(files, kind, command, capsys, tmp_path, no_server):
    path, marker = files["hostile"][kind]
    argv = [str(a) for a in CLI[command](path, files["image"], tmp_path)]
    with warnings.catch_warnings(record=True) as caught:  # a warning would be lines of its own on stderr
        warnings.simplefilter("always")
        assert main(argv) == 2
    line = _one_line(capsys.readouterr().err, command)
    # Known, reported: cnnzoo.checkpoint.read_weights passes a TorchScript archive to torch.load, which warns
    # (2 lines) before refusing it under weights_only; predict and serve recognise the archive first.
    tolerated = () if command in ("predict", "serve") else (TORCH_LOAD_TORCHSCRIPT,)
    assert not [str(w.message) for w in caught if not str(w.message).startswith(tolerated)]
    assert not marker.exists(), f"{command} ran the code in a {kind} file"
    assert not list(tmp_path.iterdir()), "something was written"
    if kind == "torchscript-setstate" and command in ("predict", "serve"):
        assert "--trust-torchscript" in line and "runs code when loaded" in line


# every library entry point that reads a model file
API = {
    "open_runtime": lambda model, image, out: open_runtime(model),
    "cnnzoo.predict": lambda model, image, out: cnnzoo.predict(model, image),
    "cnnzoo.explain": lambda model, image, out: cnnzoo.explain(model, image),
    "cnnzoo.export": lambda model, image, out: cnnzoo.export(model, out / "x.onnx"),
    "cnnzoo.evaluate": lambda model, image, out: cnnzoo.evaluate(model, name="digits"),
}


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("entry", API)
def test_api_refuses_hostile_files(files, kind, entry, tmp_path):
    path, marker = files["hostile"][kind]
    with pytest.raises(UserError) as caught:
        API[entry](path, files["image"], tmp_path)
    assert len(str(caught.value).splitlines()) == 1
    assert not marker.exists(), f"{entry} ran the code in a {kind} file"
    assert not list(tmp_path.iterdir())


def _loaded(app) -> None:
    service = app.state.service
    deadline = time.monotonic() + 30
    while not service.ready.is_set() and service.failed is None:
        assert time.monotonic() < deadline, "the model neither loaded nor failed"
        time.sleep(0.02)


@pytest.mark.parametrize("kind", HOSTILE)
def test_service_refuses_hostile_files(files, kind):
    path, marker = files["hostile"][kind]
    app = create_app(path)
    with TestClient(app) as client:
        _loaded(app)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["message"] == app.state.service.failed
        predicted = client.post("/v1/predict", content=files["image"].read_bytes())
        assert predicted.status_code == 503
        assert client.post("/v1/explain", content=files["image"].read_bytes()).status_code == 503
    assert not marker.exists(), f"the service ran the code in a {kind} file"
    with pytest.raises(UserError, match="cannot serve"):  # serve(): refused before binding
        serve(path, port=0)
    assert not marker.exists()


def test_trust_flag_opens_torchscript_and_nothing_else(files, tmp_path, capsys):
    """--trust-torchscript opens a TorchScript file (it runs its code: the marker appears); a pickled checkpoint
    stays weights-only with the flag too."""
    pkl, pickle_marker = files["hostile"]["pickle-reduce"]
    assert main(["predict", str(pkl), str(files["image"]), "--trust-torchscript"]) == 2
    _one_line(capsys.readouterr().err, "predict")
    assert not pickle_marker.exists()
    with pytest.raises(UserError):
        cnnzoo.predict(pkl, files["image"], trust_torchscript=True)
    assert not pickle_marker.exists()
    marker = tmp_path / "trusted.marker"
    bomb = torchscript_bomb(tmp_path / "trusted.pt", marker)
    assert main(["predict", str(bomb), str(files["image"]), "--trust-torchscript", "--topk", "1"]) == 0
    assert marker.exists() and capsys.readouterr().out.startswith(f"{files['image']}: ")


def test_serve_cli_refuses_torchscript_in_one_line(files):
    """The real command in its own process (logging configured as in production): one line, exit 2, no marker."""
    path, marker = files["hostile"]["torchscript-setstate"]
    done = subprocess.run([sys.executable, "-m", "cnnzoo", "serve", str(path), "--port", "0"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr, "serve")
    assert f"cannot serve {path}: " in line and "--trust-torchscript" in line
    assert not marker.exists()


def test_help_documents_the_flag(capsys):
    for command in ("predict", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--trust-torchscript" in text and "this file is a program: it runs code when loaded" in text


# ------------------------------------------------------------------------------------------------------------
# Validated options
# ------------------------------------------------------------------------------------------------------------

SERVE_OPTIONS = [
    (["--port", "99999"], "--port"), (["--port", "-1"], "--port"), (["--max-batch", "0"], "--max-batch"),
    (["--max-batch", "999999999999"], "--max-batch"),  # start-up would time (and allocate) a batch that large
    (["--max-body-mb", "0"], "--max-body-mb"), (["--max-body-mb", "nan"], "--max-body-mb"),
    (["--max-body-mb", "-1"], "--max-body-mb"), (["--max-pixels", "0"], "--max-pixels"),
    (["--max-in-flight", "0"], "--max-in-flight"), (["--max-images", "0"], "--max-images"),
    (["--timeout", "0"], "--timeout"), (["--timeout", "nan"], "--timeout"), (["--timeout", "inf"], "--timeout"),
    (["--batch-wait-ms", "-1"], "--batch-wait-ms"), (["--batch-wait-ms", "nan"], "--batch-wait-ms"),
]


def test_serve_on_a_port_in_use_is_one_line(files, capsys, no_server):
    """Another process listens on the port: one line naming it, exit 2, before uvicorn's start-up (whose own
    message would come after its banner, with status 3)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(files["good"]), "--port", str(port)]) == 2
    line = _one_line(capsys.readouterr().err, "serve")
    assert f"127.0.0.1:{port}" in line and "in use" in line
    assert main(["serve", str(files["good"]), "--host", "no-such-host.invalid"]) == 2
    assert "cannot listen on no-such-host.invalid" in _one_line(capsys.readouterr().err, "serve")


@pytest.mark.parametrize("argv, option", SERVE_OPTIONS, ids=[" ".join(a) for a, _ in SERVE_OPTIONS])
def test_serve_options_out_of_range(files, argv, option, capsys, monkeypatch, no_server):
    def never(*args, **kwargs):
        raise AssertionError("the model was opened before the options were checked")

    monkeypatch.setattr("cnnzoo.runtime.open_runtime", never)
    assert main(["serve", str(files["good"]), *argv]) == 2
    line = _one_line(capsys.readouterr().err, "serve")
    assert f"{option} (" in line and f"got {argv[1]}" in line.replace(".0", "")


LIMITS = [dict(max_body_bytes=0), dict(max_body_bytes=1.5), dict(max_pixels=0), dict(max_in_flight=0),
          dict(max_in_flight=True), dict(timeout_s=0), dict(timeout_s=math.nan), dict(max_images=-3),
          dict(batch_wait_ms=-1), dict(retry_after_s=-1), dict(idle_timeout_s=0), dict(max_pixels="many")]


@pytest.mark.parametrize("fields", LIMITS, ids=[str(f) for f in LIMITS])
def test_limits_protect_the_python_api(fields):
    (name,) = fields
    with pytest.raises(UserError, match=name):
        Limits(**fields)


def test_create_app_and_serve_check_their_own_options(files):
    for options in (dict(max_batch=0), dict(max_batch=2.5), dict(topk=0)):
        with pytest.raises(UserError, match=next(iter(options))):
            create_app(files["good"], **options)
    for options in (dict(port=99999), dict(port=-1), dict(max_batch=0)):
        with pytest.raises(UserError, match=next(iter(options))):
            serve(files["good"], **options)
    Limits(batch_wait_ms=0, retry_after_s=0)  # the edges of the ranges are allowed


def test_predict_topk_zero_is_one_line(files, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(files["good"]), str(files["image"]), "--topk", "0"])
    assert exit_.value.code == 2
    assert "--topk" in _one_line(capsys.readouterr().err, "predict")
    with pytest.raises(UserError, match="at least 1"):
        cnnzoo.predict(files["good"], files["image"], topk=0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UserError, match="batch_size must be a whole number"):
            cnnzoo.predict(files["good"], files["image"], batch_size=bad)


def test_serve_refuses_a_checkpoint_it_could_not_serve(tmp_path, capsys, no_server):
    """A card whose input size the network cannot take: refused before binding, in one line, not served as 500s."""
    tiny = ModelCard("lenet5_relu", {"num_classes": 10, "in_chans": 3}, CLASSES,
                     InputSpec(3, 8, 8, (0.5,) * 3, (0.25,) * 3, "stretch", 8))
    save_checkpoint(tmp_path / "tiny.pt", tiny, _weights(), epoch=1, step=1, best_metric=0.0, metrics={}, config={})
    assert main(["serve", str(tmp_path / "tiny.pt"), "--port", "0"]) == 2
    line = _one_line(capsys.readouterr().err, "serve")
    assert "cannot serve" in line and "fails on its own input size 3x8x8" in line


# ------------------------------------------------------------------------------------------------------------
# explain never overwrites its own input
# ------------------------------------------------------------------------------------------------------------


def test_explain_refuses_to_overwrite_its_input(files, tmp_path, capsys):
    ckpt, image = tmp_path / "model.pt", tmp_path / "x.png"
    ckpt.write_bytes(files["good"].read_bytes())
    image.write_bytes(files["image"].read_bytes())
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(files["good"].read_bytes())
    before = {p: p.read_bytes() for p in (ckpt, image, run / "last.pt")}
    cases = [
        [ckpt, image, "--out", ckpt],
        [ckpt, image, "--out", image],
        [ckpt, image, "--out", tmp_path / "sub" / ".." / "model.pt"],  # the same file, spelled otherwise
        [run, image, "--out", run / "last.pt"],  # a run folder reads its last.pt
        [ckpt, "--method", "filters", "--out", ckpt],
    ]
    for argv in cases:
        assert main(["explain", *map(str, argv)]) == 2, argv
        assert "own input" in _one_line(capsys.readouterr().err, "explain")
    assert {p: p.read_bytes() for p in before} == before
    assert main(["explain", str(ckpt), str(image), "--out", str(tmp_path / "fine.png")]) == 0
    assert Image.open(tmp_path / "fine.png").format == "PNG"


# ------------------------------------------------------------------------------------------------------------
# A service that stays live: live uvicorn servers in a thread, run with serve()'s own configuration
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def live_server(model, limits: Limits, **options):
    app = create_app(model, limits=limits, **options)
    server = uvicorn.Server(server_config(app, "127.0.0.1", 0, limits, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (server.started and app.state.service.ready.is_set()):
            assert thread.is_alive() and time.monotonic() < deadline, app.state.service.failed
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(30)


def slow_png(side: int = 4000) -> bytes:
    """A grey side x side PNG of a few tens of KB that takes a good half second to decode and fit."""
    buffer = io.BytesIO()
    Image.fromarray((np.arange(side)[None, :] % 251).astype(np.uint8).repeat(side, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def test_explain_flood_keeps_livez_fast(files):
    """8 concurrent explanations of 4000 x 4000 PNGs: /livez answers within 100 ms throughout. (Decoded on the
    event loop, as before, each image stalled the loop for a good half second: /livez took 3-6 s here.)

    One probe in the lot may pass 100 ms, never 250: this suite shares 2 cores with other tests, and one OS
    descheduling of the server's thread can take that long for any process (the predict flood shows the same)."""
    limits = Limits(max_pixels=20_000_000, timeout_s=60)
    png = slow_png()
    with live_server(files["good"], limits, backend="torch") as (url, _):
        flooding, ready, latencies = threading.Event(), threading.Event(), []

        def probe():
            with httpx.Client(base_url=url, timeout=10) as client:
                assert client.get("/livez").status_code == 200  # connected before the flood: only answers are timed
                ready.set()
                while flooding.is_set():
                    start = time.perf_counter()
                    assert client.get("/livez").status_code == 200
                    latencies.append(time.perf_counter() - start)
                    time.sleep(0.01)

        # one client for the flood: a client per request would build an SSL context each time, holding the GIL
        # this in-process server shares
        with ThreadPoolExecutor(9) as pool, httpx.Client(base_url=url, timeout=60) as client:
            flooding.set()
            prober = pool.submit(probe)
            assert ready.wait(10)
            started = time.perf_counter()
            responses = list(pool.map(lambda _: client.post("/v1/explain", content=png), range(8)))
            flood_s = time.perf_counter() - started
            flooding.clear()
            prober.result()
    assert [r.status_code for r in responses] == [200] * 8, responses[0].text
    assert all(r.json()["overlay"].startswith("data:image/png;base64,") for r in responses)
    assert flood_s > 0.5 and len(latencies) >= 10  # the probes ran while the server was busy
    slow = sorted(t for t in latencies if t >= 0.1)
    assert len(slow) <= 1 and max(latencies) < 0.25, f"/livez took {[round(t * 1000) for t in slow]} ms"


def test_explain_has_the_deadline_and_in_flight_limit(files):
    """An explanation held on the inference thread: a second request is 429, the first 504 at its deadline, and
    the probes answer meanwhile (the event loop is not waiting for the explanation)."""
    png = files["image"].read_bytes()
    app = create_app(files["good"], backend="torch", limits=Limits(max_in_flight=1, timeout_s=0.5))
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        assert app.state.service.ready.wait(60)
        service = app.state.service
        explainer, entered, release = service.explainer, threading.Event(), threading.Event()

        def held(array):
            entered.set()
            assert release.wait(60)
            return explainer(array)

        service.explainer = held
        first = pool.submit(client.post, "/v1/explain", content=png)
        assert entered.wait(30)
        busy = client.post("/v1/explain", content=png)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert client.get("/livez").status_code == 200
        late = first.result(60)
        assert late.status_code == 504 and "deadline of 0.5 s" in late.json()["error"]["message"]
        service.explainer = explainer
        release.set()
        response = client.post("/v1/explain", content=png)
        assert response.status_code == 200 and response.json()["overlay"].startswith("data:image/png;base64,")


def test_urllib_receives_the_413(files):
    """Python's urllib / http.client send the whole body before reading: they get the 413, not a reset."""
    limits = Limits(max_body_bytes=256 * KB)
    with live_server(files["good"], limits, backend="torch") as (url, port):
        request = urllib.request.Request(url + "/v1/predict", data=b"\0" * (1024 * KB), method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413
        assert b'"status":413' in caught.value.read()
        # chunked, without a Content-Length: counted as it streams, then the rest drained
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/predict", body=iter([b"\0" * (64 * KB)] * 16), encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and b'"status":413' in response.read()
        connection.close()
        assert httpx.post(url + "/v1/predict", content=files["image"].read_bytes()).status_code == 200


def test_idle_and_half_open_connections_are_closed(files):
    limits = Limits(idle_timeout_s=0.5)
    with live_server(files["good"], limits, backend="torch") as (_, port):
        openings = {"idle": b"", "half a request head": b"GET /livez HTTP/1.1\r\nHost: x\r\n",
                    "after an answer": b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"}
        for what, sent in openings.items():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                start = time.perf_counter()
                sock.sendall(sent)
                received = b""
                while chunk := sock.recv(4096):  # b"" once the server closes; a timeout error if it never does
                    received += chunk
                waited = time.perf_counter() - start
            assert 0.4 < waited < 3, f"{what}: closed after {waited:.2f} s"
            assert received.startswith(b"HTTP/1.1 200") == (what == "after an answer"), what
