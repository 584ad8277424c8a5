"""Request bodies: long base64 strings are cut out of JSON before json.loads and put back after, with
exactly json.loads' answer, errors included; base64 decoding with pybase64."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.api import body
from app.api.body import decode_base64_image, lift_long_strings, load_json
from app.errors import InvalidInput

LONG = 8  # body.LONG_STRING_CHARS, shortened so that small examples have long strings


@pytest.fixture(autouse=True)
def short_long_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body, "LONG_STRING_CHARS", LONG)


def outcome(text: bytes) -> tuple[str, Any]:
    try:
        return "value", load_json(text, "The body")
    except InvalidInput as exc:
        return "error", exc.message


def reference(text: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    with monkeypatch.context() as plain:
        plain.setattr(body, "LONG_STRING_CHARS", 10**12)  # nothing lifted: json.loads as it is
        return outcome(text)


base64ish = st.text(alphabet="ABCxyz019+/=-_", min_size=0, max_size=30) | st.binary(
    min_size=4, max_size=30
).map(lambda data: base64.b64encode(data).decode())
other_text = st.text(alphabet='ab"\\\n é\t:{}[],', max_size=12)
mixed = st.lists(base64ish | other_text, max_size=3).map("".join)  # e.g. base64 after an escaped quote
values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | base64ish | mixed,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(base64ish | mixed, children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    value=values,
    ascii=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(['"', "\\", ":", "x", ""])), max_size=3),
)
def test_lifting_gives_what_json_loads_gives(value: Any, edits: list[tuple[int, str]], ascii: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii)
    for position, insert in edits:  # mostly no longer JSON: the errors must match too
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + (insert == "") :]
    encoded = text.encode("utf-8", "surrogatepass")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert outcome(encoded) == reference(encoded, monkeypatch)


def test_long_base64_values_are_lifted_and_keys_and_escaped_strings_are_not() -> None:
    image = "QUJD" * 10
    text = json.dumps({"inputs": image, "QUJDQUJDQUJD": 1, "escaped": "QUJD\\/QUJD" * 3, "list": [image]})
    reduced, lifted = lift_long_strings(text.encode())
    assert list(lifted.values()) == [image, image]
    assert image.encode() not in reduced and b'"QUJDQUJDQUJD": 1' in reduced
    assert load_json(text.encode(), "The body") == json.loads(text)


def test_base64_after_an_escaped_quote_stays_in_its_string() -> None:
    text = json.dumps(['"x', '"QUJDQUJDQUJD']).encode()
    assert load_json(text, "The body") == ['"x', '"QUJDQUJDQUJD']


def test_a_placeholder_written_by_the_caller_stays_what_it_is() -> None:
    """Placeholders carry a random nonce per body: a caller cannot name one."""
    text = json.dumps({"inputs": "QUJD" * 10, "x": "mvit-lifted-0000000000000000-0"}).encode()
    assert load_json(text, "The body")["x"] == "mvit-lifted-0000000000000000-0"


@pytest.mark.parametrize(
    "wrap", [lambda t: t, lambda t: f"data:image/png;base64,{t}", lambda t: " \n".join(t)]
)
def test_base64_forms(wrap: Any) -> None:
    data = bytes(range(256)) * 3
    for encoded in (base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode().rstrip("=")):
        assert decode_base64_image(wrap(encoded)) == data


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("QUJ*", "not valid base64"),
        ("Q===", "not valid base64"),
        ("QQ==QQ==", "not valid base64"),
        ("  ", "is empty"),
        ("HTTPS://example.com/cat.jpg", "URL inputs are not fetched"),
        ("data:image/png,QUJD", "must be base64-encoded"),
    ],
)
def test_bad_base64_is_refused(value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_base64_image(value)
