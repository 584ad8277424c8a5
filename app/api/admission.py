"""Admission: what every inference request goes through, whatever its protocol.

A request is refused before its body is read when its model is full, reads its body within the body
timeout, holds one of its model's places per image and one drain count until answered, and is dropped
when its client goes away or its deadline passes. The Hugging Face routes and the Open Inference Protocol
routes differ only in how they read the body and write the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.api.errors import CLIENT_CLOSED_REQUEST, HttpError
from app.config import ServerSettings
from app.errors import ModelUnavailable, QueueFull, ShuttingDown
from app.metrics import Metrics
from app.runtime.lifecycle import Lifecycle
from app.runtime.models import ServedModel

Parsed = TypeVar("Parsed")
Answered = TypeVar("Answered")


class Admission:
    def __init__(self, settings: ServerSettings, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics

    async def run(
        self,
        request: Request,
        model: ServedModel,
        read: Callable[[], Awaitable[Parsed]],
        places: Callable[[Parsed], int],
        work: Callable[[Parsed], Awaitable[Answered]],
    ) -> Answered | Response:
        """`read()` the body, hold `places(parsed)` places, `work(parsed)`; the answer, or an empty 499
        response when the client went away. Overload, drain and deadlines raise their ServiceErrors."""
        settings = self.settings
        request.scope["state"]["model_id"] = model.id
        deadline = asyncio.timeout(settings.request_timeout_s)
        body_deadline = asyncio.timeout(settings.body_timeout_s)
        parsed_any = False
        try:
            with self.lifecycle.accept():
                async with deadline:
                    model.batcher.refuse_if_unavailable()
                    model.batcher.refuse_if_full()  # before reading a body the model has no room for
                    async with body_deadline:
                        parsed = await read()
                    parsed_any = True
                    with model.batcher.admit(places(parsed)):
                        return await unless_disconnected(request.receive, work(parsed))
        except ShuttingDown:
            self.metrics.rejected.labels(model.id, "shutting_down").inc()
            raise
        except QueueFull:
            self.metrics.rejected.labels(model.id, "queue_full").inc()
            raise
        except ModelUnavailable:
            self.metrics.rejected.labels(model.id, "unavailable").inc()
            raise
        except TimeoutError:
            if not parsed_any and (body_deadline.expired() or deadline.expired()):
                self.metrics.rejected.labels(model.id, "body_timeout").inc()
                limit, setting = min(
                    (settings.body_timeout_s, "MVIT_BODY_TIMEOUT_S"),
                    (settings.request_timeout_s, "MVIT_REQUEST_TIMEOUT_S"),
                )
                raise HttpError(
                    408,
                    f"The request body did not arrive within {limit:g} s ({setting}).",
                    headers={"Connection": "close"},
                ) from None
            if not deadline.expired():
                raise
            self.metrics.rejected.labels(model.id, "timeout").inc()
            raise HttpError(
                504,
                f"The request did not finish within {settings.request_timeout_s:g} s "
                "(MVIT_REQUEST_TIMEOUT_S); its work was dropped.",
            ) from None
        except (ClientDisconnected, ClientDisconnect):
            self.metrics.rejected.labels(model.id, "client_disconnected").inc()
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; it labels the metrics

    def record(
        self, request: Request, model: ServedModel, each_image_phases: Iterable[dict[str, float]]
    ) -> dict[str, float]:
        """Phase metrics for every image; returns each phase's longest, which the access log and the
        `server-timing` header get."""
        longest: dict[str, float] = {}
        for phases in each_image_phases:
            for phase, seconds in phases.items():
                self.metrics.phase_duration.labels(model.id, phase).observe(seconds)
                longest[phase] = max(seconds, longest.get(phase, 0.0))
        request.scope["state"]["phases"] = longest
        return longest


def answer_headers(model: ServedModel, started: float, phases: dict[str, float]) -> dict[str, str]:
    """The headers every inference answer carries."""
    headers = {
        "x-compute-time": f"{time.perf_counter() - started:.3f}",
        "x-compute-type": model.backend.device_type,
        "x-model-id": model.id,
        "x-preprocessing": model.profile,
        "server-timing": server_timing(phases),
    }
    if model.model_dir.random_weights:
        headers["x-model-random-weights"] = "true"
    return headers


def server_timing(phases: dict[str, float]) -> str:
    """The `Server-Timing` header value (milliseconds), readable by browsers' network panels."""
    return ", ".join(f"{phase};dur={seconds * 1000:.1f}" for phase, seconds in phases.items())
