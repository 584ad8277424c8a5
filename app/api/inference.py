"""The Hugging Face inference routes: one per task (/classify, /segment, /detect), /models/{model_id}, and
/ for the one served model; beside each, the /health and /info that Hugging Face clients ask for.
Every request goes through `app.api.admission`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app import __version__
from app.api.admission import Admission, answer_headers
from app.api.body import InferenceRequest, parse_request
from app.api.openapi import IMAGE_BODY, INFERENCE_RESPONSES, RENDER_PARAMETER, SIDE_RESPONSES
from app.api.routes import TASK_ROUTES, description, only_model
from app.config import ServerSettings
from app.errors import ShuttingDown
from app.runtime.lifecycle import RETRY_AFTER_DRAINING_S, Lifecycle
from app.runtime.models import ModelManager, ServedModel
from app.runtime.pipeline import Pipeline, RenderedImage, Result
from app.tasks.drawing import FORMAT_BY_MEDIA_TYPE, render_format


class InferenceRoutes:
    def __init__(
        self,
        settings: ServerSettings,
        manager: ModelManager,
        pipeline: Pipeline,
        lifecycle: Lifecycle,
        admission: Admission,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.pipeline = pipeline
        self.lifecycle = lifecycle
        self.admission = admission

    def add_to(self, app: FastAPI) -> None:
        for task, route in TASK_ROUTES.items():
            self._add_task_route(app, route, task)
            self._add_side_routes(app, route, lambda task=task: self.manager.for_task(task))

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
        self._add_task_route(app, "/", "root", lambda: only_model(self.manager))
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
        return endpoint_info(only_model(self.manager))

    def health(self, model: ServedModel) -> JSONResponse:
        if self.lifecycle.draining:
            raise ShuttingDown(RETRY_AFTER_DRAINING_S)
        model.batcher.refuse_if_unavailable()
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

        async def read() -> tuple[InferenceRequest, str | None]:
            parsed = await parse_request(request, self.settings.max_body_bytes, self.pipeline.pool)
            fmt = answer_format(parsed.parameters.pop("render", None), request.headers.get("accept", ""))
            return parsed, fmt

        async def work(parsed: tuple[InferenceRequest, str | None]) -> Result:
            body, fmt = parsed
            return await self.pipeline.run(model, body.image, body.parameters, fmt)

        result = await self.admission.run(request, model, read, lambda parsed: 1, work)
        if isinstance(result, Response):
            return result
        self.admission.record(request, model, [result.phases])
        headers = answer_headers(model, started, result.phases)
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
        **description(model),
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
