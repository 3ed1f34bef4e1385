"""The HTTP service: FastAPI + uvicorn over one cnnzoo Runtime (checkpoint, .onnx or OpenVINO .xml).

    POST /v1/predict          one image (multipart field "file", or the raw request body) -> top-k classes
    POST /v1/predict/batch    several images (multipart, any number of file parts up to the limit)
    POST /v1/explain          the CAM overlay of one image (torch backend)
    GET  /v1/model            name, classes, input size, backend, limits
    GET  /livez  /readyz  /healthz     process up / model loaded and warmed up / both
    GET  /                    a small web page: drop an image, see the top-5 classes (and the CAM overlay)

Concurrent requests are micro-batched: the first waiting image opens a batch that closes after ``batch_wait_ms`` or
at ``max_batch`` images, and runs as one call to ``Runtime.logits`` on a single inference thread; each request
gets its own row back, equal to the unbatched prediction. Decoding and preprocessing run on a small thread pool,
so the event loop (and /livez, /readyz) stays responsive while inference is saturated; an explanation is decoded in
the same pool and computed on the inference thread, under the same deadline and in-flight limit.

Every error is a JSON body ``{"error": {"status", "code", "message"}}``; bad input is always a 4xx, never a 500:
body too large 413 (Content-Length, or counted while a chunked body streams in), too many pixels 413, format
outside the allowlist 415, corrupt image 422, too many requests in flight 429 (Retry-After), past the deadline 504.
An oversize body is read and dropped (up to a bound) before its 413, so clients that send the whole body before
reading the answer receive it; a connection without a complete request head for ``idle_timeout_s`` is closed.
Secure defaults: 127.0.0.1, no endpoint loads or fetches a model or URL, optional bearer token (401); a
TorchScript file (a program) is served only with trust_torchscript / --trust-torchscript.

With an .onnx or .xml model nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import http
import importlib.resources
import logging
import os
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from cnnzoo.errors import UserError
from cnnzoo.images import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, UnsupportedFormat, open_image, preprocess
from cnnzoo.options import SERVE_OPTIONS, check_value
from cnnzoo.runtime import default_threads, softmax, top_classes

__all__ = ["Limits", "create_app", "serve", "server_config", "DEFAULT_HOST", "DEFAULT_PORT"]

log = logging.getLogger("cnnzoo.serving")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may cost. Every field is logged at start-up and reported by GET /v1/model.

    Raises:
        UserError: a field outside its range (cnnzoo.options.SERVE_OPTIONS), naming the `cnnzoo serve` option that
            sets it.
    """

    max_body_bytes: int = 10 * MB  # whole request body, multipart framing included (413)
    max_pixels: int = DEFAULT_MAX_PIXELS  # declared pixel count per image, checked before decoding (413)
    max_in_flight: int = 64  # predict/explain requests being served at once; beyond: 429 + Retry-After
    timeout_s: float = 10.0  # deadline of one request from arrival to answer (504)
    max_images: int = 32  # images in one /v1/predict/batch request (413)
    batch_wait_ms: float = 2.0  # how long an open micro-batch waits for more images
    retry_after_s: int = 1  # the Retry-After of a 429
    # a connection with no complete request head for this long is closed: idle keep-alive, or a client that
    # connected and sent nothing or half a head (uvicorn's timeout_keep_alive covers only the wait after a response)
    idle_timeout_s: float = 5.0

    def __post_init__(self):
        _check_options(**asdict(self))

    def describe(self) -> str:
        return (f"max body {self.max_body_bytes / MB:g} MB, max pixels {self.max_pixels:,}, "
                f"max in flight {self.max_in_flight}, deadline {self.timeout_s:g} s, "
                f"max images per batch request {self.max_images}, batch wait {self.batch_wait_ms:g} ms, "
                f"idle connections closed after {self.idle_timeout_s:g} s")


