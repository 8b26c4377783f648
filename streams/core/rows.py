"""Rows for Grafana from single events: performance rows and error records.

The batcher derives them while it batches, so that they carry the id of the batch the
event is in. Both are keyed by the event's id in their tables, so deriving them again
after a crash or a replay adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

from streams.core.models import ErrorRecord, Event, PerformanceRow

ERROR_SEVERITIES = frozenset({"error", "critical", "fatal"})

#: Rows per Kafka message on ``performance`` and ``errors``: a fetch's rows travel in few
#: messages (messages, not rows, are what costs at event volume), well under the topics'
#: 1 MiB limit (a row is about 200 bytes).
ROWS_PER_MESSAGE = 1000

T = TypeVar("T")


def is_error(event: Event) -> bool:
    """An event that reports a failure: an error section, an error severity or HTTP 5xx."""
    if event.error is not None or event.severity in ERROR_SEVERITIES:
        return True
    http = event.http
    return http is not None and http.status_code is not None and http.status_code >= 500


def performance_row(event: Event, success: bool) -> PerformanceRow:
    """The row of an event with a duration (``http.duration_ms`` set); ``success`` is
    ``not is_error(event)``, which the caller has at hand."""
    http = event.http
    assert http is not None and http.duration_ms is not None, "a timed event"
    return PerformanceRow(event.timestamp, event.source, http.route, http.method,
                          http.status_code, http.duration_ms, success, event.event_id)


def error_record(event: Event, batch_id: str) -> ErrorRecord:
    """The record of an error event; type and message fall back from the error section
    to the HTTP status to the event type, so that every record says what failed."""
    error, http = event.error, event.http
    kind = error.type if error is not None else None
    message = error.message if error is not None else None
    if http is not None and http.status_code is not None and http.status_code >= 500:
        kind = kind or f"http_{http.status_code}"
        message = message or f"{http.method or '?'} {http.route or '?'} returned {http.status_code}"
    return ErrorRecord(
        time=event.timestamp, source=event.source, type=kind or event.event_type,
        message=message or f"{event.event_type} with severity {event.severity}",
        event_id=event.event_id, batch_id=batch_id,
    )


def chunks(rows: Iterable[T], size: int = ROWS_PER_MESSAGE) -> Iterator[list[T]]:
    """``rows`` in lists of at most ``size``: the messages they travel in."""
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk
