"""The Open Inference Protocol (KServe v2) REST bodies: an infer request in, an infer response out.

A body is JSON, or JSON followed by binary tensor data (Triton's binary tensor data extension, which
`tritonclient` uses by default): the `Inference-Header-Content-Length` header gives the JSON's length,
each binary tensor gives its byte count in `parameters.binary_data_size`, and a BYTES element is a
4-byte little-endian length followed by its bytes. In JSON, a BYTES element of an image is its base64.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.api.body import check_parameters, decode_base64_image, load_json
from app.errors import InvalidInput, shown
from app.tasks import TensorOutput

INPUT_NAME = "image"
# Past this many elements an output must be asked for as binary data: JSON lists of millions of numbers
# cost seconds and hundreds of MB to build (a label map of a 12 MP photo has 12 million).
MAX_JSON_ELEMENTS = 1_000_000
HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {"object": "BYTES", "float32": "FP32", "uint8": "UINT8", "int32": "INT32"}
BINARY_EXTENSION = "binary_tensor_data"
# Request parameters that steer the protocol or Triton's scheduler, not the task.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"}
)
_SHAPE = (
    'Expected {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [N], "data": [<base64 of '
    "each image>]}]} or the same with binary data (tritonclient's default)."
)


@dataclass
class InferRequest:
    id: str | None
    images: list[bytes]
    parameters: dict[str, Any]  # the task's
    outputs: dict[str, bool] | None  # output name -> binary; None: every output
    binary_output: bool  # the default for outputs the request does not name


def parse_infer_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """The request's images and settings; InvalidInput for anything malformed, or for more than
    `max_images` images (checked before they are split out of the body)."""
    json_part, binary = _split(body, header_length)
    malformed = f"The request is not valid JSON. {_SHAPE}"
    if header_length is not None:
        malformed = (
            f"The request's first {len(json_part):,} bytes (Inference-Header-Content-Length) are not "
            f"valid JSON. {_SHAPE}"
        )
    request = load_json(json_part, "The inference request", malformed=malformed)
    if not isinstance(request, dict):
        raise InvalidInput(f"The inference request must be a JSON object. {_SHAPE}")
    parameters = _object(request.get("parameters"), "'parameters'")
    binary_output = _flag(parameters.get("binary_data_output", False), "binary_data_output")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {shown(request_id)}.")
    task_parameters = {
        k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS and v is not None
    }  # null means "the default", as on the HF routes
    return InferRequest(
        id=request_id,
        images=_images(request.get("inputs"), binary, max_images),
        parameters=check_parameters(task_parameters),
        outputs=_requested_outputs(request.get("outputs"), binary_output),
        binary_output=binary_output,
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not re.fullmatch(r"[0-9]{1,15}", header_length.strip()) or int(header_length) > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {shown(header_length)}: it must be the length of the JSON "
            f"at the start of the body, at most the body's {len(body):,} bytes."
        )
    length = int(header_length)
    return body[:length], body[length:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be an object, got {shown(value)}.")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"Parameter {shown(name)} must be true or false, got {shown(value)}.")
    return value


def _images(inputs: Any, binary: bytes, max_images: int) -> list[bytes]:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"'inputs' must hold exactly one tensor, {INPUT_NAME!r}. {_SHAPE}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise InvalidInput(
            f"The input is named {shown(tensor.get('name'))}; this model's input is {INPUT_NAME!r}."
        )
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput(
            f"Input {INPUT_NAME!r} has datatype {shown(tensor.get('datatype'))}; it must be BYTES "
            "(encoded image files: JPEG, PNG, WebP, ...)."
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 1
        or not isinstance(shape[0], int)
        or isinstance(shape[0], bool)
        or shape[0] < 1
    ):
        raise InvalidInput(f"Input {INPUT_NAME!r} has shape {shown(shape)}; it must be [N], N >= 1 images.")
    count = shape[0]
    if count > max_images:
        raise InvalidInput(
            f"The request holds {count} images; this model takes at most {max_images} at once "
            "(MVIT_MAX_QUEUE_SIZE). Split it."
        )
    parameters = _object(tensor.get("parameters"), f"The parameters of input {INPUT_NAME!r}")
    if any(key.startswith("shared_memory") for key in parameters):
        raise InvalidInput("Shared-memory inputs are not supported: send the images in the request body.")
    size = parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise InvalidInput("The body has binary data after the JSON, but no input has binary_data_size.")
        return _json_elements(tensor.get("data"), count)
    if "data" in tensor:
        raise InvalidInput(f"Input {INPUT_NAME!r} has both 'data' and binary_data_size: send one of them.")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise InvalidInput(
            f"Input {INPUT_NAME!r} says binary_data_size {shown(size)}, but {len(binary):,} bytes follow "
            "the JSON (Inference-Header-Content-Length)."
        )
    return bytes_elements(binary, count)


def _json_elements(data: Any, count: int) -> list[bytes]:
    if not isinstance(data, list) or len(data) != count:
        raise InvalidInput(
            f"Input {INPUT_NAME!r} needs 'data': a list of {count} base64 strings (its shape)."
        )
    images = []
    for element in data:
        if not isinstance(element, str):
            raise InvalidInput(
                f"Each element of {INPUT_NAME!r} must be a base64 string, got {shown(element)}."
            )
        images.append(decode_base64_image(element))
    return images


def bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """A binary BYTES tensor of `count` elements -> the elements."""
    elements, offset = [], 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(
                f"The binary data of {INPUT_NAME!r} ends before element {index + 1} of {count}."
            )
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(
                f"Element {index + 1} of {INPUT_NAME!r} says {length:,} bytes; only {len(raw) - offset:,} follow."
            )
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidInput(
            f"{len(raw) - offset:,} bytes follow the {count} elements of {INPUT_NAME!r}; its shape says {count}."
        )
    return elements


def _requested_outputs(outputs: Any, binary_output: bool) -> dict[str, bool] | None:
    """Output name -> as binary data (each output's `binary_data`, else the request's
    `binary_data_output`); None for every output."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InvalidInput(f"'outputs' must be a list of {{'name': ...}} objects, got {shown(outputs)}.")
    requested = {}
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput(f"Each of 'outputs' must be an object with a 'name', got {shown(output)}.")
        parameters = _object(output.get("parameters"), f"The parameters of output {shown(output['name'])}")
        unsupported = sorted(set(parameters) - {"binary_data"})
        if unsupported:
            raise InvalidInput(
                f"Output parameter(s) {', '.join(map(shown, unsupported))} are not supported; only binary_data is."
            )
        if output["name"] in requested:
            raise InvalidInput(f"Output {shown(output['name'])} is asked for twice.")
        requested[output["name"]] = _flag(parameters.get("binary_data", binary_output), "binary_data")
    return requested