def _check_options(**values) -> None:
    """The service's numeric options (Limits' fields, port, max_batch, topk) against SERVE_OPTIONS; one line each."""
    for name, value in values.items():
        check_value(name, value, SERVE_OPTIONS[name])


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int, close: bool):
        super().__init__(413, f"request body exceeds the limit of {limit:,} bytes",
                         headers={"Connection": "close"} if close else None)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    code = http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status, headers=headers)


async def _drain(receive, budget: int, deadline_s: float) -> bool:
    """Read and drop the rest of a request body, at most ``budget`` bytes for at most ``deadline_s``. True when the
    whole body came in (the connection can then carry the answer and stay open)."""
    try:
        async with asyncio.timeout(deadline_s):
            while budget >= 0:
                message = await receive()
                if message["type"] != "http.request":
                    return False
                budget -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return budget >= 0
    except TimeoutError:
        pass
    return False


class _BodyLimit:
    """ASGI middleware: refuse a body larger than the limit from its Content-Length, and count the bytes of a body
    without one (chunked) as they stream in, failing the read with 413 the moment the limit is passed.

    The refused body is read and dropped first (up to ``drain_bytes``, within ``drain_s``): clients that write the
    whole body before reading the answer (Python's http.client and urllib, curl without Expect) would otherwise see
    the connection reset instead of the 413. A body beyond that bound gets the 413 at once, and the connection
    closed."""

    def __init__(self, app, max_bytes: int, drain_s: float):
        self.app, self.max_bytes, self.drain_s = app, max_bytes, drain_s
        self.drain_bytes = max(2 * max_bytes, 64 * MB)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _error(400, "invalid Content-Length header")(scope, receive, send)
                if declared > self.max_bytes:
                    drained = declared <= self.drain_bytes and await _drain(receive, declared, self.drain_s)
                    response = _error(413, f"request body of {declared:,} bytes exceeds the limit of "
                                           f"{self.max_bytes:,} bytes", None if drained else {"Connection": "close"})
                    return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    more = message.get("more_body", False)
                    drained = not more or await _drain(receive, self.drain_bytes - seen, self.drain_s)
                    raise _BodyTooLarge(self.max_bytes, close=not drained)
            return message

        return await self.app(scope, limited_receive, send)


