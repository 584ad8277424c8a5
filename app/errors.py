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


def unit_interval_param(name: str, value: object) -> float:
    """A request parameter that must be a number in [0, 1] (JSON number or query-string text)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise bad_request(f"Parameter {name!r} must be a number between 0 and 1, got {value!r}.")
    return number
