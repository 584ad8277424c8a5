"""The inference routes: one per task (/classify, /segment, /detect), /models/{model_id}, and / for the one
served model; beside each, the /health and /info that Hugging Face clients ask for.

A request is refused before its body is read when its model is full, reads its body within the body
timeout, holds one of its model's places and one drain count until answered, and is dropped when its
client goes away or its deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from app import __version__
from app.api.body import parse_request
from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.api.errors import CLIENT_CLOSED_REQUEST, HttpError
from app.api.openapi import IMAGE_BODY, INFERENCE_RESPONSES, RENDER_PARAMETER, SIDE_RESPONSES
from app.config import Settings
from app.errors import QueueFull, ShuttingDown
from app.metrics import Metrics
from app.runtime.drain import RETRY_AFTER_DRAINING_S, Lifecycle
from app.runtime.models import ModelManager, ServedModel
from app.runtime.pipeline import Pipeline, RenderedImage
from app.tasks import TASKS
from app.tasks.drawing import FORMAT_BY_MEDIA_TYPE, render_format


class InferenceRoutes:
    def __init__(
        self,
        settings: Settings,
        manager: ModelManager,
        pipeline: Pipeline,
        lifecycle: Lifecycle,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.pipeline = pipeline
        self.lifecycle = lifecycle
        self.metrics = metrics

    def add_to(self, app: FastAPI) -> None:
        for task in TASKS.values():
            self._add_task_route(app, task.route, task.name)
            self._add_side_routes(app, task.route, lambda name=task.name: self.manager.for_task(name))

        @app.post(
            "/models/{model_id:path}",
            summary="Run the model with this id (Hugging Face-style model URL)",
            openapi_extra={"requestBody": IMAGE_BODY, "parameters": [RENDER_PARAMETER]},
            responses=INFERENCE_RESPONSES,
        )
        async def by_model_id(model_id: str, request: Request) -> Response:
            return await self.infer(request, lambda: self.manager.get(model_id))

        @app.get(
            "/models/{model_id:path}/health",
            summary="Health of the model with this id",
            responses=SIDE_RESPONSES,
        )
        async def model_health(model_id: str) -> JSONResponse:
            return self.health(self.manager.get(model_id))

        @app.get(
            "/models/{model_id:path}/info", summary="What the model with this id is", responses=SIDE_RESPONSES
        )
        async def model_info(model_id: str) -> dict[str, Any]:
            return endpoint_info(self.manager.get(model_id))

        # The endpoint root, as on Inference Endpoints: POST / runs the one served model, GET /info says
        # what is served; GET /health stays the service's liveness (app.api.ops).
        self._add_task_route(app, "/", "root", self.manager.only)
        app.add_api_route(
            "/info", self.root_info, methods=["GET"], summary="What is served", responses=SIDE_RESPONSES
        )

    def _add_side_routes(self, app: FastAPI, route: str, find: Callable[[], ServedModel]) -> None:
        """`GET {route}/health` and `{route}/info`, where Hugging Face clients look for them
        (`InferenceClient(model=URL).health_check()`, `.get_endpoint_info()`)."""

        async def health() -> JSONResponse:
            return self.health(find())

        async def info() -> dict[str, Any]:
            return endpoint_info(find())

        summary = f"{route}: its model's"
        app.add_api_route(
            f"{route}/health", health, methods=["GET"], summary=f"{summary} health", responses=SIDE_RESPONSES
        )
        app.add_api_route(
            f"{route}/info", info, methods=["GET"], summary=f"{summary} description", responses=SIDE_RESPONSES
        )

    async def root_info(self) -> dict[str, Any]:
        """The one model's info, or every model's when there are several."""
        if not self.manager.loading and len(self.manager.models) != 1:
            return {
                "version": __version__,
                "models": [endpoint_info(m) for m in self.manager.models.values()],
            }
        return endpoint_info(self.manager.only())

    def health(self, model: ServedModel) -> JSONResponse:
        if self.lifecycle.draining:
            raise ShuttingDown(RETRY_AFTER_DRAINING_S)
        return JSONResponse({"status": "ok", "model": model.id})

    def _add_task_route(
        self, app: FastAPI, route: str, task: str, find: Callable[[], ServedModel] | None = None
    ) -> None:
        async def endpoint(request: Request) -> Response:
            return await self.infer(request, find or (lambda: self.manager.for_task(task)))

        app.add_api_route(
            route,
            endpoint,
            methods=["POST"],
            name=task,
            summary=f"{task} with the served {task} model" if find is None else "Run the one served model",
            openapi_extra={"requestBody": IMAGE_BODY, "parameters": [RENDER_PARAMETER]},
            responses=INFERENCE_RESPONSES,
        )

    async def infer(self, request: Request, find: Callable[[], ServedModel]) -> Response:
        started = time.perf_counter()
        model = find()
        settings = self.settings
        state = request.scope["state"]
        state["model_id"] = model.id
        deadline = asyncio.timeout(settings.request_timeout_s)
        body_deadline = asyncio.timeout(settings.body_timeout_s)
        parsed = None
        try:
            with self.lifecycle.accept():
                async with deadline:
                    model.batcher.refuse_if_full()  # before reading a body the model has no room for
                    async with body_deadline:
                        parsed = await parse_request(request, settings.max_body_bytes)
                    fmt = answer_format(
                        parsed.parameters.pop("render", None), request.headers.get("accept", "")
                    )
                    with model.batcher.admit():
                        result = await unless_disconnected(
                            request.receive, self.pipeline.run(model, parsed.image, parsed.parameters, fmt)
                        )
        except ShuttingDown:
            self.metrics.rejected.labels(model.id, "shutting_down").inc()
            raise
        except QueueFull:
            self.metrics.rejected.labels(model.id, "queue_full").inc()
            raise
        except TimeoutError:
            if parsed is None and (body_deadline.expired() or deadline.expired()):
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
        state["phases"] = result.phases
        for phase, seconds in result.phases.items():
            self.metrics.phase_duration.labels(model.id, phase).observe(seconds)
        headers = {
            "x-compute-time": f"{time.perf_counter() - started:.3f}",
            "x-compute-type": model.backend.device_type,
            "x-model-id": model.id,
            "x-preprocessing": model.profile,
            "server-timing": server_timing(result.phases),
        }
        if model.model_dir.random_weights:
            headers["x-model-random-weights"] = "true"
        if isinstance(result.answer, RenderedImage):
            return Response(result.answer.data, media_type=result.answer.media_type, headers=headers)
        return JSONResponse(result.answer, headers=headers)


def endpoint_info(model: ServedModel) -> dict[str, Any]:
    """What a model is, with the keys Hugging Face's text-generation-inference answers `/info` with."""
    return {
        "model_id": model.id,
        "model_pipeline_tag": model.task.name,
        "model_device_type": model.backend.device_type,
        "max_batch_size": model.batcher.max_batch_size,
        "version": __version__,
        **model.describe(),
    }


def answer_format(render: object, accept: str) -> str | None:
    """The annotated image's format, from `render=png|jpeg` or an Accept header that prefers an image to
    JSON (media types with q=0 excluded); None for the default JSON answer."""
    if render is not None:
        return render_format(render)
    wanted = []
    for part in accept.split(","):
        media, *options = (item.strip().lower() for item in part.split(";"))
        if not any(option.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for option in options):
            wanted.append(media)
    if "application/json" in wanted:
        return None
    return next((FORMAT_BY_MEDIA_TYPE[media] for media in wanted if media in FORMAT_BY_MEDIA_TYPE), None)


def server_timing(phases: dict[str, float]) -> str:
    """The `Server-Timing` header value (milliseconds), readable by browsers' network panels."""
    return ", ".join(f"{phase};dur={seconds * 1000:.1f}" for phase, seconds in phases.items())