class _Batcher:
    """Collects single images from concurrent requests into batches for one inference thread.

    A batch closes at ``max_batch`` images, when no more are queued and none is being decoded, or ``wait_s`` after
    it opened. It waits for decodes only when it opens on an idle runtime (the first images of a burst): images that
    queued while the previous batch ran go at once, so under load the runtime never idles for the window. Stacking,
    inference and softmax run on the inference thread, so the event loop only moves futures."""

    def __init__(self, runtime, max_batch: int, wait_s: float):
        self.runtime, self.max_batch, self.wait_s = runtime, max(1, int(max_batch)), wait_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cnnzoo-infer")
        self.batches = self.images = 0  # counters for /v1/model and the tests
        # images still being decoded: an open batch waits for them, and closes at once when there are none, so a
        # lone request never pays the batching window
        self.pending = 0

    def enqueue(self, array: np.ndarray, pending: bool = False) -> asyncio.Future:
        """Queue one image; the future gets its probabilities. ``pending``: it was counted in ``self.pending``."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((array, future))
        if pending:
            self.pending -= 1
        return future

    async def submit(self, array: np.ndarray) -> np.ndarray:
        return await self.enqueue(array)

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        backlog = not self.queue.empty()  # queued while the last batch ran: the runtime would idle in a wait
        items = [await self.queue.get()]
        closes = loop.time() + (0.0 if backlog else self.wait_s)
        while len(items) < self.max_batch:
            try:
                items.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = closes - loop.time()
            if left <= 0 or self.pending <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return [(a, f) for a, f in items if not f.done()]  # requests past their deadline are already answered

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            if not items:
                continue
            try:
                probs = await loop.run_in_executor(self.executor, self._infer, [a for a, _ in items])
            except Exception as err:  # a runtime failure fails this batch's requests, not the service
                log.exception("inference failed on a batch of %d", len(items))
                for _, future in items:
                    if not future.done():
                        future.set_exception(RuntimeError(f"inference failed: {type(err).__name__}"))
                continue
            self.batches, self.images = self.batches + 1, self.images + len(items)
            for (_, future), row in zip(items, probs):
                if not future.done():
                    future.set_result(row)

    def _infer(self, arrays: list[np.ndarray]) -> np.ndarray:
        # one image: a view, not a copy; several: the one copy into the contiguous batch the runtime takes as is
        batch = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
        return softmax(np.asarray(self.runtime.logits(batch)))


def _topk(probs: np.ndarray, classes: list[str], k: int) -> list[dict]:
    index = {name: i for i, name in enumerate(classes)}
    (top,) = top_classes(probs[None], classes, k)
    return [{"class": name, "index": index[name], "probability": p} for name, p in top]


class _Service:
    """The state behind the app: the runtime (loaded in the background), the batcher, the in-flight count."""

    def __init__(self, model, backend: str, max_batch: int, token: str | None, limits: Limits, topk: int,
                 trust_torchscript: bool = False, precision: str = "auto"):
        self.model, self.backend, self.max_batch, self.precision = model, backend, max_batch, precision
        self.trust_torchscript = trust_torchscript
        self.token, self.limits, self.topk = token, limits, topk
        self.runtime = None
        self.ready = threading.Event()  # set once the model is loaded and one warm-up inference passed
        self.failed: str | None = None
        self.in_flight = 0
        # decoding and preprocessing (PIL and numpy release the GIL) in parallel on every CPU this process may use
        self.decoder = ThreadPoolExecutor(default_threads(), thread_name_prefix="cnnzoo-decode")
        self.batcher: _Batcher | None = None
        self.explainer = None
        self.on_failure = None  # called when the model cannot be loaded (serve() stops the server)
        self.warmed = False  # serve() ran the model before binding: loading does not run it again

    def load(self) -> None:
        started = time.perf_counter()
        try:
            if isinstance(self.model, (str, os.PathLike)):
                self.runtime, measured = _open_model(self.model, self.backend, self.precision,
                                                     self.trust_torchscript, self.max_batch)
                if measured:
                    log.info("%s", measured)
            else:
                self.runtime = self.model
            rt = self.runtime
            if not self.warmed:
                _warm_up(rt)
            self.explainer = self._explainer()
            log.info("model %s ready on %s in %.2f s", rt.model_name, rt.backend, time.perf_counter() - started)
        except Exception as err:
            self.failed = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            log.error("model failed to load: %s", self.failed)
            if self.on_failure is not None:
                self.on_failure()
            raise
        finally:
            if self.failed is None and self.runtime is not None:
                self.ready.set()

    def _explainer(self):
        # CAM overlays need the torch network itself: offered only on the torch backend.
        if getattr(self.runtime, "backend", None) != "torch" or getattr(self.runtime, "model", None) is None:
            return None
        explainer = partial(_cam_png, self.runtime)
        try:
            # The first explanation imports captum (seconds, holding the GIL, which stalls the event loop and
            # /livez with it): done here, while loading, not under the first request.
            explainer(np.zeros(self.runtime.input_size, np.float32))
        except Exception as err:  # the service still predicts; /v1/model reports "explain": false
            log.warning("explanations are not available for this model: %s", err)
            return None
        return explainer

    def check_token(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), self.token.encode()):
            raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def decode(self, data: bytes, name: str) -> np.ndarray:
        rt = self.runtime
        if not data:
            raise ImageError(f"{name}: empty upload")
        image = open_image(data, channels=int(rt.input_size[0]), max_pixels=self.limits.max_pixels, name=name)
        return preprocess(image, rt.spec)

    async def predict(self, uploads: list[tuple[str, bytes]], k: int) -> list[list[dict]]:
        loop = asyncio.get_running_loop()
        batcher = self.batcher
        batcher.pending += len(uploads)
        try:
            arrays = await asyncio.gather(*(loop.run_in_executor(self.decoder, self.decode, d, n) for n, d in uploads))
        except BaseException:
            batcher.pending -= len(uploads)
            raise
        # queued synchronously, all at once: a deadline cancelling the gather cancels the futures, which the
        # batcher then skips
        rows = await asyncio.gather(*[batcher.enqueue(a, pending=True) for a in arrays])
        return [_topk(row, self.runtime.classes, k) for row in rows]

    async def explain(self, upload: tuple[str, bytes]) -> str:
        """The CAM overlay of one image. Off the event loop, as predictions are: decoding in the decode pool, the
        explanation on the inference thread, since it hooks the same network the batches run through."""
        loop = asyncio.get_running_loop()
        name, data = upload
        array = await loop.run_in_executor(self.decoder, self.decode, data, name)
        return await loop.run_in_executor(self.batcher.executor, self.explainer, array)


def _open_model(model, backend: str, precision: str, trust_torchscript: bool, max_batch: int):
    """The runtime the service runs ``model`` on, and what was measured to choose it (None when nothing was).

    open_runtime with shares_cpu (the decode pool runs beside the model). A float .onnx without a deploy record
    served with backend and precision auto is measured here, on first serve, as `export --precision auto` would
    at export: ONNX Runtime and OpenVINO fp32 (the same arithmetic: no gate needed), timed interleaved at batch 1
    and ``max_batch``; the faster serves. Reduced precisions are not tried: their gate needs labelled images, which
    a service does not have (`cnnzoo export --precision auto --data DIR` measures them and records the choice)."""
    from cnnzoo.precision import Deployment, Trial, stored_precision, time_interleaved, trials_table
    from cnnzoo.runtime import open_runtime

    opened = partial(open_runtime, model, trust_torchscript=trust_torchscript, shares_cpu=True)
    runtime = opened(backend, precision=precision)
    if (backend, precision, Path(model).suffix.lower()) != ("auto", "auto", ".onnx") or Deployment.of(runtime.card) \
            or stored_precision(runtime.card) != "fp32":
        return runtime, None
    try:
        runtimes = [runtime, opened("openvino" if runtime.backend == "onnxruntime" else "onnxruntime",
                                    precision="fp32")]
    except UserError:  # the other backend is not installed: nothing to choose from
        return runtime, None
    speeds = time_interleaved(runtimes, sorted({1, max_batch}))
    trials = [Trial(rt.backend, "fp32", "onnx", s) for rt, s in zip(runtimes, speeds)]
    chosen = max(trials, key=lambda t: t.score)
    note = (f"{model} has no deploy record: fp32 measured on this machine, serving {chosen.backend} (reduced "
            f"precisions need labelled images to pass their gate: cnnzoo export --precision auto --data DIR)\n"
            + trials_table(trials, chosen))
    return runtimes[trials.index(chosen)], note


def _warm_up(runtime) -> None:
    """One inference on a grey image through the model's own preprocessing, before the service says it is ready:
    first-run allocations and JIT happen here, and a model the service could not run (a card whose input size the
    network cannot take, logits that are not one finite row per image and class) is refused in one line instead
    of answering 500 to every request."""
    from PIL import Image

    c, h, w = runtime.input_size
    grey = Image.new("L" if c == 1 else "RGB", (w, h), 128)
    try:
        logits = np.asarray(runtime.logits(preprocess(grey, runtime.spec)[None]))
    except UserError:
        raise
    except Exception as err:  # torch's "output size is too small", an ONNX shape error, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"the model fails on its own input size {c}x{h}x{w}: {reason}") from None
    if logits.shape != (1, len(runtime.classes)):
        raise UserError(f"the model gives logits of shape {logits.shape} for one image, its card names "
                        f"{len(runtime.classes)} classes")
    if not np.isfinite(logits).all():
        raise UserError("the model's logits on a grey test image are not finite (NaN or inf)")


def _cam_png(runtime, array: np.ndarray) -> str:
    """The class activation map of the top class blended over the network's input (a preprocessed C x H x W
    array), as a data: URL.

    CAM proper for networks ending in global average pooling + one linear layer, Grad-CAM for the others."""
    import io

    from PIL import Image

    from cnnzoo.explanation import explain

    try:
        result = explain(runtime.model, array, method="cam")
    except UserError:  # not a GAP + linear head
        result = explain(runtime.model, array, method="gradcam")
    shown = np.clip(result.image, 0, 1)
    shown = np.repeat(shown, 3, axis=2) if shown.shape[2] == 1 else shown
    heat = np.clip(result.heatmap, 0, 1)[..., None]
    colour = np.concatenate([heat, np.zeros_like(heat), 1.0 - heat], 2)  # red where the network looks, blue elsewhere
    blended = Image.fromarray((255 * (0.55 * shown + 0.45 * colour)).astype(np.uint8))
    side = max(blended.size)
    if side < 224:  # small inputs (32 x 32) are shown enlarged
        scale = 224 / side
        size = (round(blended.width * scale), round(blended.height * scale))
        blended = blended.resize(size, Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    blended.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


_IMAGE_STATUS = ((ImageTooLarge, 413), (UnsupportedFormat, 415), (ImageError, 422), (UserError, 400))


async def _read_uploads(request: Request, limits: Limits, many: bool) -> list[tuple[str, bytes]]:
    """The image(s) of a request: multipart file parts, or (single image) the raw body."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if many:
            raise HTTPException(415, "send several images as multipart/form-data file parts (field 'files')")
        return [("<request body>", await request.body())]
    try:
        form = await request.form(max_files=limits.max_images if many else 1, max_fields=16)
    except HTTPException as err:  # starlette's 400, raised at the first file part past max_files
        if not str(err.detail).startswith("Too many files"):
            raise
        if many:
            raise HTTPException(413, f"more than {limits.max_images} images in one request (--max-images)") from None
        raise HTTPException(422, "/v1/predict takes one image: send several to /v1/predict/batch") from None
    uploads = [(v.filename or k, await v.read()) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    await form.close()
    if not uploads:
        field = "images as file parts named 'files'" if many else "image as field 'file'"
        raise HTTPException(422, f"the multipart form has no file part (send the {field})")
    return uploads


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # a bug of ours: logged, never shown
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error")


def create_app(
    model,
    backend: str = "auto",
    max_batch: int = 16,
    token: str | None = None,
    limits: Limits | None = None,
    topk: int = 5,
    trust_torchscript: bool = False,
    precision: str = "auto",
) -> FastAPI:
    """The service as an ASGI app.

    Args:
        model: a checkpoint, .onnx or .xml path (opened with cnnzoo.runtime.open_runtime at start-up, in the
            background: /livez answers at once, /readyz once it is loaded and warmed up), or a Runtime object.
        backend: "auto", "torch", "onnxruntime" or "openvino".
        max_batch: the most images one inference call batches together.
        token: when set, /v1/* needs ``Authorization: Bearer <token>`` (401 otherwise).
        limits: request limits (defaults: Limits()).
        topk: classes returned when a request does not ask (?topk=N).
        trust_torchscript: accept a TorchScript file, a program that runs code when loaded (see open_runtime).
        precision: "auto" (the export's recorded choice; a float .onnx without one, with backend "auto" too, is
            measured at start on ONNX Runtime and OpenVINO fp32: see _open_model), "fp32", "bf16" or "int8".

    Raises:
        UserError: max_batch or topk below 1 (limits are checked when a Limits is made).
    """
    _check_options(max_batch=max_batch, topk=topk)
    limits = limits or Limits()
    service = _Service(model, backend, max_batch, token, limits, topk, trust_torchscript, precision)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(None, service.load)
        loading.add_done_callback(lambda f: f.exception())  # the failure is logged and served by /readyz
        service.batcher = _Batcher(_LazyRuntime(service), max_batch, limits.batch_wait_ms / 1000)
        worker = asyncio.create_task(service.batcher.run())
        try:
            yield
        finally:
            worker.cancel()
            service.decoder.shutdown(wait=False, cancel_futures=True)
            service.batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="cnnzoo", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes, drain_s=limits.timeout_s)
    _handlers(app)
    page = importlib.resources.files("cnnzoo").joinpath("static/index.html").read_text(encoding="utf-8")

    def require_ready() -> None:
        if not service.ready.is_set():
            raise HTTPException(503, service.failed or "the model is still loading", headers={"Retry-After": "1"})

    async def guarded(request: Request, work):
        service.check_token(request)
        require_ready()
        if service.in_flight >= limits.max_in_flight:
            raise HTTPException(429, f"more than {limits.max_in_flight} requests in flight; retry shortly",
                                headers={"Retry-After": str(limits.retry_after_s)})
        service.in_flight += 1
        try:
            async with asyncio.timeout(limits.timeout_s):
                return await work()
        except TimeoutError:
            raise HTTPException(504, f"no answer within the deadline of {limits.timeout_s:g} s") from None
        except tuple(cls for cls, _ in _IMAGE_STATUS) as err:
            status = next(code for cls, code in _IMAGE_STATUS if isinstance(err, cls))
            raise HTTPException(status, str(err)) from None
        finally:
            service.in_flight -= 1

    def check_k(k: int | None) -> int:
        k = service.topk if k is None else k
        if k < 1:
            raise HTTPException(422, f"topk must be >= 1, got {k}")
        return k  # above the class count: every class, as `cnnzoo predict` gives (the default 5 of a 3-class model)

    @app.post("/v1/predict")
    async def predict(request: Request, topk: int | None = None):
        async def work():
            uploads = await _read_uploads(request, limits, many=False)
            (result,) = await service.predict(uploads, check_k(topk))
            return {"model": service.runtime.model_name, "backend": service.runtime.backend, "predictions": result}

        return await guarded(request, work)

    @app.post("/v1/predict/batch")
    async def predict_batch(request: Request, topk: int | None = None):
        async def work():
            uploads = await _read_uploads(request, limits, many=True)
            results = await service.predict(uploads, check_k(topk))
            return {"model": service.runtime.model_name, "backend": service.runtime.backend,
                    "results": [{"filename": n, "predictions": r} for (n, _), r in zip(uploads, results)]}

        return await guarded(request, work)

    @app.post("/v1/explain")
    async def explain(request: Request):
        async def work():
            if service.explainer is None:
                raise HTTPException(404, "explanations need the torch backend")
            (upload,) = await _read_uploads(request, limits, many=False)
            overlay = await service.explain(upload)
            return {"model": service.runtime.model_name, "overlay": overlay}

        return await guarded(request, work)

    @app.get("/v1/model")
    async def model_card(request: Request):
        service.check_token(request)
        require_ready()
        rt = service.runtime
        return {"name": rt.model_name, "backend": rt.backend, "precision": getattr(rt, "precision", "fp32"),
                "classes": list(rt.classes),
                "num_classes": len(rt.classes), "input_size": list(rt.input_size), "input": rt.spec.to_dict(),
                "max_batch": max_batch,
                "explain": service.explainer is not None, "limits": asdict(limits),
                "batches": service.batcher.batches, "images": service.batcher.images}

    @app.get("/livez")
    async def livez():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        if not service.ready.is_set():
            return _error(503, service.failed or "the model is still loading", {"Retry-After": "1"})
        return {"status": "ready", "model": service.runtime.model_name, "backend": service.runtime.backend}

    @app.get("/healthz")
    async def healthz():
        return await readyz()

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                                                      "style-src 'self' 'unsafe-inline'; "
                                                                      "script-src 'self' 'unsafe-inline'"})

    return app


