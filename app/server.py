"""The FastAPI application: routes, the error contract, request ids and request metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import pipeline
from app.cancellation import ClientDisconnected, unless_disconnected
from app.config import Settings
from app.errors import ApiError
from app.metrics import Metrics
from app.registry import ModelManager, ServedModel
from app.request_body import parse_request
from app.tasks import TASKS
from app.worker import QueueFull

log = logging.getLogger(__name__)

# nginx's status for "the client closed the connection before the answer"; only metrics ever see it.
CLIENT_CLOSED_REQUEST = 499

_IMAGE_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "inputs": {
                        "type": "string",
                        "description": "base64 image, or a data:image/...;base64 URL",
                    },
                    "parameters": {"type": "object"},
                    "options": {"type": "object", "description": "accepted and ignored"},
                },
            }
        },
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    },
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": 'Bad image or bad parameter: {"error": "..."}'},
    404: {"description": "No such model"},
    413: {"description": "Body or image over the configured limit"},
    429: {"description": "The model's queue is full: retry after the Retry-After header's seconds"},
    503: {"description": 'Models are loading: {"error", "estimated_time"} and Retry-After'},
    504: {"description": "The request did not finish within the request timeout"},
}


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class RequestContextMiddleware:
    """Request id in and out, in-flight gauge, request duration by route/model/status, last-resort 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or headers.get("x-amzn-trace-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1", "replace")),
                ]
            await send(message)

        path = scope.get("path", "")
        endpoint = (
            path
            if path in _KNOWN_PATHS
            else ("/models/{model_id}" if path.startswith("/models/") else "other")
        )
        in_flight = self.metrics.in_flight.labels(endpoint)
        in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s (request %s)", path, request_id)
            if not response_started:
                response = _error_response(500, {"error": "Internal server error"})
                await response(scope, receive, send_wrapper)
        finally:
            in_flight.dec()
            model = scope["state"].get("model_id", "")
            self.metrics.request_duration.labels(endpoint, model, str(status)).observe(
                time.perf_counter() - started
            )


_KNOWN_PATHS = {"/health", "/ready", "/models", "/metrics", "/docs", "/openapi.json"} | {
    spec.route for spec in TASKS.values()
}


def create_app(settings: Settings, manager: ModelManager | None = None) -> FastAPI:
    metrics = manager.metrics if manager is not None else Metrics()
    manager = manager or ModelManager(settings, metrics)
    pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(manager.load_all())
        app.state.loader = loader
        try:
            yield
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            await manager.close()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="MobileViTv2 inference service",
        description="Hugging Face Inference API-compatible image classification with Apple's MobileViTv2.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status_code, exc.body(), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {
            404: f"Not found: {request.url.path}. See /docs for the routes.",
            405: f"Method {request.method} is not allowed on {request.url.path}.",
        }
        message = messages.get(exc.status_code, str(exc.detail))
        return _error_response(exc.status_code, {"error": message}, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_response(400, {"error": f"Invalid request: {problems}"})

    async def infer(request: Request, get_model: Callable[[], ServedModel]) -> Response:
        started = time.perf_counter()
        model = get_model()
        request.scope["state"]["model_id"] = model.id
        timings = pipeline.Timings()
        deadline = asyncio.timeout(settings.request_timeout_s)
        try:
            with model.worker.admit():
                async with deadline:
                    parsed = await parse_request(request, settings.max_body_bytes)
                    result = await unless_disconnected(
                        request.receive,
                        pipeline.run(
                            model, parsed.image, parsed.parameters, pool, settings.max_image_pixels, timings
                        ),
                    )
        except QueueFull as exc:
            metrics.rejected.labels(model.id, "queue_full").inc()
            raise ApiError(
                429,
                f"Model {model.id} is busy: it already holds {exc.limit} requests. "
                f"Retry after {exc.retry_after_s} s.",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except TimeoutError:
            if not deadline.expired():
                raise
            metrics.rejected.labels(model.id, "timeout").inc()
            raise ApiError(
                504,
                f"The request did not finish within {settings.request_timeout_s:g} s "
                "(MVIT_REQUEST_TIMEOUT_S); its work was dropped.",
            ) from None
        except (ClientDisconnected, ClientDisconnect):
            metrics.rejected.labels(model.id, "client_disconnected").inc()
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; it labels the metrics
        finally:
            for phase, seconds in timings.seconds.items():
                metrics.phase_duration.labels(model.id, phase).observe(seconds)
        headers = {
            "x-compute-time": f"{time.perf_counter() - started:.3f}",
            "x-compute-type": model.backend.device_type,
            "x-model-id": model.id,
            "server-timing": timings.server_timing(),
        }
        if model.model_dir.random_weights:
            headers["x-model-random-weights"] = "true"
        return JSONResponse(result, headers=headers)

    def add_task_route(route: str, task: str) -> None:
        async def endpoint(request: Request) -> Response:
            return await infer(request, lambda: manager.for_task(task))

        app.add_api_route(
            route,
            endpoint,
            methods=["POST"],
            name=task,
            summary=f"{task} with the served {task} model",
            openapi_extra={"requestBody": _IMAGE_BODY},
            responses=_ERROR_RESPONSES,
        )

    for spec in TASKS.values():
        add_task_route(spec.route, spec.name)

    @app.post(
        "/models/{model_id:path}",
        summary="Run the model with this id (Hugging Face-style model URL)",
        openapi_extra={"requestBody": _IMAGE_BODY},
        responses=_ERROR_RESPONSES,
    )
    async def by_model_id(model_id: str, request: Request) -> Response:
        return await infer(request, lambda: manager.get(model_id))

    @app.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: every model is loaded and warmed up")
    async def ready() -> JSONResponse:
        if manager.ready:
            return JSONResponse({"status": "ready", "models": list(manager.models)})
        if manager.loading:
            estimate = manager.estimated_time()
            return JSONResponse(
                {"status": "loading", "error": "Models are loading", "estimated_time": estimate},
                status_code=503,
                headers={"Retry-After": str(max(1, round(estimate)))},
            )
        return JSONResponse({"status": "failed", "error": f"Model loading failed: {manager.error}"}, 503)

    @app.get("/models", summary="The served models")
    async def list_models() -> list[dict[str, Any]]:
        return [model.describe() for model in manager.models.values()]

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