def check_outputs(request: InferRequest, names: Sequence[str]) -> None:
    """Refuse unknown output names before any work is done."""
    unknown = sorted(set(request.outputs or ()) - set(names))
    if unknown:
        raise InvalidInput(
            f"Unknown output(s) {', '.join(map(shown, unknown))}; this model answers {', '.join(names)}."
        )


def stack(
    answers: Sequence[Mapping[str, np.ndarray]], specs: Sequence[TensorOutput]
) -> dict[str, np.ndarray]:
    """Each image's named arrays -> one array per output with the images on axis 0. Outputs whose first
    axis varies (`padded`) are padded to the longest; other shapes must agree across images."""
    stacked = {}
    for spec in specs:
        arrays = [answer[spec.name] for answer in answers]
        if spec.padded:
            longest = max(len(array) for array in arrays)
            padded = np.zeros((len(arrays), longest, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
            if padded.dtype == object:
                padded[...] = ""
            for i, array in enumerate(arrays):
                padded[i, : len(array)] = array
            stacked[spec.name] = padded
            continue
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise InvalidInput(
                f"Output {spec.name!r} has one shape per image here ({', '.join(map(str, sorted(shapes)))}), "
                "and one tensor holds them all: send images of different sizes in separate requests."
            )
        stacked[spec.name] = np.stack(arrays)
    return stacked


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    arrays: Mapping[str, np.ndarray],
) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, media type) of an infer response: the JSON, and binary outputs after it."""
    wanted = request.outputs if request.outputs is not None else dict.fromkeys(arrays, request.binary_output)
    outputs, chunks = [], []
    for name, as_binary in wanted.items():
        array = arrays[name]
        output: dict[str, Any] = {
            "name": name,
            "datatype": DATATYPES[array.dtype.name],
            "shape": list(array.shape),
        }
        if as_binary:
            chunk = (
                serialize_bytes(array)
                if array.dtype == object
                else array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            )
            output["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif array.size > MAX_JSON_ELEMENTS:
            raise InvalidInput(
                f"Output {name!r} has {array.size:,} elements, too many for JSON (at most "
                f"{MAX_JSON_ELEMENTS:,}): ask for it as binary data (binary_data: true, tritonclient's default)."
            )
        else:
            output["data"] = array.ravel().tolist()
        outputs.append(output)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    # ASCII: a request id may hold a lone surrogate, which UTF-8 cannot encode.
    header = json.dumps(response, ensure_ascii=True, separators=(",", ":")).encode()
    if not chunks:
        return header, {}, "application/json"
    return (
        b"".join([header, *chunks]),
        {"Inference-Header-Content-Length": str(len(header))},
        "application/octet-stream",
    )


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor in binary form: each element's length (4 bytes, little-endian), then its bytes."""
    parts = []
    for element in array.ravel():
        data = element if isinstance(element, bytes) else str(element).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def tensor_metadata(name: str, datatype: str, shape: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}
