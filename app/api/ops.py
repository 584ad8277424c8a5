"""The operations routes: the web demo page, liveness, readiness, the model list and Prometheus metrics."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.openapi import LIVENESS_RESPONSES
from app.api.peers import HEARTBEAT_S, Peers
from app.api.routes import description
from app.metrics import Metrics
from app.runtime.lifecycle import RETRY_AFTER_DRAINING_S, Lifecycle
from app.runtime.models import ModelManager

# The demo page loads nothing from elsewhere and may only call this origin.
DEMO_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def liveness(manager: ModelManager) -> tuple[int, dict[str, Any]]:
    """(status, body) of `/health`: 503 once a model's batcher has died, so that an orchestrator restarts
    the process (`/v2/health/live` says the same)."""
    failures = manager.failures()
    if failures:
        died = "; ".join(f"model {model}: {failure}" for model, failure in failures.items())
        return 503, {"status": "failed", "error": f"A batcher died ({died}); the service needs a restart."}
    return 200, {"status": "ok"}


def readiness(
    manager: ModelManager, lifecycle: Lifecycle, peers: Peers | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) of `/ready`; the Open Inference Protocol's `/v2/health/ready` says the same.
    With workers (`peers`), ready only when every worker is."""
    status, body, headers = own_readiness(manager, lifecycle)
    if status != 200 or peers is None:
        return status, body, headers
    waiting = peers.not_ready()
    if waiting:
        listed = ", ".join(str(number) for number in waiting)
        error = f"{len(waiting)} of {peers.count} workers not ready (worker {listed}: starting, loading or replaced)"
        body = {"status": "loading", "error": error, "workers_ready": peers.count - len(waiting)}
        return 503, body, {"Retry-After": str(round(HEARTBEAT_S))}
    return status, {**body, "workers_ready": peers.count}, headers


def own_readiness(manager: ModelManager, lifecycle: Lifecycle) -> tuple[int, dict[str, Any], dict[str, str]]:
    """This process's readiness alone."""
    status, body = liveness(manager)
    if status != 200:
        return status, body, {}
    if lifecycle.draining:
        body = {"status": "draining", "error": "The service is shutting down"}
        return 503, body, {"Retry-After": str(RETRY_AFTER_DRAINING_S)}
    if manager.ready:
        return 200, {"status": "ready", "models": list(manager.models)}, {}
    if manager.loading:
        estimate = manager.estimated_time()
        body = {"status": "loading", "error": "Models are loading", "estimated_time": estimate}
        return 503, body, {"Retry-After": str(max(1, round(estimate)))}
    return 503, {"status": "failed", "error": f"Model loading failed: {manager.error}"}, {}


def add_ops_routes(
    app: FastAPI, manager: ModelManager, lifecycle: Lifecycle, metrics: Metrics, peers: Peers | None
) -> None:
    demo_page = (resources.files("app") / "static" / "index.html").read_bytes()

    @app.get("/", include_in_schema=False)
    async def demo() -> Response:
        """The web demo: pick an image and a task, see the annotated image and the JSON (no CDN, no build)."""
        return Response(demo_page, media_type="text/html; charset=utf-8", headers=DEMO_PAGE_HEADERS)

    @app.get(
        "/health",
        summary="Liveness: the process is up and every batcher runs",
        responses=LIVENESS_RESPONSES,
    )
    async def health() -> JSONResponse:
        status, body = liveness(manager)
        return JSONResponse(body, status)

    @app.get(
        "/ready",
        summary="Readiness: every model is loaded and warmed up, and not shutting down",
        responses={503: {"description": "Loading, failed, or draining (status says which); Retry-After"}},
    )
    async def ready() -> JSONResponse:
        status, fields, headers = readiness(manager, lifecycle, peers)
        return JSONResponse(fields, status, headers)

    @app.get("/models", summary="The served models")
    async def list_models() -> list[dict[str, Any]]:
        return [description(model) for model in manager.models.values()]

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
