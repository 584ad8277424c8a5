"""OpenAPI: the request and response schemas of the inference routes, and the bearer scheme."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

IMAGE_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "inputs": {
                        "type": "string",
                        "description": "base64 image, or a data:image/...;base64 URL",
                    },
                    "parameters": {"type": "object"},
                    "options": {"type": "object", "description": "accepted and ignored"},
                },
            }
        },
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    },
}
RENDER_PARAMETER = {
    "name": "render",
    "in": "query",
    "required": False,
    "description": "Answer with the annotated photo in this format instead of JSON",
    "schema": {"type": "string", "enum": ["png", "jpeg"]},
}
INFERENCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The Hugging Face JSON answer, or the annotated photo with render=png|jpeg",
        "content": {
            "application/json": {},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: {"description": 'Bad image or bad parameter: {"error": "..."}'},
    401: {"description": "An API token is configured and the request has no valid one"},
    404: {"description": "No such model"},
    408: {"description": "The request body did not arrive within the body timeout"},
    413: {"description": "Body or image over the configured limit"},
    429: {"description": "The model's queue is full: retry after the Retry-After header's seconds"},
    503: {
        "description": 'Models are loading ({"error", "estimated_time"}), or the service is shutting '
        "down; Retry-After says when to retry"
    },
    504: {"description": "The request did not finish within the request timeout"},
}

OIP_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "inputs": {
                        "type": "array",
                        "description": 'one tensor: {"name": "image", "datatype": "BYTES", "shape": [N], '
                        '"data": [N base64 image files]}',
                        "items": {"type": "object"},
                    },
                    "outputs": {"type": "array", "items": {"type": "object"}},
                    "parameters": {"type": "object", "description": "the task's parameters"},
                },
            }
        },
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "the JSON, then binary tensor data (Inference-Header-Content-Length: the JSON's length)",
        },
    },
}
OIP_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **INFERENCE_RESPONSES,
    200: {
        "description": "One tensor per output, the images on axis 0: JSON, or JSON then binary tensor data",
        "content": {
            "application/json": {},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
LIVENESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "A model's batcher has died: restart the service (the error says which)"}
}
OIP_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "Loading, failed, or draining; Retry-After while draining"}
}


def document_bearer_auth(app: FastAPI, open_routes: frozenset[str]) -> None:
    """Declare the bearer scheme in the OpenAPI schema, on every route that needs a token, so that /docs'
    Authorize button and generated clients send it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            for path, operations in schema["paths"].items():
                if path in open_routes:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation["responses"].setdefault("401", {"description": "Missing or invalid API token"})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


SIDE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such model"},
    503: {"description": "The model is loading, or the service is shutting down; Retry-After"},
}

# Response headers browser code may read on a cross-origin response.
EXPOSED_HEADERS = (
    "X-Request-Id",
    "X-Compute-Time",
    "X-Compute-Type",
    "X-Model-Id",
    "X-Model-Random-Weights",
    "X-Preprocessing",
    "Server-Timing",
    "Retry-After",
)
