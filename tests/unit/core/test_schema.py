"""Event parsing: every bad input gets the exact reason and field path, nothing raises."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import msgspec
import pytest

from streams.core.models import ErrorInfo, Event, Http, Reason, Rejection
from streams.core.schema import MAX_DEPTH, parse

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY = b"checkout"

MINIMAL: dict[str, Any] = {
    "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "event_type": "http_request",
    "source": "checkout",
    "timestamp": "2026-11-25T10:00:00.123Z",
}
FULL: dict[str, Any] = {
    **MINIMAL,
    "version": 1,
    "http": {
        "method": "POST",
        "route": "/api/orders/{id}",
        "status_code": 201,
        "duration_ms": 42.5,
    },
    "error": {"type": "TimeoutError", "message": "upstream timed out"},
    "user_id": "u-12345",
    "session_id": "s-9",
    "severity": "warning",
    "attributes": {"region": "eu-west-1", "tags": ["a", {"b": 1}]},
}
CE_STRUCTURED: dict[str, Any] = {
    "specversion": "1.0",
    "id": "ce-1",
    "type": "http_request",
    "source": "checkout",
    "time": "2026-11-25T10:00:00Z",
    "datacontenttype": "application/json",
    "data": {"http": {"status_code": 500, "duration_ms": 12}, "severity": "error"},
}
CE_HEADERS: list[tuple[str, bytes]] = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"ce-2"),
    ("ce_type", b"http_request"),
    ("ce_source", b"checkout"),
    ("ce_time", b"2026-11-25T10:00:00+01:00"),
    ("content-type", b"application/json"),
]


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


def native(**changes: Any) -> bytes:
    """MINIMAL with fields replaced; a value of ``...`` removes the field."""
    doc = {**MINIMAL, **changes}
    return encode({k: v for k, v in doc.items() if v is not ...})


def native_raw(name: str, raw: bytes) -> bytes:
    """MINIMAL plus one field whose JSON text is given verbatim."""
    return native()[:-1] + b', "' + name.encode() + b'": ' + raw + b"}"


def deep_json(levels: int) -> bytes:
    """Objects nested ``levels`` deep, built as text: json.dumps recurses and would fail."""
    return b'{"a": ' * (levels - 1) + b'{"leaf": 1}' + b"}" * (levels - 1)


def structured(**changes: Any) -> bytes:
    doc = {**CE_STRUCTURED, **changes}
    return encode({k: v for k, v in doc.items() if v is not ...})


def ce_headers(**changes: bytes | None) -> list[tuple[str, bytes]]:
    """CE_HEADERS with values replaced; ``None`` drops the header."""
    out = []
    for name, raw in CE_HEADERS:
        replaced = changes.get(name, raw)
        if replaced is not None:
            out.append((name, replaced))
    return out


def nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        node = {"a": node}
    return node


Case = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None, Reason, str | None]

BAD: dict[str, Case] = {
    # The message as a whole.
    "null-key": (None, native(), None, Reason.MISSING_KEY, None),
    "empty-key": (b"", native(), None, Reason.MISSING_KEY, None),
    "non-utf8-key": (b"\xffkey", native(), None, Reason.NOT_UTF8, "key"),
    "none-value": (KEY, None, None, Reason.EMPTY, None),
    "empty-value": (KEY, b"", None, Reason.EMPTY, None),
    "oversized": (KEY, native(attributes={"pad": "x" * 70_000}), None, Reason.TOO_LARGE, None),
    "non-utf8-in-string": (
        KEY,
        native(source="a").replace(b'"a"', b'"\xff"'),
        None,
        Reason.NOT_UTF8,
        None,
    ),
    "non-utf8-in-unknown-field": (
        KEY,
        native(extra="a").replace(b'"a"', b'"\xc3\x28"'),
        None,
        Reason.NOT_UTF8,
        None,
    ),
    "latin1-bytes": (KEY, '{"source": "Zürich"}'.encode("latin-1"), None, Reason.NOT_UTF8, None),
    "malformed-json": (KEY, b'{"event_id": oops}', None, Reason.MALFORMED_JSON, None),
    "truncated-json": (KEY, native()[:-5], None, Reason.MALFORMED_JSON, None),
    "trailing-garbage": (KEY, native() + b" x", None, Reason.MALFORMED_JSON, None),
    "nan": (KEY, native_raw("n", b"NaN"), None, Reason.MALFORMED_JSON, None),
    "lone-surrogate": (
        KEY,
        native_raw("s", b'"\\ud800"'),
        None,
        Reason.MALFORMED_JSON,
        None,
    ),
    "double-bom": (KEY, b"\xef\xbb\xbf\xef\xbb\xbf" + native(), None, Reason.MALFORMED_JSON, None),
    "json-array": (KEY, b"[1, 2]", None, Reason.NOT_AN_OBJECT, None),
    "json-string": (KEY, b'"event"', None, Reason.NOT_AN_OBJECT, None),
    "json-null": (KEY, b"null", None, Reason.NOT_AN_OBJECT, None),
    "json-number": (KEY, b"42", None, Reason.NOT_AN_OBJECT, None),
    "deep-attributes-1000": (
        KEY,
        native_raw("attributes", deep_json(1000)),
        None,
        Reason.TOO_DEEP,
        None,
    ),
    "deep-attributes-just-over": (
        KEY,
        native(attributes=nested(MAX_DEPTH)),
        None,
        Reason.TOO_DEEP,
        "attributes",
    ),
    "deep-unknown-field-1000": (
        KEY,
        native_raw("extra", deep_json(1000)),
        None,
        Reason.TOO_DEEP,
        None,
    ),
    # Required fields.
    "missing-event_id": (KEY, native(event_id=...), None, Reason.MISSING_FIELD, "event_id"),
    "missing-event_type": (KEY, native(event_type=...), None, Reason.MISSING_FIELD, "event_type"),
    "missing-source": (KEY, native(source=...), None, Reason.MISSING_FIELD, "source"),
    "missing-timestamp": (KEY, native(timestamp=...), None, Reason.MISSING_FIELD, "timestamp"),
    "empty-object": (KEY, b"{}", None, Reason.MISSING_FIELD, "event_id"),
    "event_id-int": (KEY, native(event_id=7), None, Reason.WRONG_TYPE, "event_id"),
    "event_id-null": (KEY, native(event_id=None), None, Reason.WRONG_TYPE, "event_id"),
    "event_type-list": (KEY, native(event_type=["x"]), None, Reason.WRONG_TYPE, "event_type"),
    "source-bool": (KEY, native(source=True), None, Reason.WRONG_TYPE, "source"),
    "timestamp-epoch-number": (
        KEY,
        native(timestamp=1_764_064_800),
        None,
        Reason.WRONG_TYPE,
        "timestamp",
    ),
    "event_id-empty": (KEY, native(event_id=""), None, Reason.INVALID_VALUE, "event_id"),
    "source-empty": (KEY, native(source=""), None, Reason.INVALID_VALUE, "source"),
    "event_id-257-chars": (KEY, native(event_id="e" * 257), None, Reason.INVALID_VALUE, "event_id"),
    # Timestamps.
    "timestamp-garbage": (
        KEY,
        native(timestamp="yesterday"),
        None,
        Reason.BAD_TIMESTAMP,
        "timestamp",
    ),
    "timestamp-naive": (
        KEY,
        native(timestamp="2026-11-25T10:00:00"),
        None,
        Reason.BAD_TIMESTAMP,
        "timestamp",
    ),
    "timestamp-date-only": (
        KEY,
        native(timestamp="2026-11-25"),
        None,
        Reason.BAD_TIMESTAMP,
        "timestamp",
    ),
    "timestamp-leap-second": (
        KEY,
        native(timestamp="2026-12-31T23:59:60Z"),
        None,
        Reason.BAD_TIMESTAMP,
        "timestamp",
    ),
    "timestamp-1970": (
        KEY,
        native(timestamp="1970-01-01T00:00:00Z"),
        None,
        Reason.BAD_TIMESTAMP,
        "timestamp",
    ),
    "timestamp-far-future": (
        KEY,
        native(timestamp="2027-01-01T00:00:00Z"),
        None,
        Reason.FUTURE_TIMESTAMP,
        "timestamp",
    ),
    "timestamp-25h-ahead": (
        KEY,
        native(timestamp="2026-11-26T13:00:00Z"),
        None,
        Reason.FUTURE_TIMESTAMP,
        "timestamp",
    ),
    "timestamp-year-9999-west": (
        KEY,
        native(timestamp="9999-12-31T23:59:59-23:59"),
        None,
        Reason.FUTURE_TIMESTAMP,
        "timestamp",
    ),
    # Optional sections.
    "http-status-string": (
        KEY,
        native(http={"status_code": "200"}),
        None,
        Reason.WRONG_TYPE,
        "http.status_code",
    ),
    "http-status-float": (
        KEY,
        native(http={"status_code": 200.0}),
        None,
        Reason.WRONG_TYPE,
        "http.status_code",
    ),
    "http-status-bool": (
        KEY,
        native(http={"status_code": True}),
        None,
        Reason.WRONG_TYPE,
        "http.status_code",
    ),
    "http-status-99": (
        KEY,
        native(http={"status_code": 99}),
        None,
        Reason.INVALID_VALUE,
        "http.status_code",
    ),
    "http-status-600": (
        KEY,
        native(http={"status_code": 600}),
        None,
        Reason.INVALID_VALUE,
        "http.status_code",
    ),
    "http-duration-negative": (
        KEY,
        native(http={"duration_ms": -1}),
        None,
        Reason.INVALID_VALUE,
        "http.duration_ms",
    ),
    "http-duration-string": (
        KEY,
        native(http={"duration_ms": "12ms"}),
        None,
        Reason.WRONG_TYPE,
        "http.duration_ms",
    ),
    "http-duration-overflow": (
        KEY,
        native_raw("http", b'{"duration_ms": 1e999}'),
        None,
        Reason.INVALID_VALUE,
        "http.duration_ms",
    ),
    "http-method-int": (KEY, native(http={"method": 1}), None, Reason.WRONG_TYPE, "http.method"),
    "http-array": (KEY, native(http=[200]), None, Reason.WRONG_TYPE, "http"),
    "error-string": (KEY, native(error="boom"), None, Reason.WRONG_TYPE, "error"),
    "error-message-object": (
        KEY,
        native(error={"message": {}}),
        None,
        Reason.WRONG_TYPE,
        "error.message",
    ),
    "user_id-int": (KEY, native(user_id=42), None, Reason.WRONG_TYPE, "user_id"),
    "session_id-too-long": (
        KEY,
        native(session_id="s" * 257),
        None,
        Reason.INVALID_VALUE,
        "session_id",
    ),
    "severity-unknown": (KEY, native(severity="fatal"), None, Reason.INVALID_VALUE, "severity"),
    "severity-uppercase": (KEY, native(severity="ERROR"), None, Reason.INVALID_VALUE, "severity"),
    "severity-int": (KEY, native(severity=3), None, Reason.WRONG_TYPE, "severity"),
    "attributes-array": (KEY, native(attributes=[1]), None, Reason.WRONG_TYPE, "attributes"),
    # Versions.
    "version-2": (KEY, native(version=2), None, Reason.UNKNOWN_VERSION, "version"),
    "version-2-other-shape": (
        KEY,
        encode({"version": 2, "id": "x"}),
        None,
        Reason.UNKNOWN_VERSION,
        "version",
    ),
    "schema_version-0": (
        KEY,
        native(schema_version=0),
        None,
        Reason.UNKNOWN_VERSION,
        "schema_version",
    ),
    "version-string": (KEY, native(version="1"), None, Reason.WRONG_TYPE, "version"),
    # CloudEvents structured mode.
    "ce-specversion-0.3": (
        KEY,
        structured(specversion="0.3"),
        None,
        Reason.UNKNOWN_VERSION,
        "specversion",
    ),
    "ce-specversion-number": (
        KEY,
        structured(specversion=1.0),
        None,
        Reason.WRONG_TYPE,
        "specversion",
    ),
    "ce-specversion-2-with-native-fields": (
        KEY,
        native(specversion="2.0"),
        None,
        Reason.UNKNOWN_VERSION,
        "specversion",
    ),
    "ce-missing-id": (KEY, structured(id=...), None, Reason.MISSING_FIELD, "id"),
    "ce-missing-time": (KEY, structured(time=...), None, Reason.MISSING_FIELD, "time"),
    "ce-time-naive": (
        KEY,
        structured(time="2026-11-25T10:00:00"),
        None,
        Reason.BAD_TIMESTAMP,
        "time",
    ),
    "ce-data-string": (KEY, structured(data="hello"), None, Reason.WRONG_TYPE, "data"),
    "ce-data-status-string": (
        KEY,
        structured(data={"http": {"status_code": "500"}}),
        None,
        Reason.WRONG_TYPE,
        "data.http.status_code",
    ),
    "ce-data-deep": (
        KEY,
        structured(data={"attributes": nested(MAX_DEPTH - 1)}),
        None,
        Reason.TOO_DEEP,
        "data.attributes",
    ),
    # CloudEvents binary mode.
    "ce-binary-specversion-0.3": (
        KEY,
        b"{}",
        ce_headers(ce_specversion=b"0.3"),
        Reason.UNKNOWN_VERSION,
        "ce_specversion",
    ),
    "ce-binary-missing-ce_id": (KEY, b"{}", ce_headers(ce_id=None), Reason.MISSING_FIELD, "ce_id"),
    "ce-binary-missing-specversion": (
        KEY,
        b"{}",
        ce_headers(ce_specversion=None),
        Reason.MISSING_FIELD,
        "ce_specversion",
    ),
    "ce-binary-empty-ce_type": (
        KEY,
        b"{}",
        ce_headers(ce_type=b""),
        Reason.INVALID_VALUE,
        "ce_type",
    ),
    "ce-binary-ce_source-not-utf8": (
        KEY,
        b"{}",
        ce_headers(ce_source=b"\xff"),
        Reason.NOT_UTF8,
        "ce_source",
    ),
    "ce-binary-bad-time": (KEY, b"{}", ce_headers(ce_time=b"now"), Reason.BAD_TIMESTAMP, "ce_time"),
    "ce-binary-future-time": (
        KEY,
        b"{}",
        ce_headers(ce_time=b"2030-01-01T00:00:00Z"),
        Reason.FUTURE_TIMESTAMP,
        "ce_time",
    ),
    "ce-binary-value-array": (KEY, b"[]", ce_headers(), Reason.NOT_AN_OBJECT, None),
    "ce-binary-value-malformed": (KEY, b"{", ce_headers(), Reason.MALFORMED_JSON, None),
    "ce-binary-value-severity": (
        KEY,
        b'{"severity": "loud"}',
        ce_headers(),
        Reason.INVALID_VALUE,
        "severity",
    ),
    "ce-binary-value-oversized": (
        KEY,
        encode({"attributes": {"p": "x" * 70_000}}),
        ce_headers(),
        Reason.TOO_LARGE,
        None,
    ),
    # PostgreSQL's text and jsonb cannot hold U+0000: refused wherever a string is kept.
    "nul-in-key": (b"check\x00out", native(), None, Reason.NUL_CHARACTER, "key"),
    "nul-in-event-id": (KEY, native(event_id="a\u0000b"), None, Reason.NUL_CHARACTER,
                        "event_id"),
    "nul-in-source": (KEY, native(source="bad\u0000source"), None, Reason.NUL_CHARACTER,
                      "source"),
    "nul-in-route": (KEY, native(http={"route": "/a\u0000"}), None, Reason.NUL_CHARACTER,
                     "http.route"),
    "nul-in-method": (KEY, native(http={"method": "\u0000"}), None, Reason.NUL_CHARACTER,
                      "http.method"),
    "nul-in-error-message": (KEY, native(error={"message": "x\u0000"}), None,
                             Reason.NUL_CHARACTER, "error.message"),
    "nul-in-error-type": (KEY, native(error={"type": "\u0000"}), None,
                          Reason.NUL_CHARACTER, "error.type"),
    "nul-in-user-id": (KEY, native(user_id="\u0000"), None, Reason.NUL_CHARACTER,
                       "user_id"),
    "nul-in-attribute-name": (KEY, native(attributes={"a\u0000": 1}), None,
                              Reason.NUL_CHARACTER, "attributes.a\u0000"),
    "nul-deep-in-attributes": (KEY, native(attributes={"l": [1, {"s": "\u0000"}]}), None,
                               Reason.NUL_CHARACTER, "attributes.l[1].s"),
    "nul-in-ce-data": (KEY, structured(data={"http": {"route": "\u0000"}}), None,
                       Reason.NUL_CHARACTER, "data.http.route"),
    "nul-in-ce-header": (KEY, b"", ce_headers(ce_source=b"a\x00"), Reason.NUL_CHARACTER,
                         "ce_source"),
    "nul-in-binary-data": (KEY, encode({"user_id": "\u0000"}), ce_headers(),
                           Reason.NUL_CHARACTER, "user_id"),
    # A repeated member name: which value counts depends on the parser.
    "duplicate-top-level": (KEY, native().replace(b"{", b'{"source": "other", ', 1), None,
                            Reason.DUPLICATE_KEY, "source"),
    "duplicate-in-http": (KEY, native_raw("http", b'{"status_code": 200, "status_code": 500}'),
                          None, Reason.DUPLICATE_KEY, "http.status_code"),
    "duplicate-deep": (KEY, native_raw("attributes", b'{"l": [{"a": 1, "a": 2}]}'), None,
                       Reason.DUPLICATE_KEY, "attributes.l[0].a"),
    "duplicate-behind-escaped-colon": (
        KEY, native_raw("attributes", b'{"k\\u003a": 1, "k:": 2, "x": 1, "x": 2}'), None,
        Reason.DUPLICATE_KEY, "attributes.k:"),
    "duplicate-in-binary-data": (KEY, b'{"severity": "info", "severity": "error"}',
                                 ce_headers(), Reason.DUPLICATE_KEY, "severity"),
}


@pytest.mark.parametrize(("key", "value", "headers", "reason", "field"), BAD.values(), ids=BAD)
def test_bad_input_is_rejected_with_reason_and_field(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    reason: Reason,
    field: str | None,
) -> None:
    result = parse(key, value, headers, now=NOW)

    assert isinstance(result, Rejection), result
    assert (result.reason, result.field) == (reason, field), result.message
    assert result.message
    if field is not None:
        assert field in result.message


def test_bad_corpus_is_large_and_covers_every_reason() -> None:
    assert len(BAD) >= 30
    # Not verdicts of the schema: the analyst's, the sinks' and the batcher's own failure.
    others = {Reason.AI_FAILED, Reason.DB_REJECTED, Reason.UNPROCESSABLE}
    assert {case[3] for case in BAD.values()} == set(Reason) - others


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (native(event_id=...), "required field event_id is missing"),
        (native(http={"status_code": "200"}), "http.status_code must be an integer, got a string"),
        (native(http={"status_code": 99}), "between 100 and 599"),
        (native(severity="fatal"), "debug, info, warning, error, critical"),
        (native(timestamp="2026-11-25T10:00:00"), "timestamp has no UTC offset"),
        (b"[]", "message must be a JSON object, got an array"),
    ],
    ids=["missing", "wrong-type", "range", "severity", "naive", "not-object"],
)
def test_messages_are_readable(value: bytes, message: str) -> None:
    result = parse(KEY, value, None, now=NOW)

    assert isinstance(result, Rejection)
    assert message in result.message


def test_minimal_native_event() -> None:
    assert parse(KEY, native(), None, now=NOW) == Event(
        event_id=MINIMAL["event_id"],
        event_type="http_request",
        source="checkout",
        timestamp=datetime(2026, 11, 25, 10, 0, 0, 123_000, tzinfo=UTC),
    )


def test_full_native_event() -> None:
    event = parse(KEY, encode(FULL), [("traceparent", b"00-1-2-01")], now=NOW)

    assert event == Event(
        event_id=MINIMAL["event_id"],
        event_type="http_request",
        source="checkout",
        timestamp=datetime(2026, 11, 25, 10, 0, 0, 123_000, tzinfo=UTC),
        http=Http(method="POST", route="/api/orders/{id}", status_code=201, duration_ms=42.5),
        error=ErrorInfo(type="TimeoutError", message="upstream timed out"),
        user_id="u-12345",
        session_id="s-9",
        severity="warning",
        attributes={"region": "eu-west-1", "tags": ["a", {"b": 1}]},
    )


def test_cloudevents_structured() -> None:
    event = parse(KEY, structured(), None, now=NOW)

    assert event == Event(
        event_id="ce-1",
        event_type="http_request",
        source="checkout",
        timestamp=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        http=Http(status_code=500, duration_ms=12.0),
        severity="error",
    )


def test_cloudevents_structured_without_data() -> None:
    event = parse(KEY, structured(data=...), None, now=NOW)

    assert isinstance(event, Event)
    assert event.http is None


def test_cloudevents_binary() -> None:
    event = parse(KEY, b'{"user_id": "u-1", "attributes": {"k": "v"}}', CE_HEADERS, now=NOW)

    assert event == Event(
        event_id="ce-2",
        event_type="http_request",
        source="checkout",
        timestamp=datetime(2026, 11, 25, 10, 0, tzinfo=timezone(timedelta(hours=1))),
        user_id="u-1",
        attributes={"k": "v"},
    )


def test_cloudevents_binary_without_data_is_accepted() -> None:
    event = parse(KEY, None, CE_HEADERS, now=NOW)

    assert isinstance(event, Event)
    assert event.event_id == "ce-2"


def test_integer_duration_becomes_float() -> None:
    event = parse(KEY, native(http={"duration_ms": 5}), None, now=NOW)

    assert isinstance(event, Event)
    assert event.http == Http(duration_ms=5.0)
    assert type(event.http.duration_ms) is float


@pytest.mark.parametrize(
    "value",
    [
        native(timestamp="2026-11-25T10:00:00+05:30"),
        native(timestamp="2026-11-25 10:00:00z"),
        native(timestamp="2026-11-26T11:59:59Z"),
        native(timestamp="2000-01-01T00:00:00Z"),
        native(version=1, schema_version=1),
        native(extra={"unknown": "fields are ignored"}),
        native(event_id="e" * 256, user_id="", severity=None, http=None),
        native(attributes=nested(MAX_DEPTH - 1)),
        native(http={"status_code": 100}),
        native(http={"status_code": 599, "duration_ms": 0}),
        native(source="Zürich 🚀"),
    ],
    ids=[
        "offset-0530",
        "space-and-lowercase-z",
        "just-under-a-day-ahead",
        "year-2000",
        "versions",
        "unknown-field",
        "boundaries",
        "depth-at-limit",
        "status-100",
        "status-599",
        "non-ascii",
    ],
)
def test_valid_edge_cases_are_accepted(value: bytes) -> None:
    assert isinstance(parse(KEY, value, None, now=NOW), Event)


def test_bom_is_ignored() -> None:
    """Decision: one UTF-8 byte order mark is accepted (RFC 8259 section 8.1 allows it)."""
    assert parse(KEY, b"\xef\xbb\xbf" + native(), None, now=NOW) == parse(
        KEY, native(), None, now=NOW
    )
    assert isinstance(parse(KEY, b"\xef\xbb\xbf" + structured(), None, now=NOW), Event)


def test_what_only_looks_like_a_nul_or_a_repeat_is_accepted() -> None:
    """An escaped backslash before u0000, a colon escape without a repeat, and the same
    name in two different objects are all fine."""
    for value in (native(attributes={"path": "C:\\u0000"}),
                  native_raw("attributes", b'{"k\\u003a": 1, "k": 2}'),
                  native(http={"route": "/a"}, attributes={"route": "/b"})):
        assert isinstance(parse(KEY, value, None, now=NOW), Event), value


def test_limits_follow_max_bytes() -> None:
    value = native()

    assert isinstance(parse(KEY, value, None, now=NOW, max_bytes=len(value)), Event)
    rejected = parse(KEY, value, None, now=NOW, max_bytes=len(value) - 1)
    assert isinstance(rejected, Rejection)
    assert rejected.reason is Reason.TOO_LARGE


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20261125)
    seeds = [native(), encode(FULL), structured(), b'{"a": [1, {"b": "c"}]}']
    for _ in range(3000):
        if rng.random() < 0.5:
            value = rng.randbytes(rng.randrange(0, 300))
        else:
            # Mutated valid events reach deeper into the validator than pure noise.
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            value = bytes(data)
        headers = ce_headers(ce_id=value[:8]) if rng.random() < 0.2 else None
        result = parse(rng.choice([KEY, None, value[:4]]), value, headers, now=NOW)
        assert isinstance(result, Event | Rejection)


def test_json_schema_matches_event_struct() -> None:
    """The published schema and the Event struct cannot drift apart."""
    text = resources.files("streams").joinpath("schemas/event.schema.json").read_text()
    schema = json.loads(text)
    fields = msgspec.structs.fields(Event)

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == {f.name for f in fields if f.required}
    assert set(schema["properties"]) - {"version", "schema_version"} == {f.name for f in fields}
    assert set(schema["properties"]["http"]["properties"]) == set(Http.__struct_fields__)
    assert set(schema["properties"]["error"]["properties"]) == set(ErrorInfo.__struct_fields__)
    severities = schema["properties"]["severity"]["enum"]
    assert set(severities) - {None} == {"debug", "info", "warning", "error", "critical"}
    for example in schema["examples"]:
        assert isinstance(parse(KEY, encode(example), None, now=NOW), Event)


def test_json_schema_refuses_nul_in_every_string_field() -> None:
    """Every string the schema names declares the NUL rule that parse enforces."""
    schema = json.loads(
        resources.files("streams").joinpath("schemas/event.schema.json").read_text())
    strings = [(name, spec) for name, spec in schema["properties"].items()
               if "string" in spec.get("type", []) and spec.get("format") != "date-time"]
    for section in ("http", "error"):
        strings += [(f"{section}.{name}", spec) for name, spec in
                    schema["properties"][section]["properties"].items()
                    if "string" in spec.get("type", [])]
    assert len(strings) == 9
    for name, spec in strings:
        assert spec.get("pattern") == "^[^\\u0000]*$", name
        assert isinstance(parse(KEY, native(**{name: "a\u0000"}) if "." not in name else
                                native(**{name.split(".")[0]: {name.split(".")[1]: "\u0000"}}),
                                None, now=NOW), Rejection), name
