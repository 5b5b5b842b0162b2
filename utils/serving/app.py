"""The FastAPI application of ``serve.py``: the endpoints, the JSON errors, the page, and the worker's life.

:func:`create_app` takes a ready :class:`~utils.inference.predictor.Predictor` and
:class:`~utils.serving.options.ServeOptions`. The event loop only reads bodies and awaits futures: decoding
and encoding run in the thread pool, the model in the batcher's one worker thread, so ``/health``
stays quick while the model is busy. Every refusal is JSON ``{"error": ...}`` with its status (400, 413,
415, 422, 503), never a 500 for anything a client sent.

Endpoints: ``GET /`` (the page), ``GET /health``, ``GET /v1/model``, ``POST /v1/segment``, ``/docs``.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Literal

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from utils.inference.predictor import Predictor
from utils.inference.visualize import mix, save_index_png
from utils.serving.batcher import Batcher, QueueFullError
from utils.serving.decode import UploadError, upload_image
from utils.serving.model import ModelRunner, Settings, SettingsError
from utils.serving.options import ServeOptions

RETRY_AFTER_S = 1
JPEG_QUALITY = 90

_BODY_DOC = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
_RESPONSES_DOC = {
    200: {"description": "png: the class-index PNG (palette) at the input's size; overlay: a JPEG blend; "
                         "json: per-class pixel counts; prob: the probability PNG",
          "content": {"image/png": {}, "image/jpeg": {}, "application/json": {}}},
    400: {"description": "a damaged or truncated image, or a malformed body"},
    413: {"description": "a body over --max-upload-mb, or an image over --max-pixels"},
    415: {"description": "not an image, or not sent as multipart field 'image' or an image/* body"},
    422: {"description": "a bad query parameter"},
    503: {"description": "the queue is full (Retry-After)"},
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _busy(message: str) -> JSONResponse:
    return _error(503, f"{message}: retry shortly", {"Retry-After": str(RETRY_AFTER_S)})


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its announced length) passes ``limit`` bytes."""
    too_large = UploadError(413, f"the body is larger than the service takes ({limit / 2**20:g} MiB, "
                            "--max-upload-mb): send a smaller image")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _class_table(mask: np.ndarray, names: list[str]) -> list[dict]:
    """The classes present in ``mask``: id, name, pixel count, share of all pixels."""
    counts = np.bincount(mask.ravel(), minlength=len(names))
    total = mask.size
    return [{"id": index, "name": names[index], "pixels": int(count), "share": count / total}
            for index, count in enumerate(counts.tolist()) if count]


def render(fmt: str, image: np.ndarray, mask: np.ndarray, prob: np.ndarray | None, alpha: float,
           runner: ModelRunner, settings: Settings) -> Response:
    """The response of one segmented image in the requested format."""
    if fmt == "json":
        height, width = mask.shape
        return JSONResponse({"width": width, "height": height,
                             "classes": _class_table(mask, runner.predictor.class_names),
                             "threshold": settings.threshold if runner.binary else None,
                             "slide": settings.slide, "tta": settings.tta})
    if fmt == "png":
        buffer = io.BytesIO()
        save_index_png(mask, buffer, runner.palette)
        return Response(buffer.getvalue(), media_type="image/png")
    if fmt == "prob":
        return Response(cv2.imencode(".png", prob)[1].tobytes(), media_type="image/png")
    blend = mix(image, mask, "blend", alpha, runner.palette)
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(blend, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
    return Response(jpeg.tobytes(), media_type="image/jpeg")


def create_app(predictor: Predictor, options: ServeOptions | None = None) -> FastAPI:
    """The service around ``predictor``; its model worker starts and warms up with the app's lifespan, and
    stops (after the queued requests) when the app shuts down."""
    options = options or ServeOptions()
    runner = ModelRunner(predictor)
    batcher = Batcher(runner.run, options.max_batch, options.batch_wait_ms / 1000, options.max_queue)
    ready = threading.Event()
    page = resources.files("utils.serving").joinpath("page.html").read_text(encoding="utf-8")

    def warm_up() -> None:
        # One full batch through the worker: the first forward pass allocates and picks kernels.
        canvas = np.full((*predictor.input_size, 3), 127, dtype=np.uint8)
        settings = runner.settings(None, None, None)
        try:
            futures = [batcher.submit(settings, canvas) for _ in range(min(options.max_batch, options.max_queue))]
            for future in futures:
                future.result()
        except Exception as exc:  # reported: /health stays 503 and says why
            app.state.warm_up_error = f"{type(exc).__name__}: {exc}"
            print(f"error: warm-up failed: {app.state.warm_up_error}", file=sys.stderr)
            return
        ready.set()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
        yield
        batcher.stop()

    app = FastAPI(title="DeepLabV3+ segmentation", lifespan=lifespan,
                  description="Segment an image with a trained DeepLabV3+ model. The page at / tries it.")
    app.state.batcher, app.state.runner, app.state.ready, app.state.warm_up_error = batcher, runner, ready, None

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'][1:])}: {error['msg']}"
                             for error in exc.errors())
        return _error(422, problems)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}: {exc})")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", summary="200 once the model is loaded and warmed up, else 503")
    async def health() -> JSONResponse:
        if not ready.is_set():
            return _busy(app.state.warm_up_error or "the model is warming up")
        return JSONResponse({"status": "ok", "queued": batcher.queued, "batches": batcher.calls,
                             "images": batcher.served})

    @app.get("/v1/model", summary="The model: classes, palette, task, threshold, input size, backbone, head")
    async def model() -> dict:
        return runner.describe()

    @app.post("/v1/segment", summary="Segment one image", openapi_extra={"requestBody": _BODY_DOC},
              responses=_RESPONSES_DOC)
    async def segment(
        request: Request,
        format: Literal["png", "overlay", "json", "prob"] = Query("png", description="what to return"),
        alpha: float = Query(0.7, ge=0, le=1, description="overlay: weight of the class colours"),
        threshold: float | None = Query(None, gt=0, lt=1, description="binary models: foreground where the "
                                        "probability reaches this (default: the model's)"),
        slide: bool | None = Query(None, description="sliding windows at native resolution (default: the "
                                   "model's: on for models trained on crops)"),
        tta: bool | None = Query(None, description="test-time augmentation: scales and flips (letterbox only)"),
    ) -> Response:
        try:
            settings = runner.settings(threshold, slide, tta, prob=format == "prob")
        except SettingsError as exc:
            return _error(422, str(exc))
        if batcher.queued >= batcher.max_queue:
            return _busy("the queue is full")
        body = await _read_body(request, options.max_upload_bytes)
        image = await run_in_threadpool(upload_image, request.headers.get("content-type"), body, options.max_pixels)
        try:
            future = batcher.submit(settings, image)
        except QueueFullError:
            return _busy("the queue is full")
        except RuntimeError:
            return _busy("the service is shutting down")
        try:
            mask, prob = await asyncio.wrap_future(future)
        except ValueError as exc:
            return _error(422, str(exc))
        return await run_in_threadpool(render, format, image, mask, prob, alpha, runner, settings)

    return app
