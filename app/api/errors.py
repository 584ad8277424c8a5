"""Domain errors -> HTTP: the status, the headers, and the `{"error": "..."}` shape every failure uses."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    InvalidInput,
    ModelLoading,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    ServiceError,
    ShuttingDown,
    TooLarge,
    validation_problems,
)

# nginx's status for "the client closed the connection before the answer"; only metrics ever see it.
CLIENT_CLOSED_REQUEST = 499


class HttpError(ServiceError):
    """A failure that only exists over HTTP (a slow body, a missed deadline), with its status."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or {}


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error may quote a caller's text, lone surrogates
    included, which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return AsciiJSONResponse(body, status_code=status, headers=headers)


def to_response(exc: ServiceError) -> JSONResponse:
    """The one place a domain error gets its HTTP status."""
    body: dict[str, Any] = {"error": exc.message}
    headers: dict[str, str] = {}
    if isinstance(exc, HttpError):
        status, headers = exc.status_code, exc.headers
    elif isinstance(exc, InvalidInput):
        status = 400
    elif isinstance(exc, TooLarge):
        status = 413
    elif isinstance(exc, ModelNotFound):
        status = 404
    elif isinstance(exc, QueueFull):
        status, headers = 429, {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, ModelLoading):
        status = 503
        headers = {"Retry-After": str(max(1, round(exc.estimated_time_s)))}
        body["estimated_time"] = exc.estimated_time_s
    elif isinstance(exc, ModelUnavailable):
        status = 503
    elif isinstance(exc, ShuttingDown):
        status, headers = 503, {"Retry-After": str(exc.retry_after_s), "Connection": "close"}
    else:
        status = 500
    return error_response(status, body, headers)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        request.scope["state"]["error"] = exc.message
        return to_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {
            404: f"Not found: {request.url.path}. See /docs for the routes.",
            405: f"Method {request.method} is not allowed on {request.url.path}.",
        }
        message = messages.get(exc.status_code, str(exc.detail))
        request.scope["state"]["error"] = message
        return error_response(exc.status_code, {"error": message}, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = validation_problems(list(exc.errors()))
        request.scope["state"]["error"] = f"Invalid request: {problems}"
        return error_response(400, {"error": f"Invalid request: {problems}"})
