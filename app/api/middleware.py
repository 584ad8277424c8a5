"""Request context: request ids in and out, request metrics, one access log line per request, the last-resort 500."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.api.routes import TASK_ROUTES
from app.logs import ACCESS_LOGGER
from app.metrics import Metrics

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)


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
        endpoint = route_label(path)
        in_flight = self.metrics.in_flight.labels(endpoint)
        in_flight.inc()
        try:
            await self.app(scope, receive_counting, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s (request %s)", path, request_id)
            if not response_started:
                state["error"] = "Internal server error"
                response = error_response(500, {"error": "Internal server error"})
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
        if endpoint in _PROBE_PATHS and (status < 400 or status == 503):
            # Probes and scrapes every few seconds would drown the requests. A probe's 503 is its normal
            # answer while models load (a load that fails logs its own error).
            level = logging.DEBUG
        elif status >= 500:
            level = logging.WARNING
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
        phases = state.get("phases")
        if phases:
            fields["phases_ms"] = {phase: round(s * 1000, 2) for phase, s in phases.items()}
        if "error" in state:
            fields["error"] = state["error"]
        access_log.log(level, "%s %s %d", fields["method"], fields["path"], status, extra={"access": fields})


def route_label(path: str) -> str:
    """The path as a metrics label: known paths as they are, model ids replaced, anything else "other"
    (a label per unknown path would let callers grow the metrics without bound)."""
    if path in _KNOWN_PATHS:
        return path
    if path.startswith("/models/"):
        return "/models/{model_id}"
    if path.startswith("/v2/models/"):
        for action in ("infer", "ready"):
            if path.endswith(f"/{action}"):
                return f"/v2/models/{{name}}/{action}"
        return "/v2/models/{name}"
    return "other"


_PROBE_PATHS = {"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"} | {
    f"{route}/health" for route in TASK_ROUTES.values()
}
_KNOWN_PATHS = (
    {"/", "/health", "/ready", "/info", "/models", "/metrics", "/docs", "/openapi.json", "/v2"}
    | _PROBE_PATHS
    | {path for route in TASK_ROUTES.values() for path in (route, f"{route}/info")}
)
