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

from app.errors import InvalidInput, TooLarge, clip

_JSON_SHAPE = 'Expected {"inputs": "<base64-encoded image>", "parameters": {...}}.'
# What a request may carry besides its image. The HF payloads need a depth of 3 and a handful of
# parameters; anything far beyond is refused before it reaches the tasks.
MAX_JSON_DEPTH = 16
MAX_JSON_VALUES = 1_000  # every object, array, key and scalar, the image string included
MAX_PARAMETERS = 32
MAX_PARAMETER_NAME = 64  # characters
MAX_FORM_FIELDS = 64


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


def load_json(text: bytes | str, what: str, malformed: str | None = None) -> Any:
    """json.loads within MAX_JSON_DEPTH and MAX_JSON_VALUES; one InvalidInput for anything else
    (`malformed`, when given, is the message for text that is not JSON at all)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidInput(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    except (UnicodeDecodeError, ValueError) as exc:
        message = malformed or f"{what} is not valid JSON ({clip(str(exc), 120)}). {_JSON_SHAPE}"
        raise InvalidInput(message) from None
    _check_json_size(value, what)
    return value


def _check_json_size(value: Any, what: str) -> None:
    """Walks the parsed value without recursion: depth and number of values."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    count = 0
    while pending:
        item, depth = pending.pop()
        count += 1
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep.")
        if count > MAX_JSON_VALUES:
            raise InvalidInput(f"{what} holds more than {MAX_JSON_VALUES} values.")
        if isinstance(item, dict):
            count += len(item)  # the keys
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)


def check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    if len(parameters) > MAX_PARAMETERS:
        raise InvalidInput(
            f"The request has {len(parameters)} parameters; at most {MAX_PARAMETERS} are accepted."
        )
    for name in parameters:
        if len(name) > MAX_PARAMETER_NAME:
            raise InvalidInput(
                f"A parameter name is {len(name):,} characters long; at most {MAX_PARAMETER_NAME}."
            )
    return parameters


def parse_json(body: bytes) -> InferenceRequest:
    payload = load_json(body, "The body")
    if not isinstance(payload, dict):
        raise InvalidInput(f"The JSON body must be an object. {_JSON_SHAPE}")
    inputs = payload.get("inputs", payload.get("image"))
    if inputs is None:
        raise InvalidInput(f"The JSON body has no 'inputs'. {_JSON_SHAPE}")
    if not isinstance(inputs, str):
        raise InvalidInput(f"'inputs' must be a string (base64 of one image), got {type(inputs).__name__}.")
    parameters = payload.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object, got {type(parameters).__name__}.")
    return InferenceRequest(decode_base64_image(inputs), parameters)


async def parse_multipart(request: Request, body: bytes) -> InferenceRequest:
    async def stream():  # type: ignore[no-untyped-def]
        yield body

    try:
        form = await MultiPartParser(
            request.headers, stream(), max_files=MAX_FORM_FIELDS, max_fields=MAX_FORM_FIELDS
        ).parse()
    except MultiPartException as exc:
        raise InvalidInput(f"The multipart body could not be parsed: {exc.message}") from None
    try:
        files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        if len(files) != 1:
            raise InvalidInput(f"Send exactly one image file in the form; got {len(files)} file fields.")
        image = await files[0][1].read()
        parameters: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                continue
            if key != "parameters":
                parameters[key] = value
                continue
            not_an_object = "The form field 'parameters' must be a JSON object."
            extra = load_json(value, "The form field 'parameters'", malformed=not_an_object)
            if not isinstance(extra, dict):
                raise InvalidInput(not_an_object)
            parameters.update(extra)
    finally:
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
    parsed.parameters = check_parameters({k: v for k, v in parsed.parameters.items() if v is not None})
    return parsed
