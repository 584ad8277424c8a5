"""The one exception type the HTTP layer turns into `{"error": ...}` responses."""

from __future__ import annotations


class ApiError(Exception):
    """A failure the caller should see: an HTTP status, a human-readable message, optional extras."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, object]:
        return {"error": self.message, **self.extra}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def too_large(message: str) -> ApiError:
    return ApiError(413, message)