class _LazyRuntime:
    """The batcher starts before the model has loaded; requests only reach it once service.ready is set."""

    def __init__(self, service: _Service):
        self.service = service

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.service.runtime.logits(batch)


def serve(
    model: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    backend: str = "auto",
    max_batch: int = 16,
    token: str | None = None,
    limits: Limits | None = None,
    log_level: str = "info",
    trust_torchscript: bool = False,
    precision: str = "auto",
) -> None:
    """Run the service with uvicorn until interrupted; the effective limits are logged first.

    The model is opened and run once on a test image before the port is bound, so a model the service could not
    serve stops `cnnzoo serve` with one line instead of a server that answers 500.

    Raises:
        UserError: an option out of range, or a model that cannot be opened or run (see create_app, Limits).
    """
    import uvicorn

    _check_options(port=port, max_batch=max_batch)
    if not Path(model).exists():
        raise UserError(f"no such model file: {model}")
    limits = limits or Limits()
    try:  # before binding, and before the start-up lines: a model it cannot serve is the one line printed
        runtime, measured = _open_model(model, backend, precision, trust_torchscript, max_batch)
        _warm_up(runtime)
    except UserError as err:
        raise _cannot_serve(model, err) from None
    _check_bindable(host, port)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("cnnzoo serve %s on http://%s:%d (backend %s, precision %s, max batch %d, token %s)", model, host, port,
             runtime.backend, runtime.precision, max_batch, "required" if token else "off")
    if measured:
        log.info("%s", measured)
    log.info("limits: %s", limits.describe())
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines%s", host, "" if token else " without a token")
    app = create_app(runtime, backend=backend, max_batch=max_batch, token=token, limits=limits)
    server = uvicorn.Server(server_config(app, host, port, limits, log_level))
    service = app.state.service
    service.warmed = True
    # the model loads in the background (so /livez answers at once); a model that cannot load stops the server
    service.on_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if service.failed:
        raise _cannot_serve(model, service.failed)


