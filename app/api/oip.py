"""The Open Inference Protocol (KServe v2, the protocol Triton speaks) REST routes, beside the Hugging Face
ones: the same models, the same batcher, admission, auth, metrics, limits and drain.

`POST /v2/models/{name}/infer` takes a BYTES tensor `image` of N encoded image files; the N images go
through the batcher together and the answer is one tensor per output with the images on axis 0 (the
outputs of each task: `Task.tensor_outputs`, also in the model metadata).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app import __version__
from app.api.admission import Admission, answer_headers
from app.api.body import parse_off_loop, read_body
from app.api.oip_body import (
    BINARY_EXTENSION,
    DATATYPES,
    HEADER_LENGTH,
    INPUT_NAME,
    InferRequest,
    check_outputs,
    encode_infer_response,
    parse_infer_request,
    stack,
    tensor_metadata,
)
from app.api.openapi import (
    LIVENESS_RESPONSES,
    OIP_INFER_BODY,
    OIP_INFER_RESPONSES,
    OIP_READY_RESPONSES,
    SIDE_RESPONSES,
)
from app.api.ops import liveness, readiness
from app.api.peers import Peers
from app.errors import InvalidInput, ModelNotFound, ShuttingDown, TooLarge, shown
from app.runtime.lifecycle import RETRY_AFTER_DRAINING_S, Lifecycle
from app.runtime.models import ModelManager, ServedModel
from app.runtime.pipeline import Pipeline, Result

SERVER_NAME = "mobilevitv2-serve"
MODEL_VERSION = "1"  # a served model has one version: the folder it was loaded from
TAGS = ["Open Inference Protocol (v2)"]


class OipRoutes:
    def __init__(
        self,
        manager: ModelManager,
        pipeline: Pipeline,
        lifecycle: Lifecycle,
        admission: Admission,
        max_body_bytes: int,
        peers: Peers | None = None,
    ) -> None:
        self.manager = manager
        self.peers = peers
        self.pipeline = pipeline
        self.lifecycle = lifecycle
        self.admission = admission
        self.max_body_bytes = max_body_bytes

    def add_to(self, app: FastAPI) -> None:
        self._add_server_routes(app)
        self._add_model_routes(app)

    def _add_server_routes(self, app: FastAPI) -> None:
        @app.get("/v2", tags=TAGS, summary="Server metadata")
        async def server_metadata() -> dict[str, Any]:
            return {"name": SERVER_NAME, "version": __version__, "extensions": [BINARY_EXTENSION]}

        live_summary = "Liveness: the process is up and every batcher runs"

        @app.get("/v2/health/live", tags=TAGS, summary=live_summary, responses=LIVENESS_RESPONSES)
        async def live() -> JSONResponse:
            return health_answer("live", *liveness(self.manager))

        @app.get(
            "/v2/health/ready",
            tags=TAGS,
            summary="Readiness: every model is loaded, not draining",
            responses=OIP_READY_RESPONSES,
        )
        async def ready() -> JSONResponse:
            status, fields, headers = readiness(self.manager, self.lifecycle, self.peers)
            return health_answer("ready", status, fields, headers)

    def _add_model_routes(self, app: FastAPI) -> None:
        # Model names may hold slashes (Hub ids), so the specific routes come before the bare metadata one.
        @app.get(
            "/v2/models/{name:path}/versions/{version}/ready",
            tags=TAGS,
            responses=SIDE_RESPONSES,
            summary="Model readiness",
        )
        async def model_version_ready(name: str, version: str) -> JSONResponse:
            return self.model_ready(name, version)

        @app.get(
            "/v2/models/{name:path}/ready", tags=TAGS, responses=SIDE_RESPONSES, summary="Model readiness"
        )
        async def model_ready(name: str) -> JSONResponse:
            return self.model_ready(name, MODEL_VERSION)

        @app.post(
            "/v2/models/{name:path}/versions/{version}/infer",
            tags=TAGS,
            summary="Inference",
            openapi_extra={"requestBody": OIP_INFER_BODY},
            responses=OIP_INFER_RESPONSES,
        )
        async def infer_version(name: str, version: str, request: Request) -> Response:
            return await self.infer(request, name, version)

        @app.post(
            "/v2/models/{name:path}/infer",
            tags=TAGS,
            summary="Inference",
            openapi_extra={"requestBody": OIP_INFER_BODY},
            responses=OIP_INFER_RESPONSES,
        )
        async def infer(name: str, request: Request) -> Response:
            return await self.infer(request, name, MODEL_VERSION)

        @app.get(
            "/v2/models/{name:path}/versions/{version}",
            tags=TAGS,
            responses=SIDE_RESPONSES,
            summary="Model metadata",
        )
        async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
            return metadata(self.find(name, version))

        @app.get("/v2/models/{name:path}", tags=TAGS, responses=SIDE_RESPONSES, summary="Model metadata")
        async def model_metadata(name: str) -> dict[str, Any]:
            return metadata(self.find(name, MODEL_VERSION))

    def find(self, name: str, version: str) -> ServedModel:
        model = self.manager.get(name)
        if version != MODEL_VERSION:
            raise ModelNotFound(
                f"Model {shown(name)} has no version {shown(version)}; it has {MODEL_VERSION}."
            )
        return model

    def model_ready(self, name: str, version: str) -> JSONResponse:
        model = self.find(name, version)  # unknown: 404; still loading: 503
        if self.lifecycle.draining:
            raise ShuttingDown(RETRY_AFTER_DRAINING_S)
        model.batcher.refuse_if_unavailable()
        return JSONResponse({"name": name, "ready": True})

    async def infer(self, request: Request, name: str, version: str) -> Response:
        started = time.perf_counter()
        model = self.find(name, version)
        outputs = model.task.tensor_outputs(model)
        loop = asyncio.get_running_loop()

        async def read() -> InferRequest:
            if request.headers.get("content-encoding", "identity").lower() != "identity":
                raise InvalidInput(
                    "Compressed request bodies are not accepted: image files are compressed already."
                )
            body = await read_body(request, self.max_body_bytes)
            parsed = await parse_off_loop(
                self.pipeline.pool,
                body,
                parse_infer_request,
                request.headers.get(HEADER_LENGTH),
                model.batcher.max_queue_size,
            )
            check_outputs(parsed, [output.name for output in outputs])
            model.task.validate(parsed.parameters, model)  # once, before any image is decoded
            return parsed

        async def one(index: int, image: bytes, parameters: dict[str, Any], count: int) -> Result:
            try:
                return await self.pipeline.run(model, image, dict(parameters), as_tensors=True)
            except (InvalidInput, TooLarge) as exc:
                if count == 1:
                    raise
                raise type(exc)(f"Image {index + 1} of {count}: {exc.message}") from None

        async def work(parsed: InferRequest) -> tuple[list[Result], tuple[bytes, dict[str, str], str]]:
            count = len(parsed.images)
            runs = [
                asyncio.ensure_future(one(i, image, parsed.parameters, count))
                for i, image in enumerate(parsed.images)
            ]
            try:
                results = list(await asyncio.gather(*runs))
            finally:  # one image failed or the request ended: the others' work is dropped too
                for run in runs:
                    run.cancel()

            def encode() -> tuple[bytes, dict[str, str], str]:
                arrays = stack([result.answer for result in results], outputs)  # type: ignore[misc]
                return encode_infer_response(model.id, version, parsed, arrays)

            # Off the event loop, and while the request still holds its places: a big label map takes a while.
            return results, await loop.run_in_executor(self.pipeline.pool, encode)

        answered = await self.admission.run(request, model, read, lambda parsed: len(parsed.images), work)
        if isinstance(answered, Response):
            return answered
        results, (body, headers, media_type) = answered
        phases = self.admission.record(request, model, [result.phases for result in results])
        return Response(
            body, media_type=media_type, headers={**headers, **answer_headers(model, started, phases)}
        )


def health_answer(
    flag: str, status: int, fields: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    """The protocol's health body (`{"live": true}`, `{"ready": false, "error": ...}`) for what `/health`
    or `/ready` would answer."""
    body = {flag: status == 200} | ({"error": fields["error"]} if "error" in fields else {})
    return JSONResponse(body, status, headers)


def metadata(model: ServedModel) -> dict[str, Any]:
    """Model metadata as the protocol defines it, plus `parameters`: the task, its request parameters and
    the labels that class ids index."""
    outputs = model.task.tensor_outputs(model)
    return {
        "name": model.id,
        "versions": [MODEL_VERSION],
        "platform": model.backend.name,
        "inputs": [tensor_metadata(INPUT_NAME, "BYTES", [-1])],
        "outputs": [tensor_metadata(o.name, DATATYPES[o.dtype], [-1, *o.shape]) for o in outputs],
        "parameters": {
            "task": model.task.name,
            "request_parameters": list(model.task.parameters),
            "outputs": {o.name: o.description for o in outputs},
            "labels": model.labels,
        },
    }
