"""Builders of realistic batches for tests: events in, an ``AnalysisRequest`` out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from streams.core.digest import summarize
from streams.core.models import (
    AnalysisRequest,
    ErrorInfo,
    Event,
    Http,
    SealReason,
    batch_id_for,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def sample_events(count: int = 100, key: str = "checkout") -> list[Event]:
    """HTTP traffic with every 8th request a 503 on /pay and one exception, 1 s apart."""
    events = []
    for i in range(count):
        failed = i % 8 == 0
        events.append(
            Event(
                event_id=f"evt-{key}-{i:05d}",
                event_type="http_request",
                source=key,
                timestamp=T0 + timedelta(seconds=i),
                http=Http(
                    method="POST" if failed else "GET",
                    route="/pay" if failed else f"/items/{i % 3}",
                    status_code=503 if failed else 200,
                    duration_ms=900.0 + i if failed else 20.0 + i % 7,
                ),
                user_id=f"user-{i % 11}",
            )
        )
    events.append(
        Event(
            event_id=f"evt-{key}-exception",
            event_type="error",
            source=key,
            timestamp=T0 + timedelta(seconds=count),
            error=ErrorInfo(type="PaymentTimeout", message="provider did not answer in 30s"),
            severity="error",
        )
    )
    return events


def make_analysis_request(events: Sequence[Event] | None = None) -> AnalysisRequest:
    """A sealed batch of ``events`` (``sample_events()`` by default), as the batcher sends it."""
    events = list(events) if events is not None else sample_events()
    key = events[0].source
    return AnalysisRequest(
        batch_id=batch_id_for("events", 0, 1000, key),
        key=key,
        topic="events",
        partition=0,
        first_offset=1000,
        last_offset=1000 + len(events) - 1,
        event_count=len(events),
        seal_reason=SealReason.COUNT,
        opened_at=events[0].timestamp,
        sealed_at=events[-1].timestamp,
        first_event_at=events[0].timestamp,
        last_event_at=events[-1].timestamp,
        digest=summarize(events),
        event_ids=[e.event_id for e in events],
    )
