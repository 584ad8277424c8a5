"""The HTTP golden set: a fixed list of requests against the three tasks, and what a response is reduced to.

Recorded with `python -m tests.golden.record` (`tests/golden/http.json`), played back by
`tests/api/test_golden.py`: status, the headers
that matter and the body must stay the same, apart from timings and request ids. Image payloads (masks,
annotated images) are compared as decoded pixels, and numbers within a relative tolerance, so the set
survives a change of CPU (other SIMD kernels round the last float bits differently).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.api import create_app
from app.config import ServerSettings
from app.runtime.apply_tuning import machine_key
from app.tools.demo_models import write_demo_model
from tests.support import wait_ready

# Headers whose values are part of the contract; `server-timing` is reduced to its phase names.
HEADERS = (
    "content-type",
    "x-model-id",
    "x-compute-type",
    "x-model-random-weights",
    "retry-after",
    "www-authenticate",
    "connection",
    "access-control-allow-origin",
)
GOLDEN_FILE = Path(__file__).with_name("http.json")
TASK_ROUTES = {"classification": "/classify", "segmentation": "/segment", "detection": "/detect"}
TASK_PARAMETERS = {
    "classification": {"top_k": 2, "function_to_apply": "sigmoid"},
    "segmentation": {"subtask": "semantic"},
    "detection": {"threshold": 0.05},
}
BAD_PARAMETERS = {
    "classification": [{"top_k": 0}, {"top_k": "many"}, {"function_to_apply": "tanh"}],
    "segmentation": [{"subtask": "instance"}, {"threshold": 2}, {"mask_threshold": "x"}],
    "detection": [{"threshold": 1.5}, {"threshold": True}],
}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def photo(width: int = 160, height: int = 120, seed: int = 3) -> bytes:
    """A small photo-like JPEG: smooth colour waves with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = np.stack(
        [128 + 100 * np.sin(xx / 9), 128 + 100 * np.cos(yy / 7), 128 + 90 * np.sin((xx + yy) / 13)], axis=-1
    )
    pixels = np.clip(waves + rng.normal(0, 10, waves.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1100, 1000), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


JSON = {"content-type": "application/json"}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def cases(task: str, model_id: str) -> Iterator[Case]:
    """The requests for one task's model. ServerSettings: max_body_bytes 200_000, max_image_pixels 1_000_000."""
    route = TASK_ROUTES[task]
    image = photo()
    b64 = base64.b64encode(image).decode()
    params = TASK_PARAMETERS[task]
    yield Case("raw jpeg", "POST", route, {"content": image, "headers": {"content-type": "image/jpeg"}})
    yield Case("raw, curl's form content type", "POST", route, {"content": image})
    yield Case("json inputs", "POST", route, {"json": {"inputs": b64}})
    yield Case("json data url", "POST", route, {"json": {"inputs": f"data:image/jpeg;base64,{b64}"}})
    yield Case("json parameters", "POST", route, {"json": {"inputs": b64, "parameters": params}})
    yield Case("json image alias, options", "POST", route, {"json": {"image": b64, "options": {"x": 1}}})
    yield Case("query parameters", "POST", route, {"content": image, "params": params})
    yield Case(
        "multipart with parameter fields",
        "POST",
        route,
        {"files": {"file": ("p.jpg", image, "image/jpeg")}, "data": {k: str(v) for k, v in params.items()}},
    )
    yield Case(
        "multipart parameters field",
        "POST",
        route,
        {"files": {"file": ("p.jpg", image, "image/jpeg")}, "data": {"parameters": json.dumps(params)}},
    )
    yield Case("by model id", "POST", f"/models/{model_id}", {"content": image})
    yield Case("render png", "POST", route, {"content": image, "params": {"render": "png"}})
    yield Case(
        "render jpeg in json", "POST", route, {"json": {"inputs": b64, "parameters": {"render": "jpg"}}}
    )
    yield Case("accept image/png", "POST", route, {"content": image, "headers": {"accept": "image/png"}})
    yield Case(
        "accept json wins",
        "POST",
        route,
        {"content": image, "headers": {"accept": "image/png, application/json"}},
    )
    # Error paths
    yield Case("empty body", "POST", route, {"content": b""})
    yield Case("not an image", "POST", route, {"content": b"hello, this is text"})
    yield Case("truncated jpeg", "POST", route, {"content": image[: len(image) // 3]})
    yield Case(
        "bad json",
        "POST",
        route,
        {"content": b'{"inputs": ', "headers": {"content-type": "application/json"}},
    )
    yield Case("json array", "POST", route, {"json": [1, 2]})
    yield Case("json without inputs", "POST", route, {"json": {"parameters": {}}})
    yield Case("inputs not a string", "POST", route, {"json": {"inputs": 12}})
    yield Case("inputs not base64", "POST", route, {"json": {"inputs": "###"}})
    yield Case("inputs empty", "POST", route, {"json": {"inputs": "  "}})
    yield Case("inputs a url", "POST", route, {"json": {"inputs": "https://example.com/cat.jpg"}})
    yield Case("data url not base64", "POST", route, {"json": {"inputs": "data:image/jpeg,abc"}})
    yield Case("parameters not an object", "POST", route, {"json": {"inputs": b64, "parameters": [1]}})
    yield Case("unknown parameter", "POST", route, {"json": {"inputs": b64, "parameters": {"colour": "red"}}})
    for n, bad in enumerate(BAD_PARAMETERS[task]):
        yield Case(f"bad parameter {n}", "POST", route, {"json": {"inputs": b64, "parameters": bad}})
    yield Case("render gif", "POST", route, {"content": image, "params": {"render": "gif"}})
    yield Case(
        "multipart two files",
        "POST",
        route,
        {"files": [("a", ("a.jpg", image, "image/jpeg")), ("b", ("b.jpg", image, "image/jpeg"))]},
    )
    yield Case(
        "multipart parameters not json",
        "POST",
        route,
        {"files": {"file": ("p.jpg", image, "image/jpeg")}, "data": {"parameters": "{oops"}},
    )
    yield Case("json nested deep", "POST", route, {"content": b"[" * 5000 + b"]" * 5000, "headers": JSON})
    yield Case(
        "json deep in parameters", "POST", route, {"json": {"inputs": b64, "parameters": {"a": nested(40)}}}
    )
    yield Case("json many values", "POST", route, {"json": {"inputs": b64, "parameters": {"a": [0] * 5000}}})
    yield Case(
        "json huge integer",
        "POST",
        route,
        {"content": b'{"inputs": "x", "n": ' + b"7" * 100_000 + b"}", "headers": JSON},
    )
    yield Case(
        "parameter a 4000-digit integer",
        "POST",
        route,
        {"json": {"inputs": b64, "parameters": {next(iter(params)): 10**3999}}},
    )
    yield Case(
        "parameter name a lone surrogate",
        "POST",
        route,
        {"content": b'{"inputs": "aGVsbG8=", "parameters": {"\\ud800": 1}}', "headers": JSON},
    )
    yield Case(
        "too many parameters",
        "POST",
        route,
        {"json": {"inputs": b64, "parameters": {f"p{i}": 1 for i in range(40)}}},
    )
    yield Case(
        "parameter name too long", "POST", route, {"json": {"inputs": b64, "parameters": {"x" * 100_000: 1}}}
    )
    yield Case("body over the limit", "POST", route, {"content": b"\xff" * 200_001})
    yield Case("image over the pixel limit", "POST", route, {"content": _big_png()})
    yield Case("GET on an inference route", "GET", route)
    yield from oip_cases(task, model_id, image)


def oip_cases(task: str, model_id: str, image: bytes) -> Iterator[Case]:
    """The same model over the Open Inference Protocol."""
    infer = f"/v2/models/{model_id}/infer"
    second = photo(seed=4)
    data = [base64.b64encode(image).decode(), base64.b64encode(second).decode()]
    tensor = {"name": "image", "datatype": "BYTES", "shape": [2], "data": data}
    params = TASK_PARAMETERS[task]
    yield Case("oip json, two images", "POST", infer, {"json": {"inputs": [tensor], "parameters": params}})
    elements = b"".join(len(x).to_bytes(4, "little") + x for x in (image, second))
    header = json.dumps(
        {
            "id": "golden",
            "inputs": [{**tensor, "data": None, "parameters": {"binary_data_size": len(elements)}}],
            "parameters": {"binary_data_output": True},
        }
    ).replace(', "data": null', "")
    yield Case(
        "oip binary in and out",
        "POST",
        infer,
        {
            "content": header.encode() + elements,
            "headers": {"inference-header-content-length": str(len(header))},
        },
    )
    yield Case("oip wrong input name", "POST", infer, {"json": {"inputs": [{**tensor, "name": "x"}]}})
    yield Case(
        "oip bad parameter",
        "POST",
        infer,
        {"json": {"inputs": [tensor], "parameters": BAD_PARAMETERS[task][0]}},
    )
    yield Case("oip metadata", "GET", f"/v2/models/{model_id}")
    yield Case("oip model ready", "GET", f"/v2/models/{model_id}/ready")


def service_cases(model_ids: list[str]) -> Iterator[Case]:
    yield Case("health", "GET", "/health")
    yield Case("info", "GET", "/info")
    yield Case("POST / with three models", "POST", "/", {"content": photo()})
    for route in TASK_ROUTES.values():
        yield Case("route health", "GET", f"{route}/health")
        yield Case("route info", "GET", f"{route}/info")
    yield Case("model health", "GET", f"/models/{model_ids[0]}/health")
    yield Case("unknown model health", "GET", "/models/nope/health")
    yield Case("ready", "GET", "/ready")
    yield Case("models", "GET", "/models")
    yield Case("unknown model", "POST", "/models/no-such-model", {"content": photo()})
    yield Case("unknown route", "GET", "/nowhere")
    yield Case("demo page", "GET", "/")
    yield Case("metrics", "GET", "/metrics")
    yield Case("openapi", "GET", "/openapi.json")
    yield Case("oip server metadata", "GET", "/v2")
    yield Case("oip live", "GET", "/v2/health/live")
    yield Case("oip ready", "GET", "/v2/health/ready")
    yield Case("oip unknown model", "GET", "/v2/models/nope")
    yield Case("oip unknown version", "GET", f"/v2/models/{model_ids[0]}/versions/2")


def auth_cases(model_id: str) -> Iterator[Case]:
    image = photo()
    yield Case("no token", "POST", "/classify", {"content": image})
    yield Case(
        "wrong token", "POST", "/classify", {"content": image, "headers": {"authorization": "Bearer nope"}}
    )
    yield Case(
        "not bearer", "POST", "/classify", {"content": image, "headers": {"authorization": "Basic eA=="}}
    )
    yield Case(
        "good token", "POST", "/classify", {"content": image, "headers": {"authorization": "Bearer s3cret"}}
    )
    yield Case("health is open", "GET", "/health")
    yield Case("ready is open", "GET", "/ready")
    yield Case("metrics needs a token", "GET", "/metrics")
    yield Case("openapi is open", "GET", "/openapi.json")
    yield Case("oip live is open", "GET", "/v2/health/live")
    yield Case("oip ready is open", "GET", "/v2/health/ready")
    yield Case("oip metadata needs a token", "GET", f"/v2/models/{model_id}")
    yield Case(
        "cors preflight",
        "OPTIONS",
        "/classify",
        {"headers": {"origin": "https://app.example", "access-control-request-method": "POST"}},
    )


def draining_cases() -> Iterator[Case]:
    yield Case("inference while draining", "POST", "/classify", {"content": photo()})
    yield Case("ready while draining", "GET", "/ready")
    yield Case("health while draining", "GET", "/health")
    yield Case("oip ready while draining", "GET", "/v2/health/ready")
    yield Case("oip live while draining", "GET", "/v2/health/live")


def _image_summary(data: bytes) -> dict[str, Any]:
    image = Image.open(io.BytesIO(data))
    image.load()
    return {"format": image.format, "mode": image.mode, "size": list(image.size), "pixels": _pixels(image)}


def _pixels(image: Image.Image) -> str:
    """A coarse thumbnail, base64 of raw bytes: enough to see that the same thing was drawn."""
    thumb = image.convert("RGB").resize((32, 24), Image.Resampling.BOX)
    return base64.b64encode(thumb.tobytes()).decode()


def _reduce_json(value: Any) -> Any:
    """Masks (base64 PNG) become image summaries, long integer tensors (label maps) their size and
    the values present; everything
    else stays."""
    if isinstance(value, list):
        return [_reduce_json(v) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "mask" and isinstance(item, str):
                out[key] = _image_summary(base64.b64decode(item))
            elif (
                key == "data"
                and isinstance(item, list)
                and len(item) > 256
                and all(type(v) is int for v in item)
            ):
                out[key] = {"elements": len(item), "values": sorted(set(item))}
            else:
                out[key] = _reduce_json(item)
        return out
    return value


def reduce(response: Any, replacements: dict[str, str]) -> dict[str, Any]:
    """A response as the golden set keeps it (`response`: an httpx.Response)."""
    headers = {name: response.headers[name] for name in HEADERS if name in response.headers}
    if "server-timing" in response.headers:
        headers["server-timing"] = [
            p.split(";")[0].strip() for p in response.headers["server-timing"].split(",")
        ]
    headers["x-request-id"] = "x-request-id" in response.headers
    content_type = response.headers.get("content-type", "")
    body: Any
    if content_type.startswith("image/"):
        body = _image_summary(response.content)
    elif content_type.startswith("application/json"):
        text = response.text
        for old, new in replacements.items():
            text = text.replace(json.dumps(old)[1:-1], new)
        body = _reduce_json(json.loads(text))
    elif content_type.startswith("text/plain"):  # /metrics: the metric names, not their values
        body = sorted(
            {
                line.split("{")[0].split(" ")[0]
                for line in response.text.splitlines()
                if line and line[0] != "#"
            }
        )
    else:
        body = {"bytes": len(response.content)}
    exact = None
    if not content_type.startswith("text/plain"):  # metrics values change from run to run
        exact = hashlib.sha256(_replaced(response.content, replacements)).hexdigest()
    return {"status": response.status_code, "headers": headers, "body": body, "sha256": exact}


def _replaced(content: bytes, replacements: dict[str, str]) -> bytes:
    for old, new in replacements.items():
        content = content.replace(json.dumps(old)[1:-1].encode(), new.encode())
    return content


def play(send: Callable[[Case], Any], case_list: list[Case], replacements: dict[str, str]) -> dict[str, Any]:
    return {
        f"{case.method} {case.path} | {case.name}": reduce(send(case), replacements) for case in case_list
    }


def differences(
    expected: Any, got: Any, where: str = "", rel: float = 1e-4, pixel_tol: float = 3.0
) -> list[str]:
    """Where `got` differs from `expected`: numbers within `rel`, thumbnails within `pixel_tol` mean abs."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if "pixels" in expected and "pixels" in got:
            a = np.frombuffer(base64.b64decode(expected["pixels"]), np.uint8).astype(float)
            b = np.frombuffer(base64.b64decode(got["pixels"]), np.uint8).astype(float)
            problems = differences(
                {k: v for k, v in expected.items() if k != "pixels"},
                {k: v for k, v in got.items() if k != "pixels"},
                where,
                rel,
                pixel_tol,
            )
            if a.shape != b.shape or np.abs(a - b).mean() > pixel_tol:
                problems.append(f"{where}: pixels differ")
            return problems
        expected = {k: v for k, v in expected.items() if k != "sha256"}  # exact bytes: same CPU only
        got = {k: v for k, v in got.items() if k != "sha256"}
        if expected.keys() != got.keys():
            return [f"{where}: keys {sorted(expected)} != {sorted(got)}"]
        return [
            p
            for key in expected
            for p in differences(expected[key], got[key], f"{where}.{key}", rel, pixel_tol)
        ]
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{where}: {len(expected)} items != {len(got)}"]
        return [
            p
            for i, (a, b) in enumerate(zip(expected, got, strict=True))
            for p in differences(a, b, f"{where}[{i}]", rel, pixel_tol)
        ]
    if isinstance(expected, float) or isinstance(got, float):
        if isinstance(expected, bool) or isinstance(got, bool) or not isinstance(got, int | float):
            return [f"{where}: {expected!r} != {got!r}"]
        if abs(expected - got) > rel * max(abs(expected), abs(got), 1e-3):
            return [f"{where}: {expected!r} != {got!r}"]
        return []
    return [] if expected == got else [f"{where}: {expected!r} != {got!r}"]


GROUP_BY_TASK = {
    "image-classification": "classification",
    "image-segmentation": "segmentation",
    "object-detection": "detection",
}


def record_all(folder: Path, demo_models: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """Serve the three demo models (and an app with auth and CORS) and play every case. The models are
    width 0.5 and seeded 0, 1, 2 in the order of GROUP_BY_TASK: written into `folder`, or copied there from
    `demo_models`, which must be those (the tests' session fixture is)."""
    models = {}
    for seed, (task, group) in enumerate(GROUP_BY_TASK.items()):
        if demo_models is None:
            models[group] = write_demo_model(folder, task, width=0.5, seed=seed)
        else:  # only the files a demo model is written with: no export, cache or tuning record
            ignore = shutil.ignore_patterns("onnx-cache", "*.onnx", "tuning.json")
            models[group] = Path(
                shutil.copytree(demo_models[task], folder / demo_models[task].name, ignore=ignore)
            )
    common = {"inference_threads": 2, "decode_threads": 2, "model_repository": folder}
    # /models names the machine a tuning record would be for: CPU model and runtime versions vary.
    machine = machine_key(ServerSettings(**common)).describe()
    replacements = {str(folder): "<models>", machine: "<machine>"}

    def client(**overrides: Any) -> Any:
        return TestClient(
            create_app(ServerSettings(**{**common, **overrides})), raise_server_exceptions=False
        )

    def sender(test_client: Any) -> Callable[[Case], Any]:
        return lambda case: test_client.request(case.method, case.path, **case.kwargs)

    golden: dict[str, Any] = {}
    with client(
        models=[str(p) for p in models.values()], max_body_bytes=200_000, max_image_pixels=1_000_000
    ) as c:
        wait_ready(c)
        for task, path in models.items():
            golden[task] = play(sender(c), list(cases(task, path.name)), replacements)
        golden["service"] = play(
            sender(c), list(service_cases([p.name for p in models.values()])), replacements
        )
        c.app.state.lifecycle.start_draining()
        golden["draining"] = play(sender(c), list(draining_cases()), replacements)
    with client(
        models=[str(models["classification"])], api_tokens="s3cret", cors_origins="https://app.example"
    ) as c:
        wait_ready(c)
        golden["auth"] = play(sender(c), list(auth_cases(models["classification"].name)), replacements)
    return golden
