"""A message whose handling raises costs only itself: the rest of the fetch goes on."""

from __future__ import annotations

from streams.core.batching import Batcher
from streams.core.ingest import Output, ingest
from streams.core.models import AnalysisRequest, Event, Reason, SealReason
from tests.support.records import Record

NOW = 1_764_064_800.0  # 2025-11-25T10:00:00Z


def event(event_id: str) -> bytes:
    return (b'{"event_id": "%s", "event_type": "t", "source": "s", '
            b'"timestamp": "2025-11-25T09:59:00Z"}' % event_id.encode())


class Faulty(Batcher):
    """A batcher with a bug that one kind of event trips over."""

    def add(self, partition: int, offset: int, key: str, event: Event, now: float,
            out: list[AnalysisRequest]) -> str | None:
        if event.event_id == "trips":
            raise KeyError("a bug")
        return super().add(partition, offset, key, event, now, out)


def test_an_event_that_makes_batching_raise_is_set_aside_and_the_rest_batched() -> None:
    batcher = Faulty("events", max_events=100, max_age_seconds=600)
    batcher.assign(0, 0, [])
    records = [Record(0, b"s", event("a")), Record(1, b"s", event("trips")),
               Record(2, b"s", event("b"))]
    out = Output()

    ingest(batcher, 0, records, NOW, 65536, out)

    [(record, rejection)] = out.rejected
    assert record.offset() == 1
    assert rejection.reason is Reason.UNPROCESSABLE
    assert rejection.message == "KeyError: 'a bug'"
    assert batcher.open_batches() == 1
    batcher.drain(SealReason.SHUTDOWN, NOW, out.sealed)
    [sealed] = out.sealed
    assert sealed.event_ids == ["a", "b"]
