"""The HTTP service: API, error statuses and JSON bodies, limits, token, micro-batching, readiness, deadline and
in-flight limits (in-process); a live uvicorn process with a bounded load test; the torch-free ONNX path."""

from __future__ import annotations

import asyncio
import io
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cnnzoo.exporting import export
from cnnzoo.runtime import open_runtime, softmax
from cnnzoo.serving import Limits, _Batcher, create_app
from test_export import DIGITS_SPEC, digits_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = Limits(max_body_bytes=256 * 1024, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    run = digits_run()
    onnx = export(run["ckpt"], tmp_path_factory.mktemp("serve") / "digits.onnx").path
    digit = sorted((run["val"] / "7").glob("*.png"))[0]
    return {**run, "onnx": onnx, "png": digit.read_bytes(), "digit_path": digit}


def png_header(width: int, height: int) -> bytes:
    """A PNG declaring width x height whose pixels are never there: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg(png: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


PPM = b"P6\n2 2\n255\n" + bytes(12)  # a valid image in a format outside the allowlist
CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20


@pytest.fixture(scope="module")
def client(files):
    app = create_app(files["onnx"], backend="onnxruntime", max_batch=8, limits=SMALL)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert app.state.service.ready.wait(60)
        yield c


def expected(files, data: bytes) -> list[tuple[str, float]]:
    runtime = open_runtime(files["onnx"], "onnxruntime")
    return runtime.predict([Image.open(io.BytesIO(data))], topk=5)[0]


def test_predict_raw_body_and_multipart(client, files):
    want = expected(files, files["png"])
    for response in (client.post("/v1/predict", content=files["png"]),
                     client.post("/v1/predict", files={"file": ("seven.png", files["png"], "image/png")})):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "lenet5_relu" and body["backend"] == "onnxruntime"
        got = [(p["class"], p["probability"]) for p in body["predictions"]]
        assert [c for c, _ in got] == [c for c, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-6)
    assert want[0][0] == "7"  # the network is trained: the page test relies on it too
    assert len(client.post("/v1/predict?topk=2", content=jpeg(files["png"])).json()["predictions"]) == 2


def test_batch_endpoint(client, files):
    parts = [("files", (f"{i}.png", files["png"], "image/png")) for i in range(3)]
    parts.append(("files", ("j.jpg", jpeg(files["png"]), "image/jpeg")))
    response = client.post("/v1/predict/batch", files=parts)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["0.png", "1.png", "2.png", "j.jpg"]
    assert results[0]["predictions"] == results[1]["predictions"]


def test_too_many_images_is_the_documented_status(client, files):
    """More file parts than --max-images is the 413 the limits promise (not the multipart parser's own 400); two
    images to /v1/predict point to the batch endpoint."""
    parts = [("files", (f"{i}.png", files["png"], "image/png")) for i in range(33)]
    error = client.post("/v1/predict/batch", files=parts).json()["error"]
    assert error["status"] == 413 and error["message"] == "more than 32 images in one request (--max-images)"
    error = client.post("/v1/predict", files=parts[:2]).json()["error"]
    assert error["status"] == 422 and "/v1/predict/batch" in error["message"]
    assert client.post("/v1/predict/batch", files=parts[:32]).status_code == 200


def test_model_card_and_probes(client):
    card = client.get("/v1/model").json()
    assert card["name"] == "lenet5_relu" and card["backend"] == "onnxruntime" and card["num_classes"] == 10
    assert card["input_size"] == [1, 32, 32] and card["limits"]["max_body_bytes"] == 256 * 1024
    # the input contract is the spec itself (mean, std, resize policy and size, interpolation), not loose fields
    assert card["input"] == DIGITS_SPEC.to_dict() and not {"mean", "std", "resize_size"} & set(card)
    assert (card["input"]["mean"], card["input"]["std"], card["input"]["resize"]) == ([0.5], [0.5], "stretch")
    assert card["explain"] is False  # CAM needs the torch backend
    for path in ("/livez", "/readyz", "/healthz"):
        assert client.get(path).status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "top-class" in page.text


def chunks(total: int, size: int = 32 * 1024):
    for _ in range(total // size):
        yield b"\0" * size


BAD = [
    ("corrupt image", dict(content=CORRUPT), 422),
    ("empty body", dict(content=b""), 422),
    ("truncated png", dict(content=b"\x89PNG\r\n\x1a\n"), 422),
    ("text", dict(content=b"hello, this is not an image"), 422),
    ("unsupported format", dict(content=PPM), 415),
    ("decompression bomb", dict(content=png_header(30_000, 30_000)), 413),
    ("over the pixel limit", dict(content=png_header(1200, 1000)), 413),
    ("body over the limit", dict(content=b"\0" * (300 * 1024)), 413),
    ("chunked body over the limit", dict(content=chunks(512 * 1024)), 413),
    ("multipart without a file", dict(data={"name": "x"}, files={"other": ("", b"", "text/plain")}), 422),
    ("topk out of range", dict(content=b"x", params={"topk": 0}), 422),
    ("topk not a number", dict(content=b"x", params={"topk": "many"}), 422),
]


@pytest.mark.parametrize("what, request_args, status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_json_4xx(client, files, what, request_args, status):
    response = client.post("/v1/predict", **request_args)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["message"] and "Traceback" not in response.text
    assert client.post("/v1/predict", content=files["png"]).status_code == 200  # the next good request succeeds


def test_wrong_method_path_and_batch_shape(client, files):
    checks = ((client.get("/v1/predict"), 405), (client.get("/nowhere"), 404), (client.delete("/v1/model"), 405),
              (client.post("/v1/predict/batch", content=files["png"]), 415))
    for response, status in checks:
        assert response.status_code == status
        assert response.json()["error"]["status"] == status
    too_many = [("files", (f"{i}.png", files["png"], "image/png")) for i in range(40)]
    assert client.post("/v1/predict/batch", files=too_many).status_code in (400, 413)


def test_token(files):
    app = create_app(files["onnx"], backend="onnxruntime", token="s3cret")
    with TestClient(app) as c:
        assert app.state.service.ready.wait(60)
        assert c.post("/v1/predict", content=files["png"]).status_code == 401
        wrong = c.post("/v1/predict", content=files["png"], headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["status"] == 401
        assert c.get("/v1/model").status_code == 401
        ok = c.post("/v1/predict", content=files["png"], headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open


class Gated:
    """A runtime wrapper whose inference waits for the test to release it (no sleeps, no timing)."""

    def __init__(self, runtime, armed: bool = False):
        self.runtime, self.armed = runtime, armed
        self.entered, self.release = threading.Event(), threading.Event()
        self.batch_sizes: list[int] = []
        for name in ("backend", "precision", "model_name", "classes", "input_size", "card", "spec"):
            setattr(self, name, getattr(runtime, name))

    def logits(self, batch):
        if self.armed:
            self.entered.set()
            assert self.release.wait(60)
        self.batch_sizes.append(len(batch))
        return self.runtime.logits(batch)


def test_readiness_waits_for_warm_up(files):
    gated = Gated(open_runtime(files["onnx"], "onnxruntime"), armed=True)
    app = create_app(gated)
    with TestClient(app) as c:
        assert gated.entered.wait(30)  # the warm-up inference is running
        assert c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 503 and c.post("/v1/predict", content=files["png"]).status_code == 503
        gated.armed = False
        gated.release.set()
        assert app.state.service.ready.wait(30)
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/predict", content=files["png"]).status_code == 200


def test_the_model_is_warmed_up_once(files, monkeypatch):
    """serve() runs the model once on a test image before binding (a model it cannot run is refused in one line);
    the app's background load then does not run it again. create_app on its own still warms up."""
    import uvicorn

    from cnnzoo import serving

    opened = []

    def open_counted(*args, **kwargs):
        runtime, measured = open_model(*args, **kwargs)
        opened.append(Gated(runtime))
        return opened[-1], measured

    def run(server):  # in place of listening: start the app as uvicorn would, until it is ready
        with TestClient(server.config.app) as c:
            assert server.config.app.state.service.ready.wait(30) and c.get("/readyz").status_code == 200

    open_model = serving._open_model
    monkeypatch.setattr(serving, "_open_model", open_counted)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    serving.serve(files["onnx"], port=0, backend="onnxruntime", log_level="warning")
    assert opened[0].batch_sizes == [1]
    direct = Gated(open_runtime(files["onnx"], "onnxruntime"))
    app = create_app(direct)
    with TestClient(app):
        assert app.state.service.ready.wait(30) and direct.batch_sizes == [1]


class FirstClasses(Gated):
    """The runtime restricted to its first ``n`` classes: a model with fewer classes than the default top-k."""

    def __init__(self, runtime, n: int):
        super().__init__(runtime)
        self.classes, self.n = runtime.classes[:n], n

    def logits(self, batch):
        return super().logits(batch)[:, : self.n]


def test_fewer_classes_than_topk(files):
    """A 3-class model with the default top-5 (and the web page's ?topk=5): every class, as `cnnzoo predict` gives
    them, not a 422 for every request. Below 1 is still refused."""
    app = create_app(FirstClasses(open_runtime(files["onnx"], "onnxruntime"), 3))
    with TestClient(app) as c:
        assert app.state.service.ready.wait(30)
        for query in ("", "?topk=5", "?topk=3"):
            response = c.post("/v1/predict" + query, content=files["png"])
            assert response.status_code == 200, response.text
            assert [p["index"] for p in sorted(response.json()["predictions"], key=lambda p: p["index"])] == [0, 1, 2]
        assert c.post("/v1/predict?topk=0", content=files["png"]).json()["error"]["message"] == "topk must be >= 1, got 0"


def test_in_flight_limit_and_deadline(files):
    gated = Gated(open_runtime(files["onnx"], "onnxruntime"))
    app = create_app(gated, limits=Limits(max_in_flight=1, timeout_s=0.5))
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        assert app.state.service.ready.wait(30)
        gated.armed = True
        first = pool.submit(c.post, "/v1/predict", content=files["png"])
        assert gated.entered.wait(30)  # the first request is inside inference
        busy = c.post("/v1/predict", content=files["png"])
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert c.get("/livez").status_code == 200 and c.get("/readyz").status_code == 200  # probes while saturated
        late = first.result(60)  # inference is still held: the 0.5 s deadline passes
        assert late.status_code == 504 and late.json()["error"]["status"] == 504
        gated.armed = False
        gated.release.set()
        assert c.post("/v1/predict", content=files["png"]).status_code == 200


def test_micro_batching_equals_unbatched(files):
    runtime = open_runtime(files["onnx"], "onnxruntime")
    images = [p.read_bytes() for p in sorted(files["val"].rglob("*.png"))[:12]]
    arrays = [runtime.preprocess(Image.open(io.BytesIO(d))) for d in images]
    alone = [softmax(runtime.logits(a[None]))[0] for a in arrays]

    async def run():
        gated = Gated(runtime)
        batcher = _Batcher(gated, max_batch=5, wait_s=0.002)
        worker = asyncio.create_task(batcher.run())
        rows = await asyncio.gather(*(batcher.submit(a) for a in arrays))
        worker.cancel()
        return rows, gated.batch_sizes

    rows, sizes = asyncio.run(run())
    assert sum(sizes) == 12 and max(sizes) <= 5 and len(sizes) < 12  # batched, never above max_batch
    for row, ref in zip(rows, alone):  # each request gets its own row, equal to its unbatched prediction
        np.testing.assert_allclose(row, ref, atol=1e-6)
        assert int(row.argmax()) == int(ref.argmax())

    # the same through HTTP, with concurrent clients
    app = create_app(files["onnx"], backend="onnxruntime", max_batch=8)
    with TestClient(app) as c, ThreadPoolExecutor(6) as pool:
        assert app.state.service.ready.wait(30)
        responses = list(pool.map(lambda d: c.post("/v1/predict?topk=10", content=d), images))
        for response, ref in zip(responses, alone):
            got = {p["index"]: p["probability"] for p in response.json()["predictions"]}
            np.testing.assert_allclose([got[i] for i in range(10)], ref, atol=1e-6)


def test_explain_overlay_with_torch_backend(files):
    app = create_app(files["ckpt"], backend="torch")
    with TestClient(app) as c:
        assert app.state.service.ready.wait(60)
        assert c.get("/v1/model").json()["explain"] is True
        response = c.post("/v1/explain", content=files["png"])
        assert response.status_code == 200, response.text
        assert response.json()["overlay"].startswith("data:image/png;base64,")
        assert c.post("/v1/explain", content=CORRUPT).status_code == 422


# ------------------------------------------------------------------------------------------------------------
# The ONNX path without torch, and a live server
# ------------------------------------------------------------------------------------------------------------

TORCH_FREE = """
import sys, resource, time
start = time.perf_counter()
from cnnzoo.cli import build_parser
from cnnzoo.serving import create_app
from fastapi.testclient import TestClient
build_parser()
app = create_app(sys.argv[1], backend=sys.argv[2])
with TestClient(app) as c:
    assert app.state.service.ready.wait(60)
    assert c.post("/v1/predict", content=open(sys.argv[3], "rb").read()).status_code == 200
    ready = time.perf_counter() - start
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"torch modules: {len(loaded)}; ready in {ready:.2f} s; max rss {rss:.0f} MB")
assert not loaded, loaded[:5]
"""


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_onnx_and_openvino_paths_never_import_torch(files, backend):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", TORCH_FREE, str(files["onnx"]), backend, str(files["digit_path"])],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch modules: 0" in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(files):
    port = free_port()
    cmd = [sys.executable, "-m", "cnnzoo", "serve", str(files["onnx"]), "--port", str(port), "--backend",
           "onnxruntime", "--max-body-mb", "0.25", "--max-pixels", "1000000", "--max-batch", "16"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    log, ready, running = [], False, False
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True)
    try:
        # start-up is read from the server's own log lines: no polling, no sleeps
        for line in iter(proc.stderr.readline, ""):
            log.append(line)
            ready |= " ready on onnxruntime" in line
            running |= "Uvicorn running on" in line
            if ready and running:
                break
        assert ready and running, "".join(log)
        reader.start()
        yield {"url": f"http://127.0.0.1:{port}", "log": log, "proc": proc}
    finally:
        proc.terminate()
        proc.wait(30)


def test_live_server_logs_limits_and_binds_localhost(live):
    text = "".join(live["log"])
    assert "limits: max body 0.25 MB, max pixels 1,000,000" in text
    assert "http://127.0.0.1:" in text
    assert httpx.get(live["url"] + "/livez").status_code == 200


def test_live_chunked_body_over_the_limit(live):
    response = httpx.post(live["url"] + "/v1/predict", content=chunks(1024 * 1024), timeout=30)
    assert response.status_code == 413 and response.json()["error"]["status"] == 413


def test_load_mixed_good_and_bad(live, files):
    """2,000 requests at concurrency 16: zero 5xx, every good one 200, every bad one its 4xx."""
    good, bomb = files["png"], png_header(1200, 1000)
    kinds = [
        ("good raw", dict(method="POST", url="/v1/predict", content=good), 200, 10),
        ("good multipart", dict(method="POST", url="/v1/predict", files={"file": ("a.png", good, "image/png")}),
         200, 3),
        ("good jpeg", dict(method="POST", url="/v1/predict", content=jpeg(good)), 200, 2),
        ("corrupt", dict(method="POST", url="/v1/predict", content=CORRUPT), 422, 1),
        ("unsupported", dict(method="POST", url="/v1/predict", content=PPM), 415, 1),
        ("too many pixels", dict(method="POST", url="/v1/predict", content=bomb), 413, 1),
        ("too large", dict(method="POST", url="/v1/predict", content=b"\0" * (300 * 1024)), 413, 1),
        ("wrong method", dict(method="GET", url="/v1/predict"), 405, 1),
        ("wrong path", dict(method="POST", url="/v1/nothing", content=good), 404, 1),
    ]
    plan = random.Random(0).choices(range(len(kinds)), weights=[k[3] for k in kinds], k=2000)

    async def run():
        statuses: list[tuple[int, int]] = []
        queue: asyncio.Queue = asyncio.Queue()
        for i in plan:
            queue.put_nowait(i)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=live["url"], limits=limits, timeout=60) as http:
            async def worker():
                while not queue.empty():
                    i = queue.get_nowait()
                    response = await http.request(**kinds[i][1])
                    statuses.append((i, response.status_code))

            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(16))), timeout=300)
        return statuses

    statuses = asyncio.run(run())
    assert len(statuses) == 2000
    assert not [s for _, s in statuses if s >= 500]
    wrong = [(kinds[i][0], s) for i, s in statuses if s != kinds[i][2]]
    assert not wrong, wrong[:10]
    assert live["proc"].poll() is None  # still up
    assert httpx.post(live["url"] + "/v1/predict", content=good).status_code == 200


