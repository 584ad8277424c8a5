"""HTTP request -> (image bytes, raw parameters), for the three body forms the HF clients send.

* raw image bytes, with any Content-Type or none (`curl --data-binary` labels them
  application/x-www-form-urlencoded);
* JSON `{"inputs": "<base64 or data: URL>", "parameters": {...}}` (`image` is an alias of `inputs`,
  `options` is ignored);
* multipart/form-data with one file field (browser forms, `curl -F`); other fields are parameters.

Query parameters are parameters too; those in the body win.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.errors import InvalidInput, TooLarge

_JSON_SHAPE = 'Expected {"inputs": "<base64-encoded image>", "parameters": {...}}.'


@dataclass
class InferenceRequest:
    image: bytes
    parameters: dict[str, Any] = field(default_factory=dict)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"The request body is {int(declared):,} bytes; the limit is {limit:,}.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"The request body is over the limit of {limit:,} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_base64_image(value: str) -> bytes:
    text = value.strip()
    if text.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise InvalidInput(
            "URL inputs are not fetched: this server does not download from URLs (that would let callers "
            "make it reach other hosts). Send the image bytes, or base64 in 'inputs'."
        )
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidInput("A data: URL in 'inputs' must be base64-encoded (data:image/...;base64,...).")
    text = "".join(text.split())
    if not text:
        raise InvalidInput("'inputs' is empty: put the base64-encoded image there.")
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("'inputs' is not valid base64 of an image file.") from None


def parse_json(body: bytes) -> InferenceRequest:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"The body is not valid JSON ({exc}). {_JSON_SHAPE}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(f"The JSON body must be an object. {_JSON_SHAPE}")
    inputs = payload.get("inputs", payload.get("image"))
    if inputs is None:
        raise InvalidInput(f"The JSON body has no 'inputs'. {_JSON_SHAPE}")
    if not isinstance(inputs, str):
        raise InvalidInput(f"'inputs' must be a string (base64 of one image), got {type(inputs).__name__}.")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object, got {type(parameters).__name__}.")
    return InferenceRequest(decode_base64_image(inputs), parameters)


async def parse_multipart(request: Request, body: bytes) -> InferenceRequest:
    async def stream():  # type: ignore[no-untyped-def]
        yield body

    try:
        form = await MultiPartParser(request.headers, stream()).parse()
    except MultiPartException as exc:
        raise InvalidInput(f"The multipart body could not be parsed: {exc.message}") from None
    files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
    if len(files) != 1:
        raise InvalidInput(f"Send exactly one image file in the form; got {len(files)} file fields.")
    image = await files[0][1].read()
    parameters: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            if key == "parameters":
                try:
                    extra = json.loads(value)
                except ValueError:
                    raise InvalidInput("The form field 'parameters' must be a JSON object.") from None
                if not isinstance(extra, dict):
                    raise InvalidInput("The form field 'parameters' must be a JSON object.")
                parameters.update(extra)
            else:
                parameters[key] = value
    await form.close()
    return InferenceRequest(image, parameters)


async def parse_request(request: Request, max_body_bytes: int) -> InferenceRequest:
    body = await read_body(request, max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        parsed = await parse_multipart(request, body)
    elif content_type == "application/json" or content_type.endswith("+json") or body.lstrip()[:1] == b"{":
        parsed = parse_json(body)
    else:
        parsed = InferenceRequest(body)
    query = {key: value for key, value in request.query_params.items()}
    parsed.parameters = {**query, **parsed.parameters}
    # A null parameter means "use the default", as in the HF clients.
    parsed.parameters = {k: v for k, v in parsed.parameters.items() if v is not None}
    return parsed
