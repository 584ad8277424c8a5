"""The Open Inference Protocol routes in process: the wire format, every malformed request a 400 with a
message, and auth, limits, 429 and drain exactly as on the Hugging Face routes."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.api.oip_body import bytes_elements, parse_infer_request, serialize_bytes
from app.errors import InvalidInput
from tests.support import (
    MODEL_ID,
    assert_matches,
    encode,
    gated_app,
    metric,
    pending,
    photo_like,
    rejected,
    serving,
    wait_for,
    wait_ready,
)

INFER = f"/v2/models/{MODEL_ID}/infer"


def json_request(photos: list[bytes], **parameters: Any) -> dict[str, Any]:
    data = [base64.b64encode(photo).decode() for photo in photos]
    request: dict[str, Any] = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}]
    }
    if parameters:
        request["parameters"] = parameters
    return request


def binary_request(photos: list[bytes], **extra: Any) -> tuple[bytes, dict[str, str]]:
    raw = serialize_bytes(np.array(photos, dtype=object))
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(photos)],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def binary_outputs(response: Any) -> dict[str, np.ndarray]:
    """Decodes a binary infer response the way tritonclient does."""
    length = int(response.headers["inference-header-content-length"])
    header, data = json.loads(response.content[:length]), response.content[length:]
    arrays, offset = {}, 0
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        chunk, offset = data[offset : offset + size], offset + size
        count = int(np.prod(output["shape"]))
        if output["datatype"] == "BYTES":
            arrays[output["name"]] = np.array(bytes_elements(chunk, count), dtype=object).reshape(
                output["shape"]
            )
        else:
            dtype = {"FP32": "<f4", "INT32": "<i4", "UINT8": "u1"}[output["datatype"]]
            arrays[output["name"]] = np.frombuffer(chunk, dtype=dtype).reshape(output["shape"])
    assert offset == len(data)
    return arrays


def test_json_and_binary_requests_give_the_same_answer(client: TestClient, jpeg_bytes: bytes) -> None:
    photos = [jpeg_bytes, encode(photo_like(300, 200, seed=9), "PNG")]
    as_json = client.post(INFER, json=json_request(photos, top_k=4))
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    assert as_json.headers["x-model-id"] == MODEL_ID
    answer = as_json.json()
    assert answer["model_name"] == MODEL_ID and answer["model_version"] == "1"
    by_name = {output["name"]: output for output in answer["outputs"]}
    assert by_name["labels"]["shape"] == [2, 4] and by_name["scores"]["datatype"] == "FP32"

    body, headers = binary_request(photos, parameters={"top_k": 4, "binary_data_output": True}, id="req-7")
    as_binary = client.post(INFER, content=body, headers=headers)
    assert as_binary.status_code == 200 and as_binary.headers["content-type"] == "application/octet-stream"
    arrays = binary_outputs(as_binary)
    assert [label.decode() for label in arrays["labels"].ravel()] == by_name["labels"]["data"]
    # Batched differently (two images in one call or not), so equal within float32 noise, not bitwise.
    assert_matches(arrays["scores"].ravel(), np.float32(by_name["scores"]["data"]), name="scores")
    header = json.loads(as_binary.content[: int(as_binary.headers["inference-header-content-length"])])
    assert header["id"] == "req-7"

    hf = client.post("/classify", content=jpeg_bytes, params={"top_k": 4}).json()
    assert [item["label"] for item in hf] == by_name["labels"]["data"][:4]


def test_only_the_requested_outputs_come_back(client: TestClient, jpeg_bytes: bytes) -> None:
    request = {
        **json_request([jpeg_bytes]),
        "outputs": [{"name": "scores", "parameters": {"binary_data": False}}],
    }
    outputs = client.post(INFER, json=request).json()["outputs"]
    assert [output["name"] for output in outputs] == ["scores"] and len(outputs[0]["data"]) == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: {**r, "inputs": []}, "exactly one tensor"),
        (lambda r: {"inputs": [{**r["inputs"][0], "name": "pixels"}]}, "this model's input is 'image'"),
        (lambda r: {"inputs": [{**r["inputs"][0], "datatype": "UINT8"}]}, "it must be BYTES"),
        (lambda r: {"inputs": [{**r["inputs"][0], "shape": [1, 1]}]}, "it must be [N]"),
        (lambda r: {"inputs": [{**r["inputs"][0], "shape": [2]}]}, "a list of 2 base64 strings"),
        (lambda r: {"inputs": [{**r["inputs"][0], "data": [7]}]}, "must be a base64 string"),
        (lambda r: {"inputs": [{**r["inputs"][0], "data": ["%%%"]}]}, "not valid base64"),
        (lambda r: {"inputs": [{**r["inputs"][0], "data": ["https://example.com/a.jpg"]}]}, "not fetched"),
        (
            lambda r: {"inputs": [{**r["inputs"][0], "parameters": {"shared_memory_region": "x"}}]},
            "Shared-memory",
        ),
        (lambda r: {**r, "parameters": {"top_q": 1}}, "Unknown parameter"),
        (lambda r: {**r, "parameters": {"top_k": 0}}, "at least 1"),
        (lambda r: {**r, "parameters": {"binary_data_output": "yes"}}, "true or false"),
        (lambda r: {**r, "outputs": [{"name": "logits"}]}, "Unknown output(s) 'logits'"),
        (
            lambda r: {**r, "outputs": [{"name": "scores", "parameters": {"classification": 3}}]},
            "not supported",
        ),
        (lambda r: {**r, "id": 5}, "'id' must be a string"),
        (lambda r: [r], "must be a JSON object"),
    ],
)
def test_malformed_requests_get_400_with_the_reason(
    client: TestClient, jpeg_bytes: bytes, change: Any, message: str
) -> None:
    response = client.post(INFER, json=change(json_request([jpeg_bytes])))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda body, length: (body, "x"), "Inference-Header-Content-Length"),
        (lambda body, length: (body, str(len(body) + 1)), "Inference-Header-Content-Length"),
        (lambda body, length: (body + b"\0", length), "binary_data_size"),
        (lambda body, length: (body[:-1], length), "binary_data_size"),
        (lambda body, length: (body, str(int(length) - 1)), "not valid JSON"),
    ],
)
def test_broken_binary_bodies_get_400(
    client: TestClient, jpeg_bytes: bytes, mangle: Any, message: str
) -> None:
    body, headers = binary_request([jpeg_bytes])
    body, length = mangle(body, headers["Inference-Header-Content-Length"])
    response = client.post(INFER, content=body, headers={"Inference-Header-Content-Length": length})
    assert response.status_code == 400 and message in response.json()["error"], response.text


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000, "-1", " "])
def test_odd_header_lengths_get_400(client: TestClient, jpeg_bytes: bytes, length: str) -> None:
    body, _ = binary_request([jpeg_bytes])
    response = client.post(
        INFER, content=body, headers={"Inference-Header-Content-Length": length.encode("latin-1")}
    )
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]


def test_protocol_details(client: TestClient, jpeg_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # binary_data_output is the default of the outputs a request names
    request = {
        **json_request([jpeg_bytes]),
        "outputs": [{"name": "scores"}],
        "parameters": {"binary_data_output": True},
    }
    assert client.post(INFER, json=request).headers["content-type"] == "application/octet-stream"
    # an id that UTF-8 cannot encode comes back escaped
    answer = client.post(INFER, content=json.dumps({**json_request([jpeg_bytes]), "id": "\ud800"}).encode())
    assert answer.status_code == 200 and json.loads(answer.content)["id"] == "\ud800"
    # null parameters mean the default, as on the HF routes
    nulls = client.post(INFER, json=json_request([jpeg_bytes], top_k=None, function_to_apply=None)).json()
    assert nulls["outputs"][0]["shape"] == [1, 5]
    # a parameter error is the request's, not an image's
    bad = client.post(INFER, json=json_request([jpeg_bytes] * 2, top_k=0)).json()["error"]
    assert bad.startswith("Parameter 'top_k'")
    duplicate = {**json_request([jpeg_bytes]), "outputs": [{"name": "scores"}, {"name": "scores"}]}
    assert "asked for twice" in client.post(INFER, json=duplicate).json()["error"]
    # a huge N is refused from the shape alone
    huge = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [10**9], "parameters": {"binary_data_size": 0}}
        ]
    }
    header = json.dumps(huge).encode()
    refused = client.post(
        INFER, content=header, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert refused.status_code == 400 and "at most" in refused.json()["error"]
    # outputs too big for JSON must be asked for as binary data
    monkeypatch.setattr("app.api.oip_body.MAX_JSON_ELEMENTS", 4)
    too_big = client.post(INFER, json=json_request([jpeg_bytes]))
    assert too_big.status_code == 400 and "binary_data" in too_big.json()["error"]
    assert (
        client.post(
            INFER, json={**json_request([jpeg_bytes]), "parameters": {"binary_data_output": True}}
        ).status_code
        == 200
    )


def test_element_lengths_must_match_the_data() -> None:
    with pytest.raises(InvalidInput, match="only 2 follow"):
        bytes_elements(b"\x05\0\0\0ab", 1)
    with pytest.raises(InvalidInput, match="ends before element 2"):
        bytes_elements(b"\x01\0\0\0a", 2)
    with pytest.raises(InvalidInput, match="follow the 1 elements"):
        bytes_elements(b"\x01\0\0\0ab", 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.integers(0, 400).map(str)))
def test_any_body_parses_or_is_refused_with_invalid_input(body: bytes, header_length: str | None) -> None:
    with contextlib.suppress(InvalidInput):
        parse_infer_request(body, header_length, max_images=8)


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=8))
def test_bytes_elements_round_trip(elements: list[bytes]) -> None:
    assert (
        bytes_elements(serialize_bytes(np.array([*elements, b""], dtype=object)[:-1]), len(elements))
        == elements
    )


def test_unknown_models_versions_and_compressed_bodies(client: TestClient, jpeg_bytes: bytes) -> None:
    assert client.post("/v2/models/nope/infer", json=json_request([jpeg_bytes])).status_code == 404
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get(f"/v2/models/{MODEL_ID}/versions/2/ready").status_code == 404
    assert client.get(f"/v2/models/{MODEL_ID}/versions/1/ready").json() == {"name": MODEL_ID, "ready": True}
    assert client.get(f"/v2/models/{MODEL_ID}/versions/1").json()["versions"] == ["1"]
    gz = client.post(INFER, content=b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
    assert gz.status_code == 400 and "Compressed" in gz.json()["error"]


def test_images_of_different_sizes_need_separate_requests_for_segmentation(seg_model_dir: Path) -> None:
    with serving(seg_model_dir) as client:
        name = client.get("/models").json()[0]["id"]
        photos = [encode(photo_like(64, 48, seed=1)), encode(photo_like(48, 64, seed=2))]
        mixed = client.post(f"/v2/models/{name}/infer", json=json_request(photos))
        assert mixed.status_code == 400 and "separate requests" in mixed.json()["error"]
        same = client.post(f"/v2/models/{name}/infer", json=json_request([photos[0], photos[0]]))
        assert same.json()["outputs"][0]["shape"] == [2, 48, 64]


def test_auth_applies_and_probes_stay_open(model_dir: Path, jpeg_bytes: bytes) -> None:
    token = "t0ken-for-oip-tests-0123456789"
    with serving(model_dir, api_tokens=[token]) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post(INFER, json=json_request([jpeg_bytes])).status_code == 401
        assert client.get(f"/v2/models/{MODEL_ID}").status_code == 401
        authorized = client.post(
            INFER, json=json_request([jpeg_bytes]), headers={"Authorization": f"Bearer {token}"}
        )
        assert authorized.status_code == 200


def test_metrics_count_images_and_label_the_route(client: TestClient, jpeg_bytes: bytes) -> None:
    route = f'mvit_request_duration_seconds_count{{endpoint="/v2/models/{{name}}/infer",model="{MODEL_ID}",status="200"}}'
    phases = f'mvit_phase_duration_seconds_count{{model="{MODEL_ID}",phase="inference"}}'
    before_route, before_phases = metric(client, route), metric(client, phases)
    assert client.post(INFER, json=json_request([jpeg_bytes] * 3)).status_code == 200
    assert metric(client, route) == before_route + 1
    assert metric(client, phases) == before_phases + 3


def test_a_request_takes_one_place_per_image(model_dir: Path, jpeg_bytes: bytes) -> None:
    with gated_app(model_dir, max_queue_size=3) as (app, backends), TestClient(app) as client:
        wait_ready(client)
        too_many = client.post(INFER, json=json_request([jpeg_bytes] * 4))
        assert too_many.status_code == 400 and "at most 3 at once" in too_many.json()["error"]
        backend = backends[0]
        backend.armed = True
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(client.post, INFER, json=json_request([jpeg_bytes] * 2))
            wait_for(lambda: pending(app) == 2 and backend.entered.is_set(), "two images held")
            started = time.perf_counter()
            refused = client.post(INFER, json=json_request([jpeg_bytes] * 2))
            assert time.perf_counter() - started < 2
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert "busy" in refused.json()["error"]
            backend.gate.set()
            assert held.result().status_code == 200
        assert metric(client, rejected("queue_full")) == 1
        assert pending(app) == 0


def test_draining_refuses_new_work_and_reports_not_ready(model_dir: Path, jpeg_bytes: bytes) -> None:
    with serving(model_dir) as client:
        client.app.state.lifecycle.start_draining()  # type: ignore[attr-defined]
        for response in (
            client.post(INFER, json=json_request([jpeg_bytes])),
            client.get("/v2/health/ready"),
            client.get(f"/v2/models/{MODEL_ID}/ready"),
        ):
            assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert client.get("/v2/health/live").status_code == 200
