"""The FastAPI application: routes, the error contract, request ids and request metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import pipeline, render
from app.auth import BearerAuthMiddleware, TokenChecker, configured_tokens, open_paths
from app.cancellation import ClientDisconnected, unless_disconnected
from app.config import Settings
from app.errors import ApiError
from app.lifecycle import RETRY_AFTER_DRAINING_S, Lifecycle
from app.logs import ACCESS_LOGGER
from app.metrics import Metrics
from app.registry import ModelManager, ServedModel
from app.request_body import parse_request
from app.tasks import TASKS
from app.threads import name_os_thread
from app.worker import QueueFull

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

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
_RENDER_PARAMETER = {
    "name": "render",
    "in": "query",
    "required": False,
    "description": "Answer with the annotated photo in this format instead of JSON",
    "schema": {"type": "string", "enum": ["png", "jpeg"]},
}
_INFERENCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The Hugging Face JSON answer, or the annotated photo with render=png|jpeg",
        "content": {
            "application/json": {},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: {"description": 'Bad image or bad parameter: {"error": "..."}'},
    401: {"description": "An API token is configured and the request has no valid one"},
    404: {"description": "No such model"},
    408: {"description": "The request body did not arrive within the body timeout"},
    413: {"description": "Body or image over the configured limit"},
    429: {"description": "The model's queue is full: retry after the Retry-After header's seconds"},
    503: {
        "description": 'Models are loading ({"error", "estimated_time"}), or the service is shutting '
        "down; Retry-After says when to retry"
    },
    504: {"description": "The request did not finish within the request timeout"},
}


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class RequestContextMiddleware:
    """Request id in and out, in-flight gauge, request duration by route/model/status, one access log line
    per request, and the last-resort 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_access: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or headers.get("x-amzn-trace-id") or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        bytes_in = bytes_out = 0

        async def receive_counting() -> Message:
            nonlocal bytes_in
            message = await receive()
            bytes_in += len(message.get("body", b""))
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started, bytes_out
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1", "replace")),
                ]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
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
            await self.app(scope, receive_counting, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s (request %s)", path, request_id)
            if not response_started:
                state["error"] = "Internal server error"
                response = _error_response(500, {"error": "Internal server error"})
                await response(scope, receive, send_wrapper)
        finally:
            in_flight.dec()
            seconds = time.perf_counter() - started
            model = state.get("model_id", "")
            self.metrics.request_duration.labels(endpoint, model, str(status)).observe(seconds)
            if self.log_access:
                self._log(scope, headers, state, endpoint, status, bytes_in, bytes_out, seconds)

    @staticmethod
    def _log(
        scope: Scope,
        headers: dict[str, str],
        state: dict[str, Any],
        endpoint: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        seconds: float,
    ) -> None:
        """One line per request. Never the body, the query string or any header but the user agent:
        no image bytes and no token can reach the log."""
        if status >= 500:
            level = logging.WARNING
        elif endpoint in _PROBE_PATHS and status < 400:
            level = logging.DEBUG  # probes and scrapes every few seconds would drown the requests
        else:
            level = logging.INFO
        if not access_log.isEnabledFor(level):
            return
        client = scope.get("client")
        fields: dict[str, Any] = {
            "request_id": state["request_id"],
            "method": scope.get("method", ""),
            "route": endpoint,
            "path": scope.get("path", ""),
            "model": state.get("model_id"),
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round(seconds * 1000, 2),
            "client": f"{client[0]}:{client[1]}" if client else None,
            "user_agent": headers.get("user-agent"),
        }
        timings = state.get("timings")
        if timings is not None and timings.seconds:
            fields["phases_ms"] = {phase: round(s * 1000, 2) for phase, s in timings.seconds.items()}
        if "error" in state:
            fields["error"] = state["error"]
        access_log.log(level, "%s %s %d", fields["method"], fields["path"], status, extra={"access": fields})


_PROBE_PATHS = {"/health", "/ready", "/metrics"}
_KNOWN_PATHS = {"/", "/health", "/ready", "/models", "/metrics", "/docs", "/openapi.json"} | {
    spec.route for spec in TASKS.values()
}


def create_app(settings: Settings, manager: ModelManager | None = None) -> FastAPI:
    """The service. Raises TokenFileError when the configured API token file cannot be used."""
    tokens = configured_tokens(settings)
    metrics = manager.metrics if manager is not None else Metrics()
    manager = manager or ModelManager(settings, metrics)
    pool = ThreadPoolExecutor(
        max_workers=settings.decode_threads, thread_name_prefix="decode", initializer=name_os_thread
    )
    lifecycle = Lifecycle()

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
    app.state.lifecycle = lifecycle

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        request.scope["state"]["error"] = exc.message
        return _error_response(exc.status_code, exc.body(), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {
            404: f"Not found: {request.url.path}. See /docs for the routes.",
            405: f"Method {request.method} is not allowed on {request.url.path}.",
        }
        message = messages.get(exc.status_code, str(exc.detail))
        request.scope["state"]["error"] = message
        return _error_response(exc.status_code, {"error": message}, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        request.scope["state"]["error"] = f"Invalid request: {problems}"
        return _error_response(400, {"error": f"Invalid request: {problems}"})

    async def infer(request: Request, get_model: Callable[[], ServedModel]) -> Response:
        started = time.perf_counter()
        model = get_model()
        state = request.scope["state"]
        state["model_id"] = model.id
        timings = state["timings"] = pipeline.Timings()
        deadline = asyncio.timeout(settings.request_timeout_s)
        body_deadline = asyncio.timeout(settings.body_timeout_s)
        parsed = None
        try:
            with lifecycle.accept():
                async with deadline:
                    model.worker.refuse_if_full()  # before reading a body the model has no room for
                    async with body_deadline:
                        parsed = await parse_request(request, settings.max_body_bytes)
                    render_as = _render_request(parsed.parameters, request, settings.render_max_side)
                    with model.worker.admit():
                        result = await unless_disconnected(
                            request.receive,
                            pipeline.run(
                                model,
                                parsed.image,
                                parsed.parameters,
                                pool,
                                settings.max_image_pixels,
                                timings,
                                render_as,
                            ),
                        )
        except ApiError as exc:
            if exc.status_code == 503 and lifecycle.draining:
                metrics.rejected.labels(model.id, "shutting_down").inc()
            raise
        except QueueFull as exc:
            metrics.rejected.labels(model.id, "queue_full").inc()
            raise ApiError(
                429,
                f"Model {model.id} is busy: it already holds {exc.limit} requests. "
                f"Retry after {exc.retry_after_s} s.",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except TimeoutError:
            if parsed is None and (body_deadline.expired() or deadline.expired()):
                metrics.rejected.labels(model.id, "body_timeout").inc()
                limit = min(settings.body_timeout_s, settings.request_timeout_s)
                raise ApiError(
                    408,
                    f"The request body did not arrive within {limit:g} s (MVIT_BODY_TIMEOUT_S).",
                    headers={"Connection": "close"},
                ) from None
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
        if isinstance(result, pipeline.RenderedImage):
            return Response(result.data, media_type=result.media_type, headers=headers)
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
            openapi_extra={"requestBody": _IMAGE_BODY, "parameters": [_RENDER_PARAMETER]},
            responses=_INFERENCE_RESPONSES,
        )

    for spec in TASKS.values():
        add_task_route(spec.route, spec.name)

    @app.post(
        "/models/{model_id:path}",
        summary="Run the model with this id (Hugging Face-style model URL)",
        openapi_extra={"requestBody": _IMAGE_BODY, "parameters": [_RENDER_PARAMETER]},
        responses=_INFERENCE_RESPONSES,
    )
    async def by_model_id(model_id: str, request: Request) -> Response:
        return await infer(request, lambda: manager.get(model_id))

    demo_page = (resources.files("app") / "static" / "index.html").read_bytes()

    @app.get("/", include_in_schema=False)
    async def demo() -> Response:
        """The web demo: pick an image and a task, see the annotated image and the JSON (no CDN, no build)."""
        return Response(demo_page, media_type="text/html; charset=utf-8", headers=_DEMO_PAGE_HEADERS)

    @app.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        summary="Readiness: every model is loaded and warmed up, and not shutting down",
        responses={503: {"description": "Loading, failed, or draining (status says which); Retry-After"}},
    )
    async def ready() -> JSONResponse:
        if lifecycle.draining:
            return JSONResponse(
                {"status": "draining", "error": "The service is shutting down"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_DRAINING_S)},
            )
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

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Outermost last: request context (ids, metrics, access log) > CORS (preflights answer without a
    # token, and 401s carry CORS headers so browser code can read them) > bearer auth > routes.
    if tokens:
        unguarded = open_paths(settings)
        _document_bearer_auth(app, unguarded)
        app.add_middleware(BearerAuthMiddleware, checker=TokenChecker(tokens), open_paths=unguarded)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=[*_EXPOSED_HEADERS],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, log_access=settings.access_log)
    return app


def _render_request(
    parameters: dict[str, Any], request: Request, max_side: int
) -> pipeline.RenderRequest | None:
    """`render=png|jpeg` (query, JSON parameters or form field), or `Accept: image/png|image/jpeg`."""
    fmt = render.render_format(parameters.pop("render", None), request.headers.get("accept", ""))
    return pipeline.RenderRequest(fmt, max_side) if fmt else None


def _document_bearer_auth(app: FastAPI, open_routes: frozenset[str]) -> None:
    """Declare the bearer scheme in the OpenAPI schema, on every route that needs a token, so that /docs'
    Authorize button and generated clients send it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            for path, operations in schema["paths"].items():
                if path in open_routes:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation["responses"].setdefault("401", {"description": "Missing or invalid API token"})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# The demo page loads nothing from elsewhere and may only call this origin.
_DEMO_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

# Response headers browser code may read on a cross-origin response.
_EXPOSED_HEADERS = (
    "X-Request-Id",
    "X-Compute-Time",
    "X-Compute-Type",
    "X-Model-Id",
    "X-Model-Random-Weights",
    "Server-Timing",
    "Retry-After",
)
