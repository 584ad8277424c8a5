"""Domain errors. They say what went wrong; `app.api.errors` alone decides the HTTP status."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A failure the caller should see, with a message written for them."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """A bad image, body or parameter."""


class TooLarge(ServiceError):
    """A body or image over a configured limit."""


class ModelNotFound(ServiceError):
    """No served model has that id, or none serves that task."""


class ModelLoading(ServiceError):
    """The model asked for is not loaded yet."""

    def __init__(self, message: str, estimated_time_s: float) -> None:
        super().__init__(message)
        self.estimated_time_s = estimated_time_s


class QueueFull(ServiceError):
    """The model's queue has no room: it holds at most `limit` images (one per HF request; an Open
    Inference Protocol request holds one per image)."""

    def __init__(self, model: str, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"Model {model} is busy: its queue of {limit} images is full. Retry after {retry_after_s} s."
        )
        self.limit = limit
        self.retry_after_s = retry_after_s


class ModelUnavailable(ServiceError):
    """The model cannot serve until the service restarts: its batching loop died (`failure` says why)."""

    def __init__(self, model: str, failure: str) -> None:
        super().__init__(
            f"Model {model} cannot serve: its batcher stopped after an internal error ({clip(failure, 200)}). "
            "The service needs a restart; its /health says so too."
        )
        self.failure = failure


class ShuttingDown(ServiceError):
    """The service is draining and takes no new work."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("The service is shutting down and takes no new requests; retry in a few seconds.")
        self.retry_after_s = retry_after_s


class CheckpointError(Exception):
    """A model folder that is missing, incomplete or not a MobileViTv2 checkpoint (start-up and tools)."""


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def shown(value: object, limit: int = 60) -> str:
    """`repr(value)` for an error message, cut short: a caller's megabyte-long value is not echoed back."""
    return clip(repr(value), limit)


def unit_interval_param(name: str, value: object) -> float:
    """A request parameter that must be a number in [0, 1] (JSON number or query-string text)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        number = float("nan")
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise InvalidInput(f"Parameter {shown(name)} must be a number between 0 and 1, got {shown(value)}.")
    return number


def validation_problems(errors: list[Any]) -> str:
    """Pydantic's validation errors as one line: `field.path: message; ...`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in errors)