def _cannot_serve(model, reason) -> UserError:
    # the runtime's messages often start with the file's path: named once
    return UserError(f"cannot serve {model}: {str(reason).removeprefix(f'{model}: ')}")


class _HeadTimeout:
    """Mixed into uvicorn's HTTP/1.1 protocol: close a connection that has not sent a complete request head within
    ``timeout_keep_alive`` of connecting or of its last answer. uvicorn itself arms that timer only after an answer
    and cancels it on any byte received: a client that connects and sends nothing, or half a request head
    (slowloris), would hold its connection forever. While a request is being served its deadline governs."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

    def _head_timeout(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no request being served: idle or half-open
            self.timeout_keep_alive_handler()


def _head_timeout_protocol():
    """uvicorn's protocol on httptools (its C parser; `pip install cnnzoo[serve]`) when importable, else on h11
    (pure Python): the parser is a fixed cost of every request, on the cores the decoders and inference need."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return type("HeadTimeoutHttpTools", (_HeadTimeout, HttpToolsProtocol), {})
    except ImportError:
        pass

    from uvicorn.protocols.http.h11_impl import H11Protocol

    return type("HeadTimeoutH11", (_HeadTimeout, H11Protocol), {})


def _check_bindable(host: str, port: int) -> None:
    """Bind and release the service's address before uvicorn starts: a port in use or an address that is not this
    machine's is then one line, where uvicorn would log it after its start-up lines and exit with status 3. (uvicorn
    binds again at once; handing it our socket would also silence its "running on" line.)"""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a closed server's port is free
        try:
            sock.bind(address)
        except OSError as err:
            why = "the port is in use (choose another with --port)" if err.errno == errno.EADDRINUSE else err.strerror
            raise UserError(f"cannot listen on {host}:{port}: {why}") from None


def server_config(app, host: str, port: int, limits: Limits, log_level: str = "info"):
    """The uvicorn configuration `serve` runs ``app`` with (idle and half-open connections closed after
    ``limits.idle_timeout_s``); tests run live servers with it too."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
                          http=_head_timeout_protocol(), timeout_keep_alive=limits.idle_timeout_s)
