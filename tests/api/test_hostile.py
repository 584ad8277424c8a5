"""Hostile input: a corpus of bad images on every task, property-based fuzzing of the request parser, and
schemathesis against the app's own OpenAPI schema. The contract: never a 5xx, never a hang, bounded memory,
and a JSON error that says what went wrong."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    status_code_conformance,
)

import app.intake.preprocess
from app.api import create_app
from app.config import ServerSettings
from app.intake.preprocess import Preprocessing, preprocess
from benchmarks.hostile_images import hostile_corpus
from tests.support import ROOT, encode, live, make_settings, photo_like, wait_for, wait_ready

ROUTES = ("/classify", "/segment", "/detect")
CORPUS = hostile_corpus()
TINY_JPEG = encode(photo_like(48, 32, seed=4))
# A request that takes longer than this is a hang (the slowest legitimate ones here take well under 1 s).
HANG_S = 20.0


@pytest.fixture(scope="module")
def three_tasks(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(model_dir, models=[str(model_dir), str(seg_model_dir), str(det_model_dir)])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize("item", CORPUS, ids=[item.name for item in CORPUS])
def test_hostile_image_corpus(three_tasks: TestClient, item: object) -> None:
    for route in ROUTES:
        started = time.monotonic()
        response = three_tasks.post(route, content=item.data)  # type: ignore[attr-defined]
        assert time.monotonic() - started < HANG_S
        assert response.status_code in item.expected, (route, response.status_code, response.text[:300])  # type: ignore[attr-defined]
        body = response.json()
        if response.status_code != 200:
            assert isinstance(body["error"], str) and len(body["error"]) > 10
    assert three_tasks.post("/classify", content=TINY_JPEG).status_code == 200  # still serving


def test_preprocessing_memory_stays_bounded_on_the_corpus(
    model_dir: Path, seg_model_dir: Path, det_model_dir: Path
) -> None:
    """Peak RSS of decoding + preprocessing the whole corpus for all three models, in a fresh process.
    A naive shortest-edge resize of the 20000x2 strip alone would allocate 2 GB (7.8 GB at 512 px)."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from benchmarks.hostile_images import hostile_corpus
        from app.repository import resolve
        from app.errors import ServiceError
        from app.intake.decode import decode
        from app.intake.preprocess import Preprocessing, preprocess
        specs = [Preprocessing.from_hf_config(resolve(p, Path(".")).preprocessor_config)
                 for p in {[str(model_dir), str(seg_model_dir), str(det_model_dir)]!r}]
        corpus = hostile_corpus()
        for spec in specs:  # warm-up: allocator pools, lazy imports
            preprocess(decode(corpus[-1].data, 50_000_000).image, spec)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for item in corpus:
            for spec in specs:
                try:
                    decoded = decode(item.data, 50_000_000, spec.min_decode_size(2))
                    preprocess(decoded.image, spec, decoded.size)
                except ServiceError:
                    pass
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 200, f"peak RSS grew by {result.stdout.split()[-1]} MB"


@pytest.mark.parametrize(("width", "height"), [(5000, 40), (40, 5000), (3001, 17), (17, 3001)])
@pytest.mark.parametrize("resample", [2, 3])
def test_crop_window_resize_matches_the_full_resize(
    monkeypatch: pytest.MonkeyPatch, width: int, height: int, resample: int
) -> None:
    spec = Preprocessing(resize_shortest_edge=288, crop_height_width=(256, 256), resample=resample)
    image = photo_like(width, height, seed=5)
    full = preprocess(image, spec)
    monkeypatch.setattr(app.intake.preprocess, "MAX_RESIZED_PIXELS", 0)  # force the window path
    window = preprocess(image, spec)
    assert full.std() > 0.05  # a real image, not a flat one
    difference = np.abs(full - window) * 255
    assert difference.max() <= 2.0 + 1e-3 and (difference > 0.5).mean() < 0.05


