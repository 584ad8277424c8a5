"""HTTP request -> (image bytes, raw parameters), for the three body forms the HF clients send.

* raw image bytes, with any Content-Type or none (`curl --data-binary` labels them
  application/x-www-form-urlencoded);
* JSON `{"inputs": "<base64 or data: URL>", "parameters": {...}}` (`image` is an alias of `inputs`,
  `options` is ignored);
* multipart/form-data with one file field (browser forms, `curl -F`); other fields are parameters.

Query parameters are parameters too; those in the body win.

Bodies of `PARSE_OFF_LOOP_BYTES` or more are parsed on a decode thread (`parse_off_loop`), and no step
of it holds the GIL for long: every other request, `/health` included, waits for whoever holds it.
`json.loads` and the stdlib's base64 hold it for tens of milliseconds on a big image, so long base64
strings are cut out of the text before `json.loads` and put back after (`load_json`), and pybase64
decodes them (figures: docs/performance.md, "Big bodies").
"""

from __future__ import annotations

import asyncio
import binascii
import json
import re
import secrets
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pybase64
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
# Below this, handing the parse to a thread costs more than the parse itself (tens of microseconds).
PARSE_OFF_LOOP_BYTES = 256 * 1024
# JSON strings at least this long made of base64 characters only are cut out before json.loads.
LONG_STRING_CHARS = 64 * 1024
MULTIPART_SLICE_BYTES = 256 * 1024
MAX_BACKSLASH_RUN = 64
_KEY_FOLLOWS = re.compile(rb"[ \t\r\n]*:")

Parsed = TypeVar("Parsed")


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


async def parse_off_loop(pool: Executor, body: bytes, parse: Callable[..., Parsed], *args: Any) -> Parsed:
    """`parse(body, *args)`, on a thread of `pool` when the body is big."""
    if len(body) < PARSE_OFF_LOOP_BYTES:
        return parse(body, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, parse, body, *args)


def decode_base64_image(value: str) -> bytes:
    text = value.strip()
    if text[:8].lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise InvalidInput(
            "URL inputs are not fetched: this server does not download from URLs (that would let callers "
            "make it reach other hosts). Send the image bytes, or base64 in 'inputs'."
        )
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidInput("A data: URL in 'inputs' must be base64-encoded (data:image/...;base64,...).")
    decoded = _decode_base64(text) if text else None
    if decoded is None:
        text = "".join(text.split())  # base64 with line breaks, as MIME writes it
        if not text:
            raise InvalidInput("'inputs' is empty: put the base64-encoded image there.")
        decoded = _decode_base64(text)
    if decoded is None:
        raise InvalidInput("'inputs' is not valid base64 of an image file.")
    return decoded


def _decode_base64(text: str | memoryview) -> bytes | None:
    """Standard or URL-safe base64, padded or not; None for anything else (whitespace included)."""
    missing = -len(text) % 4
    if isinstance(text, str):
        text += "=" * missing
    elif missing:
        text = bytes(text) + b"=" * missing
    for altchars in (None, b"-_"):
        try:
            return pybase64.b64decode(text, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None


def load_json(text: bytes | str, what: str, malformed: str | None = None) -> Any:
    """json.loads within MAX_JSON_DEPTH and MAX_JSON_VALUES; one InvalidInput for anything else
    (`malformed`, when given, is the message for text that is not JSON at all)."""
    reduced, lifted = text, {}
    if isinstance(text, bytes) and len(text) >= LONG_STRING_CHARS:
        reduced, lifted = lift_long_strings(text)
    try:
        value = _parse_json(reduced, what, malformed)
    except InvalidInput:
        if not lifted:
            raise
        value = _parse_json(text, what, malformed)  # raises too, with the positions of the text as sent
    _check_json_size(value, what)
    return _put_back(value, lifted) if lifted else value


def _parse_json(text: bytes | str, what: str, malformed: str | None) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    except (UnicodeDecodeError, ValueError) as exc:
        message = malformed or f"{what} is not valid JSON ({clip(str(exc), 120)}). {_JSON_SHAPE}"
        raise InvalidInput(message) from None


def lift_long_strings(body: bytes) -> tuple[bytes, dict[str, str]]:
    """`body` with the content of each long base64-only string value replaced by a placeholder, and the
    contents by placeholder. Such content has no escapes, so json.loads would give it as it is; and the
    quotes are found as json.loads finds them, so the text is JSON exactly when `body` is."""
    quotes: list[int] = []
    at = body.find(b'"')
    while at != -1:
        backslashes = 0
        while at - backslashes > 0 and body[at - backslashes - 1] == ord("\\"):
            backslashes += 1
            if backslashes > MAX_BACKSLASH_RUN:  # no image body has these; json.loads judges them
                return body, {}
        if backslashes % 2 == 0:
            quotes.append(at)
            if len(quotes) > 2 * MAX_JSON_VALUES + 2:  # more strings than a body may hold: json.loads says so
                return body, {}
        at = body.find(b'"', at + 1)
    if len(quotes) % 2:
        return body, {}
    nonce = secrets.token_hex(8)
    parts: list[bytes] = []
    lifted: dict[str, str] = {}
    done = 0
    for start, end in zip(quotes[::2], quotes[1::2], strict=True):
        if end - start - 1 < LONG_STRING_CHARS or _KEY_FOLLOWS.match(body, end + 1):
            continue
        if _decode_base64(memoryview(body)[start + 1 : end]) is None:  # escapes or control characters
            continue
        placeholder = f"mvit-lifted-{nonce}-{len(lifted)}"
        lifted[placeholder] = body[start + 1 : end].decode("ascii")
        parts += [body[done : start + 1], placeholder.encode()]
        done = end
    return b"".join([*parts, body[done:]]) if lifted else body, lifted


def _put_back(value: Any, lifted: dict[str, str]) -> Any:
    """`value` with each placeholder string replaced by the string it stands for."""
    if isinstance(value, str):
        return lifted.get(value, value)
    pending = [value]
    while pending:
        item = pending.pop()
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in list(children):
            if isinstance(child, str) and child in lifted:
                item[key] = lifted[child]
            elif isinstance(child, (dict, list)):
                pending.append(child)
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
        # In slices, so that the event loop runs between them: the parser takes about 5 ms a megabyte.
        view = memoryview(body)
        for start in range(0, len(body), MULTIPART_SLICE_BYTES):
            yield bytes(view[start : start + MULTIPART_SLICE_BYTES])

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


async def parse_request(request: Request, max_body_bytes: int, pool: Executor) -> InferenceRequest:
    body = await read_body(request, max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        parsed = await parse_multipart(request, body)
    elif content_type == "application/json" or content_type.endswith("+json") or body.lstrip()[:1] == b"{":
        parsed = await parse_off_loop(pool, body, parse_json)
    else:
        parsed = InferenceRequest(body)
    query = {key: value for key, value in request.query_params.items()}
    parsed.parameters = {**query, **parsed.parameters}
    # A null parameter means "use the default", as in the HF clients.
    parsed.parameters = check_parameters({k: v for k, v in parsed.parameters.items() if v is not None})
    return parsed