def test_a_model_that_cannot_load_stops_the_server(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    result = subprocess.run([sys.executable, "-m", "cnnzoo", "serve", str(bad), "--port", str(free_port()),
                             "--backend", "onnxruntime"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert result.returncode == 2
    assert f"cnnzoo serve: error: cannot serve {bad}" in result.stderr and "not a loadable ONNX model" in result.stderr


def test_a_model_refused_is_named_once(tmp_path, capsys):
    """The refusal names the file once: "cannot serve X: unknown model file type", not "cannot serve X: X: ..."."""
    from cnnzoo.cli import main

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["serve", str(notes), "--port", "0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"cnnzoo serve: error: cannot serve {notes}: unknown model file type") and line.count(
        str(notes)) == 1, line


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_half_open_connections_closed_on_either_http_parser(files, monkeypatch, parser):
    """The service runs on uvicorn's httptools protocol when httptools is installed (cnnzoo[serve]), else on h11;
    on both, a connection with half a request head is closed after the idle timeout and a full one is answered."""
    import uvicorn

    from cnnzoo.serving import server_config

    if parser == "h11":
        monkeypatch.setitem(sys.modules, "uvicorn.protocols.http.httptools_impl", None)  # import fails: no httptools
    else:
        pytest.importorskip("httptools")
    limits = Limits(idle_timeout_s=0.5)
    app = create_app(files["onnx"], backend="onnxruntime", limits=limits)
    config = server_config(app, "127.0.0.1", 0, limits, "warning")
    assert parser in config.http.__name__.lower()
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert app.state.service.ready.wait(60)
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        for sent, answered in ((b"GET /livez HTTP/1.1\r\nHost: x\r\n", False),
                               (b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", True)):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(sent)
                received = b""
                while chunk := sock.recv(4096):  # b"" once the server closes; a timeout error if it never does
                    received += chunk
            assert received.startswith(b"HTTP/1.1 200") == answered
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("faster", ["openvino", "onnxruntime"])
def test_plain_export_measured_on_first_serve(files, monkeypatch, faster):
    """A float .onnx without a deploy record, served with backend and precision auto: ONNX Runtime and OpenVINO
    fp32 are timed at start-up and the faster serves (the timing is replaced here, so the choice is known); an
    explicit backend is served as asked, without measuring."""
    import cnnzoo.precision as precision

    timed = []

    def measure_speed(runtime, batch_sizes, budget_s=None):
        timed.append(runtime.backend)
        return {b: 200.0 if runtime.backend == faster else 100.0 for b in batch_sizes}

    monkeypatch.setattr(precision, "measure_speed", measure_speed)
    want = expected(files, files["png"])
    app = create_app(files["onnx"], max_batch=8)
    with TestClient(app) as client:
        assert app.state.service.ready.wait(60), app.state.service.failed
        card = client.get("/v1/model").json()
        assert (card["backend"], card["precision"]) == (faster, "fp32")
        got = client.post("/v1/predict", content=files["png"]).json()["predictions"]
        assert [p["class"] for p in got] == [c for c, _ in want]
        np.testing.assert_allclose([p["probability"] for p in got], [p for _, p in want], atol=1e-4)
    assert set(timed) == {"onnxruntime", "openvino"}
    timed.clear()
    app = create_app(files["onnx"], backend="onnxruntime", max_batch=8)
    with TestClient(app):
        assert app.state.service.ready.wait(60)
    assert app.state.service.runtime.backend == "onnxruntime" and not timed
