"""Summarise a batch of events into the compact digest the analyst reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from streams.core.models import Digest, Event, LatencyStats

MAX_SAMPLES = 5
MAX_TOP_ERRORS = 5
ERROR_SEVERITIES = frozenset({"error", "critical"})


def is_error(event: Event) -> bool:
    """An error event: an error section, severity error/critical, or an HTTP 5xx."""
    if event.error is not None or event.severity in ERROR_SEVERITIES:
        return True
    http = event.http
    return http is not None and http.status_code is not None and http.status_code >= 500


def _percentile(ordered: Sequence[float], q: float) -> float:
    # Nearest-rank: deterministic and exact on the small samples a batch holds.
    rank = max(1, round(q * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def latency_stats(durations: Sequence[float]) -> LatencyStats | None:
    if not durations:
        return None
    ordered = sorted(durations)
    return LatencyStats(
        count=len(ordered),
        mean_ms=round(sum(ordered) / len(ordered), 3),
        p50_ms=_percentile(ordered, 0.50),
        p95_ms=_percentile(ordered, 0.95),
        p99_ms=_percentile(ordered, 0.99),
        max_ms=ordered[-1],
    )


def _sample(event: Event) -> dict[str, Any]:
    sample: dict[str, Any] = {"event_id": event.event_id, "event_type": event.event_type}
    if event.http is not None:
        sample["route"] = event.http.route
        sample["status_code"] = event.http.status_code
        sample["duration_ms"] = event.http.duration_ms
    if event.error is not None:
        sample["error"] = f"{event.error.type}: {event.error.message}"
    return sample


def summarize(events: Sequence[Event]) -> Digest:
    by_type: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    by_severity: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    users: set[str] = set()
    durations: list[float] = []
    error_samples: list[Event] = []
    for event in events:
        by_type[event.event_type] += 1
        if event.severity is not None:
            by_severity[event.severity] += 1
        if event.user_id is not None:
            users.add(event.user_id)
        http = event.http
        if http is not None:
            if http.status_code is not None:
                by_status[f"{http.status_code // 100}xx"] += 1
            if http.route is not None:
                routes[http.route] += 1
            if http.duration_ms is not None:
                durations.append(http.duration_ms)
        if is_error(event):
            if event.error is not None:
                label = f"{event.error.type or 'error'}: {event.error.message or ''}".strip()
            elif http is not None and http.status_code is not None:
                label = f"HTTP {http.status_code} {http.route or ''}".strip()
            else:
                label = event.event_type
            errors[label] += 1
            if len(error_samples) < MAX_SAMPLES:
                error_samples.append(event)
    # Errors first: they are what the analyst most needs to see.
    chosen = error_samples + [e for e in events[:MAX_SAMPLES] if e not in error_samples]
    return Digest(
        by_type=dict(by_type),
        by_status=dict(by_status),
        by_severity=dict(by_severity),
        error_count=sum(errors.values()),
        top_errors=errors.most_common(MAX_TOP_ERRORS),
        latency=latency_stats(durations),
        routes=dict(routes.most_common(10)),
        users=len(users),
        samples=[_sample(e) for e in chosen[:MAX_SAMPLES]],
    )
