"""The HTTP golden set (tests/golden/): every body form, parameter, error path and rendering of the three
tasks answers as recorded. Re-record deliberately with `python -m tests.golden.record`."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.golden.cases import GOLDEN_FILE, differences, record_all


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory, demo_models: Mapping[str, Path]) -> dict[str, Any]:
    return record_all(tmp_path_factory.mktemp("golden-models"), demo_models)


def expected() -> dict[str, Any]:
    return json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("group", sorted(expected()))
def test_responses_match_the_golden_set(played: dict[str, Any], group: str) -> None:
    golden = expected()[group]
    assert sorted(played[group]) == sorted(golden), "the set of requests changed: re-record it"
    problems = [p for name in golden for p in differences(golden[name], played[group][name], name)]
    assert not problems, "\n".join(problems[:20])


def test_the_golden_set_covers_every_task_and_error_status() -> None:
    golden = expected()
    statuses = {entry["status"] for group in golden.values() for entry in group.values()}
    assert {200, 400, 401, 404, 405, 413, 503} <= statuses
    assert {"classification", "segmentation", "detection", "service", "auth", "draining"} == set(golden)


def test_a_changed_answer_is_caught() -> None:
    """The comparison itself can fail: a score, a label, a pixel and a status change are each reported."""
    entry = expected()["classification"]["POST /classify | raw jpeg"]
    changed = json.loads(json.dumps(entry))
    changed["body"][0]["score"] *= 1.01
    changed["body"][1]["label"] = "something else"
    changed["status"] = 500
    assert len(differences(entry, changed)) == 3
    render = expected()["classification"]["POST /classify | render png"]
    inverted = json.loads(json.dumps(render))
    pixels = base64.b64decode(inverted["body"]["pixels"])
    inverted["body"]["pixels"] = base64.b64encode(bytes(255 - b for b in pixels)).decode()
    assert differences(render, inverted) == [".body: pixels differ"]
