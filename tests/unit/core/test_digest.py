"""The batch digest: counts, errors, latency percentiles, samples."""

from __future__ import annotations

from datetime import UTC, datetime

from streams.core.digest import latency_stats, summarize
from streams.core.models import ErrorInfo, Event, Http

TS = datetime(2026, 11, 25, tzinfo=UTC)


def http(n: int, status: int, duration: float, route: str = "/a") -> Event:
    return Event(event_id=f"h{n}", event_type="http_request", source="s", timestamp=TS,
                 http=Http(method="GET", route=route, status_code=status, duration_ms=duration),
                 user_id=f"u{n % 3}")


def test_latency_percentiles_are_nearest_rank() -> None:
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats is not None
    assert (stats.count, stats.p50_ms, stats.p95_ms, stats.p99_ms, stats.max_ms) == (
        100, 50.0, 95.0, 99.0, 100.0)
    assert stats.mean_ms == 50.5
    assert latency_stats([]) is None
    one = latency_stats([7.0])
    assert one is not None and one.p50_ms == one.p99_ms == 7.0


def test_summarize_counts_types_statuses_errors_and_users() -> None:
    events = [http(i, 200, 10.0 + i) for i in range(8)]
    events.append(http(8, 503, 900.0, route="/pay"))
    events.append(Event(event_id="x", event_type="error", source="s", timestamp=TS,
                        error=ErrorInfo(type="Timeout", message="db"), severity="error"))
    events.append(Event(event_id="c", event_type="job", source="s", timestamp=TS,
                        severity="critical"))
    digest = summarize(events)
    assert digest.by_type == {"http_request": 9, "error": 1, "job": 1}
    assert digest.by_status == {"2xx": 8, "5xx": 1}
    assert digest.by_severity == {"error": 1, "critical": 1}
    assert digest.error_count == 3
    assert dict(digest.top_errors) == {"HTTP 503 /pay": 1, "Timeout: db": 1, "job": 1}
    assert digest.users == 3
    assert digest.latency is not None and digest.latency.max_ms == 900.0
    assert digest.routes == {"/a": 8, "/pay": 1}
    # Errors lead the samples: they are what an analyst needs to see first.
    assert [s["event_id"] for s in digest.samples][:3] == ["h8", "x", "c"]
    assert len(digest.samples) == 5


def test_summarize_is_deterministic() -> None:
    events = [http(i, 200 if i % 4 else 500, float(i)) for i in range(50)]
    assert summarize(events) == summarize(list(events))