def test_an_extreme_aspect_ratio_without_a_crop_is_a_clear_400(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.errors import InvalidInput

    spec = Preprocessing(resize_shortest_edge=256, crop_height_width=None)
    with pytest.raises(InvalidInput, match="less extreme aspect ratio") as raised:
        preprocess(photo_like(20_000, 2), spec)
    assert isinstance(raised.value, InvalidInput)


# --- hypothesis: the request parser ---------------------------------------------------------------

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # deterministic: the same examples on every run
    database=None,
    suppress_health_check=list(HealthCheck),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
parameter_values = (
    json_values
    | st.sampled_from(["softmax", "sigmoid", "none", "", "0.5", "-1", "1e309", "NaN", "3", "true"])
    | st.integers(-(2**70), 2**70)
)
parameters = st.dictionaries(
    st.sampled_from(
        [
            "top_k",
            "function_to_apply",
            "threshold",
            "mask_threshold",
            "overlap_mask_area_threshold",
            "subtask",
            "other",
        ]
    ),
    parameter_values,
    max_size=4,
)
image_inputs = st.sampled_from(
    [
        base64.b64encode(TINY_JPEG).decode(),
        "data:image/jpeg;base64," + base64.b64encode(TINY_JPEG).decode(),
        base64.urlsafe_b64encode(TINY_JPEG).decode(),
        "https://example.com/cat.jpg",
        "data:image/png,notbase64",
        "",
        "%%%",
    ]
) | st.text(max_size=40)


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    inputs=image_inputs | json_values,
    params=parameters | json_values,
    extra=st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    shape=st.sampled_from(["object", "inputs-only", "array", "scalar"]),
)
def test_fuzz_json_bodies(
    three_tasks: TestClient, route: str, inputs: object, params: object, extra: dict, shape: str
) -> None:
    payload: object = {**extra, "inputs": inputs, "parameters": params}
    if shape == "inputs-only":
        payload = {"inputs": inputs}
    elif shape == "array":
        payload = [payload]
    elif shape == "scalar":
        payload = inputs
    response = three_tasks.post(
        route, content=json.dumps(payload, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 400), response.text[:300]
    body = response.json()
    assert isinstance(body, list) if response.status_code == 200 else isinstance(body["error"], str)


def pathological_json(kind: str, size: int) -> str:
    """Raw JSON text of a shape parsers choke on: deep nesting, huge arrays, huge strings, huge numbers."""
    if kind == "deep-arrays":
        return "[" * size + "]" * size
    if kind == "deep-objects":
        return '{"a":' * size + "1" + "}" * size
    if kind == "wide-array":
        return "[" + ",".join(["0"] * size) + "]"
    if kind == "wide-object":
        return "{" + ",".join(f'"k{i}":0' for i in range(size)) + "}"
    if kind == "long-string":
        return '"' + "x" * size * 100 + '"'
    if kind == "long-integer":
        return "9" * size * 100
    return "1." + "5" * size * 100 + "e308"  # a float with as many digits, past the largest double


PATHOLOGICAL = [
    "deep-arrays",
    "deep-objects",
    "wide-array",
    "wide-object",
    "long-string",
    "long-integer",
    "long-float",
]
PLACES = [
    '"__X__"',
    '{"inputs": "__X__"}',
    '{"inputs": "%s", "parameters": "__X__"}',
    '{"inputs": "%s", "parameters": {"top_k": "__X__"}}',
    '{"inputs": "%s", "parameters": {"threshold": "__X__"}}',
    '{"inputs": "%s", "parameters": {"subtask": "__X__"}}',
    '{"inputs": "%s", "__X__": 1}',
    '{"inputs": "%s", "options": "__X__"}',
    '["__X__"]',
]


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    kind=st.sampled_from(PATHOLOGICAL),
    size=st.sampled_from([17, 200, 1_100, 10_000, 100_000]),
    place=st.sampled_from(PLACES),
)
def test_fuzz_pathological_json_is_a_4xx_in_every_position(
    three_tasks: TestClient, route: str, kind: str, size: int, place: str
) -> None:
    tiny = base64.b64encode(TINY_JPEG).decode()
    template = place.replace("%s", tiny)
    value = pathological_json(kind, size)
    if place.endswith('"__X__": 1}'):  # a key must be a string
        value = json.dumps(value[:100_000])
    body = template.replace('"__X__"', value)
    response = three_tasks.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 413), (
        kind,
        size,
        place,
        response.status_code,
        response.text[:200],
    )
    if response.status_code != 200:
        assert len(response.content) < 2_000  # the error never echoes the payload back
    assert three_tasks.post(route, content=TINY_JPEG).status_code == 200  # and it keeps serving


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    body=st.binary(max_size=300) | st.sampled_from([TINY_JPEG, TINY_JPEG[:100], b"{", b'{"inputs": 1}']),
    content_type=st.sampled_from(
        [
            "",
            "image/jpeg",
            "application/json",
            "application/octet-stream",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
        ]
    ),
    query=parameters,
)
def test_fuzz_raw_bodies_content_types_and_query(
    three_tasks: TestClient, route: str, body: bytes, content_type: str, query: dict
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    flat = {key: json.dumps(value) if not isinstance(value, str) else value for key, value in query.items()}
    response = three_tasks.post(route, content=body, headers=headers, params=flat)
    assert response.status_code in (200, 400), response.text[:300]
    if response.status_code == 400:
        assert isinstance(response.json()["error"], str)


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    fields=st.dictionaries(
        st.sampled_from(["top_k", "threshold", "parameters", "function_to_apply", "x"]),
        st.text(max_size=20),
        max_size=3,
    ),
    files=st.lists(st.sampled_from([TINY_JPEG, b"", b"junk"]), max_size=2),
)
def test_fuzz_multipart_forms(three_tasks: TestClient, route: str, fields: dict, files: list[bytes]) -> None:
    response = three_tasks.post(
        route,
        data=fields,
        files=[(f"file{i}", ("x.jpg", f, "image/jpeg")) for i, f in enumerate(files)] or None,
    )
    assert response.status_code in (200, 400), response.text[:300]


