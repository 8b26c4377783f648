"""Summarise a batch of events into the compact digest the analyst reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.core.models import Digest, Event, LatencyStats

MAX_SAMPLES = 5
MAX_TOP_ERRORS = 5
ERROR_SEVERITIES = frozenset({"error", "critical"})
_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}


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


def _bump(counts: dict[str, int], label: str) -> None:
    counts[label] = counts.get(label, 0) + 1


def summarize(events: Sequence[Event]) -> Digest:
    # Plain dicts, not Counter: this runs for every sealed batch on the hot path.
    by_type: dict[str, int] = {}
    by_status: dict[str, int] = {}
    by_severity: dict[str, int] = {}
    routes: dict[str, int] = {}
    errors: dict[str, int] = {}
    users: set[str] = set()
    durations: list[float] = []
    error_samples: list[Event] = []
    for event in events:
        by_type[event.event_type] = by_type.get(event.event_type, 0) + 1
        severity = event.severity
        if severity is not None:
            by_severity[severity] = by_severity.get(severity, 0) + 1
        if event.user_id is not None:
            users.add(event.user_id)
        http = event.http
        status = None
        if http is not None:
            status = http.status_code
            if status is not None:
                label = _STATUS_CLASS[status // 100]
                by_status[label] = by_status.get(label, 0) + 1
            if http.route is not None:
                routes[http.route] = routes.get(http.route, 0) + 1
            if http.duration_ms is not None:
                durations.append(http.duration_ms)
        if event.error is not None:
            _bump(errors, f"{event.error.type or 'error'}: {event.error.message or ''}".strip())
        elif severity in ERROR_SEVERITIES or (status is not None and status >= 500):
            _bump(errors, f"HTTP {status} {http.route or ''}".strip()
                  if http is not None and status is not None else event.event_type)
        else:
            continue
        if len(error_samples) < MAX_SAMPLES:
            error_samples.append(event)
    # Errors first: they are what the analyst most needs to see.
    picked = {id(e) for e in error_samples}  # identity: struct equality compares fields
    chosen = error_samples + [e for e in events[:MAX_SAMPLES] if id(e) not in picked]
    top_errors = sorted(errors.items(), key=lambda item: (-item[1], item[0]))[:MAX_TOP_ERRORS]
    top_routes = sorted(routes.items(), key=lambda item: (-item[1], item[0]))[:10]
    return Digest(
        by_type=by_type,
        by_status=by_status,
        by_severity=by_severity,
        error_count=sum(errors.values()),
        top_errors=top_errors,
        latency=latency_stats(durations),
        routes=dict(top_routes),
        users=len(users),
        samples=[_sample(e) for e in chosen[:MAX_SAMPLES]],
    )
