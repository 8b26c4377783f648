"""Performance rows and error records from events, and what ingest hands on per fetch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from streams.core.batching import Batcher
from streams.core.ingest import Output, ingest
from streams.core.models import ErrorInfo, Event, Http, batch_id_for
from streams.core.rows import chunks, error_record, is_error, performance_row
from tests.support.records import Record

BASE = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
NOW = BASE.timestamp() + 60


def event(**fields: Any) -> Event:
    defaults: dict[str, Any] = {"event_id": "e1", "event_type": "http_request",
                                "source": "checkout", "timestamp": BASE}
    return Event(**{**defaults, **fields})


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, False),
    ({"http": Http(status_code=200, duration_ms=3.0)}, False),
    ({"http": Http(status_code=404)}, False),
    ({"http": Http(status_code=500)}, True),
    ({"http": Http(status_code=503, duration_ms=1.0)}, True),
    ({"severity": "error"}, True),
    ({"severity": "critical"}, True),
    ({"severity": "warning"}, False),
    ({"error": ErrorInfo(type="Timeout")}, True),
])
def test_is_error(fields: dict[str, Any], expected: bool) -> None:
    assert is_error(event(**fields)) is expected


def test_performance_row_is_the_table_row_and_travels_as_an_array() -> None:
    row = performance_row(event(http=Http(method="POST", route="/pay", status_code=502,
                                          duration_ms=812.5)), False)
    assert msgspec.structs.astuple(row) == (
        BASE, "checkout", "/pay", "POST", 502, 812.5, False, "e1")
    assert msgspec.json.encode(row) == (
        b'["2026-11-25T10:00:00Z","checkout","/pay","POST",502,812.5,false,"e1"]')


def test_error_record_says_what_failed() -> None:
    from_section = error_record(
        event(error=ErrorInfo(type="DbTimeout", message="pool exhausted"),
              http=Http(status_code=500)), "b1")
    assert (from_section.type, from_section.message) == ("DbTimeout", "pool exhausted")
    assert (from_section.event_id, from_section.batch_id) == ("e1", "b1")

    from_status = error_record(event(http=Http(method="GET", route="/cart", status_code=503)),
                               "b1")
    assert (from_status.type, from_status.message) == ("http_503", "GET /cart returned 503")

    from_severity = error_record(event(event_type="job", severity="critical"), "b1")
    assert (from_severity.type, from_severity.message) == ("job", "job with severity critical")


def test_chunks_cover_every_row_once() -> None:
    parts = list(chunks(range(2500), 1000))
    assert [len(p) for p in parts] == [1000, 1000, 500]
    assert [n for p in parts for n in p] == list(range(2500))
    assert list(chunks([], 10)) == []


def message(offset: int, **fields: Any) -> Record:
    body = {"event_id": f"e{offset}", "event_type": "http_request", "source": "checkout",
            "timestamp": (BASE + timedelta(seconds=offset)).isoformat(), **fields}
    return Record(offset, b"checkout", msgspec.json.encode(body))


def test_ingest_hands_on_rows_with_their_batch() -> None:
    batcher = Batcher("events", 2, 600)
    batcher.assign(0, 0, [])
    out = Output()
    records = [
        message(0, http={"route": "/a", "status_code": 200, "duration_ms": 5}),
        message(1, http={"route": "/a", "status_code": 500, "duration_ms": 9}),
        message(2, severity="error"),
        message(2, severity="error"),  # the same event again: no second row
        Record(3, b"checkout", b"{broken"),
        message(4),
    ]
    ingest(batcher, 0, records, NOW, 65536, out)

    assert [(r.event_id, r.success) for r in out.performance] == [("e0", True), ("e1", False)]
    first, second = batch_id_for("events", 0, 0, "checkout"), batch_id_for(
        "events", 0, 2, "checkout")
    assert [(e.event_id, b) for e, b in out.errors] == [("e1", first), ("e2", second)]
    assert [r.batch_id for r in out.sealed] == [first, second]
    assert [record.offset() for record, _ in out.rejected] == [3]