# --- schemathesis: the app against its own OpenAPI schema -------------------------------------------

schema = schemathesis.openapi.from_dict(create_app(ServerSettings(models=["schema-only"])).openapi())


@pytest.fixture(scope="module")
def live_url(model_dir: Path, seg_model_dir: Path, det_model_dir: Path) -> Iterator[str]:
    settings = make_settings(model_dir, models=[str(model_dir), str(seg_model_dir), str(det_model_dir)])
    app = create_app(settings)
    with live(app) as port:
        wait_for(lambda: not app.state.manager.loading, "the models to load", 120)
        yield f"http://127.0.0.1:{port}"


@schema.parametrize()
@settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
def test_openapi_schema(case: schemathesis.Case, live_url: str) -> None:
    case.call_and_validate(
        base_url=live_url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
        ],
    )


# --- safe model loading -----------------------------------------------------------------------------


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('owned')",))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_served_pickle_checkpoint_is_refused_without_running_code(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """A model folder whose weights are a malicious pickle: the service (either backend; the ONNX one would
    export from the weights) refuses it with a clear message, and the payload never runs."""
    import pickle
    import shutil

    folder = tmp_path / "evil-model"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.onnx", "onnx-cache", "*.safetensors"))
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": _Exploit()}, f)
    monkeypatch.chdir(tmp_path)
    with TestClient(create_app(make_settings(folder, backend=backend))) as client:
        wait_for(lambda: not client.app.state.manager.loading, "loading to end", 60)  # type: ignore[attr-defined]
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "never unpickles arbitrary objects" in ready.json()["error"]
    assert not (tmp_path / "PWNED").exists()


def test_models_yaml_cannot_construct_python_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.repository import CheckpointError
    from app.repository.models_yaml import served_models

    (tmp_path / "models.yaml").write_text(
        "models:\n  - !!python/object/apply:os.system ['touch PWNED']\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError):
        served_models(ServerSettings(model_repository=tmp_path))
    assert not (tmp_path / "PWNED").exists()
