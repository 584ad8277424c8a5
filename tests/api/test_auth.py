"""Bearer-token auth, CORS, and what the access log holds (and never holds)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.api.auth import TokenChecker, TokenFileError
from app.logs import ACCESS_LOGGER, JsonFormatter, TextFormatter
from tests.support import make_settings, mvit_process, serving

TOKENS = ("tok-alpha-1234", "tok-beta-5678")
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def secured(model_dir: Path) -> Iterator[TestClient]:
    with serving(model_dir, api_tokens=",".join(TOKENS), cors_origins=ORIGIN) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_inference_and_model_routes_need_a_token(secured: TestClient, jpeg_bytes: bytes) -> None:
    for method, path in (("POST", "/classify"), ("POST", "/models/anything"), ("GET", "/models")):
        missing = secured.request(method, path, content=jpeg_bytes)
        assert missing.status_code == 401, path
        assert "Authorization: Bearer" in missing.json()["error"]
        assert missing.headers["www-authenticate"] == 'Bearer realm="mvit"'
        wrong = secured.request(method, path, content=jpeg_bytes, headers=bearer("tok-alpha-1235"))
        assert wrong.status_code == 401
        assert wrong.json() == {"error": "The API token is not valid."}
        assert wrong.headers["www-authenticate"] == 'Bearer realm="mvit", error="invalid_token"'
    for scheme in ("Basic dG9rOnBhc3M=", "Bearer", "tok-alpha-1234"):
        assert secured.get("/models", headers={"Authorization": scheme}).status_code == 401
    for token in TOKENS:
        assert secured.post("/classify", content=jpeg_bytes, headers=bearer(token)).status_code == 200
    assert secured.get("/models", headers={"authorization": f"bearer {TOKENS[1]}"}).status_code == 200
    # unknown routes are closed too (nothing to learn from them without a token); 404 once authenticated
    assert secured.get("/nope").status_code == 401
    assert secured.get("/nope", headers=bearer(TOKENS[0])).status_code == 404


def test_health_ready_and_docs_stay_open_metrics_is_closed_by_default(secured: TestClient) -> None:
    for path in ("/health", "/ready", "/docs", "/openapi.json"):
        assert secured.get(path).status_code == 200, path
    assert secured.get("/metrics").status_code == 401
    assert secured.get("/metrics", headers=bearer(TOKENS[0])).status_code == 200


def test_which_probes_need_a_token_is_configurable(model_dir: Path) -> None:
    with serving(
        model_dir, api_tokens=TOKENS[0], metrics_require_token=False, ready_require_token=True
    ) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/ready").status_code == 401
        assert client.get("/ready", headers=bearer(TOKENS[0])).status_code == 200
        assert client.get("/health").status_code == 200


def test_every_token_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    checker = TokenChecker(["first", "second", "third"])
    assert checker.accepts("first") and checker.accepts("third") and not checker.accepts("firs")
    assert len(calls) == 9  # no early exit on a match: the timing does not say which token matched


def test_tokens_from_a_file(model_dir: Path, tmp_path: Path, jpeg_bytes: bytes) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\n\n  file-token-1  \nfile-token-2\n")
    with serving(model_dir, api_tokens_file=tokens, api_tokens="env-token") as client:
        for token in ("file-token-1", "file-token-2", "env-token"):
            assert client.post("/classify", content=jpeg_bytes, headers=bearer(token)).status_code == 200
        assert client.post("/classify", content=jpeg_bytes, headers=bearer("# one")).status_code == 401


@pytest.mark.parametrize(
    ("content", "fragment"), [(None, "cannot be read"), ("# nothing\n\n", "holds no tokens")]
)
def test_an_unusable_token_file_stops_the_service(
    model_dir: Path, tmp_path: Path, content: str | None, fragment: str
) -> None:
    tokens = tmp_path / "tokens"
    if content is not None:
        tokens.write_text(content)
    with pytest.raises(TokenFileError, match=fragment):
        create_app(make_settings(model_dir, api_tokens_file=tokens))
    result = mvit_process("serve", "--model", str(model_dir), "--api-tokens-file", str(tokens))
    assert result.returncode == 1 and fragment in result.stderr  # fails closed, before binding a port


def test_tokens_never_reach_logs_or_settings_repr(
    secured: TestClient, jpeg_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        secured.post("/classify", content=jpeg_bytes, headers=bearer(TOKENS[0]))
        secured.post("/classify", content=jpeg_bytes, headers=bearer("a-wrong-token-xyz"))
        secured.get("/ready", headers=bearer(TOKENS[1]))
    text = "\n".join(JsonFormatter().format(r) + TextFormatter().format(r) for r in caplog.records)
    assert caplog.records and not any(t in text for t in (*TOKENS, "a-wrong-token-xyz"))
    settings = secured.app.state.settings  # type: ignore[attr-defined]
    assert not any(t in repr(settings) or t in str(settings.model_dump()) for t in TOKENS)


# --- CORS ----------------------------------------------------------------------------------------


def test_cors_preflight_and_headers_for_an_allowed_origin(secured: TestClient, jpeg_bytes: bytes) -> None:
    preflight = secured.options(
        "/classify",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200  # browsers send no token with a preflight
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    ok = secured.post("/classify", content=jpeg_bytes, headers={"Origin": ORIGIN, **bearer(TOKENS[0])})
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "server-timing" in ok.headers["access-control-expose-headers"].lower()
    refused = secured.post("/classify", content=jpeg_bytes, headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_cors_refuses_other_origins_and_is_off_by_default(
    secured: TestClient, client: TestClient, jpeg_bytes: bytes
) -> None:
    evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert secured.options("/classify", headers=evil).status_code == 400
    answer = secured.post("/classify", content=jpeg_bytes, headers={**evil, **bearer(TOKENS[0])})
    assert "access-control-allow-origin" not in answer.headers
    default = client.post("/classify", content=jpeg_bytes, headers={"Origin": ORIGIN})
    assert default.status_code == 200 and "access-control-allow-origin" not in default.headers


# --- access log ----------------------------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == ACCESS_LOGGER]


def test_one_json_access_line_per_request(
    client: TestClient, jpeg_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        client.post("/classify?top_k=2", content=jpeg_bytes, headers={"x-request-id": "req-ok"})
        client.post("/classify", content=b"not an image", headers={"x-request-id": "req-bad"})
        client.get("/health")  # probes log at debug
    ok, bad = access_lines(caplog)
    assert ok["request_id"] == "req-ok" and ok["route"] == "/classify" and ok["method"] == "POST"
    assert ok["status"] == 200 and ok["model"] == "mobilevitv2-0.5-imagenet1k-256-random"
    assert ok["bytes_in"] == len(jpeg_bytes) and 0 < ok["bytes_out"] < 500
    assert set(ok["phases_ms"]) == {"decode", "preprocess", "queue", "inference", "postprocess"}  # type: ignore[arg-type]
    assert ok["duration_ms"] > 0 and ok["level"] == "info" and str(ok["client"]).startswith("testclient")
    assert ok["path"] == "/classify" and "top_k" not in json.dumps(ok)  # no query string
    assert bad["status"] == 400 and "not a recognised image" in str(bad["error"])
    assert all(len(json.dumps(line)) < 1000 for line in (ok, bad))  # no image bytes in a line


def test_access_log_can_be_turned_off(
    model_dir: Path, jpeg_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(model_dir, access_log=False) as client, caplog.at_level(logging.DEBUG):
        client.post("/classify", content=jpeg_bytes)
    assert not access_lines(caplog)
