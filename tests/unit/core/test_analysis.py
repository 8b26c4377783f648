"""The built-in statistical analyzer, on digests built by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.core.analysis import (
    ANALYZER_VERSION,
    MIN_BASELINE_BATCHES,
    analyze,
    estimate_tokens,
)
from streams.core.models import (
    AnalysisRequest,
    Digest,
    InsightSeverity,
    LatencyStats,
    SealReason,
)

TS = datetime(2026, 11, 25, tzinfo=UTC)


def digest(
    events: int = 100, errors: int = 1, p95: float = 80.0, server_errors: int = 0,
    top_errors: list[tuple[str, int]] | None = None, timed: int | None = None,
) -> Digest:
    timed = events - 10 if timed is None else timed
    return Digest(
        by_type={"http_request": events - 10, "login": 10},
        by_status={"2xx": events - 10 - server_errors, "5xx": server_errors},
        by_severity={},
        error_count=errors,
        top_errors=top_errors if top_errors is not None else (
            [("Timeout: db", errors)] if errors else []),
        latency=LatencyStats(count=timed, mean_ms=p95 / 2, p50_ms=p95 / 3, p95_ms=p95,
                             p99_ms=p95 * 1.5, max_ms=p95 * 2) if timed else None,
        routes={"/cart": events - 60, "/checkout": 50},
        users=12,
        samples=[],
    )


def request(d: Digest, events: int = 100) -> AnalysisRequest:
    return AnalysisRequest(
        batch_id="b1", key="checkout", topic="events", partition=0, first_offset=0,
        last_offset=events - 1, event_count=events, seal_reason=SealReason.COUNT,
        opened_at=TS, sealed_at=TS + timedelta(seconds=60), first_event_at=TS,
        last_event_at=TS + timedelta(seconds=50), digest=d,
        event_ids=[f"e{i}" for i in range(events)],
    )


# A steady source: 0-2 errors per 100 events, p95 80-84 ms.
HISTORY = [digest(errors=i % 3, p95=80.0 + i % 5) for i in range(20)]


def test_version() -> None:
    assert ANALYZER_VERSION == "builtin/1"


def test_healthy_batch_is_info_without_anomalies() -> None:
    result = analyze(request(digest()), HISTORY)
    assert result.severity is InsightSeverity.INFO
    assert result.anomalies == []
    assert result.recommendations == []
    assert "100 events" in result.summary and "1.0%" in result.summary
    assert "previous 20 batches" in result.summary
    assert "Mostly http_request: 90.0% of events." in result.patterns
    assert "Busiest route: /checkout (50 requests)." in result.patterns


def test_error_spike_against_the_baseline() -> None:
    spike = digest(errors=12, server_errors=10,
                   top_errors=[("HTTP 503 /checkout", 10), ("Timeout: db", 2)])
    result = analyze(request(spike), HISTORY)
    assert result.severity is InsightSeverity.WARNING
    [anomaly] = result.anomalies
    assert anomaly.metric == "error_rate"
    assert anomaly.value == 0.12
    assert anomaly.baseline == pytest.approx(0.0095)
    assert anomaly.score is not None and anomaly.score >= 3
    assert "12.0%" in anomaly.evidence and "20 batches" in anomaly.evidence
    assert anomaly.evidence in result.summary
    assert any("/checkout" in r and "5xx" in r for r in result.recommendations)
    assert any(p.startswith("New error") and "HTTP 503 /checkout" in p
               for p in result.patterns)


def test_severe_error_spike_is_critical() -> None:
    result = analyze(request(digest(errors=35)), HISTORY)
    assert result.severity is InsightSeverity.CRITICAL
    assert [a.metric for a in result.anomalies] == ["error_rate"]
    assert any("'Timeout: db'" in r for r in result.recommendations)


def test_small_error_counts_do_not_flag_a_clean_source() -> None:
    clean = [digest(errors=0) for _ in range(10)]
    result = analyze(request(digest(errors=2)), clean)
    assert result.anomalies == []
    assert result.severity is InsightSeverity.INFO


def test_latency_regression() -> None:
    result = analyze(request(digest(p95=400.0)), HISTORY)
    assert result.severity is InsightSeverity.WARNING
    [anomaly] = result.anomalies
    assert anomaly.metric == "latency_p95_ms"
    assert anomaly.value == 400.0
    assert anomaly.baseline == pytest.approx(82.0)
    assert anomaly.score is not None and anomaly.score >= 3
    assert "400.0 ms" in anomaly.evidence and "82.0 ms" in anomaly.evidence
    assert any("regressed" in r and "/checkout" in r for r in result.recommendations)


def test_small_latency_changes_are_not_regressions() -> None:
    # Far above a very steady baseline in z, but under 2x and under 100 ms.
    steady = [digest(p95=40.0) for _ in range(10)]
    assert analyze(request(digest(p95=75.0)), steady).anomalies == []


def test_regression_into_seconds_is_critical() -> None:
    result = analyze(request(digest(p95=2500.0)), HISTORY)
    assert result.severity is InsightSeverity.CRITICAL


def test_without_history_absolute_rules_apply() -> None:
    result = analyze(request(digest(errors=30, p95=2500.0)), [])
    assert result.severity is InsightSeverity.CRITICAL
    assert [a.metric for a in result.anomalies] == ["error_rate", "latency_p95_ms"]
    assert all(a.baseline is None and a.score is None for a in result.anomalies)
    assert "20.0%" in result.anomalies[0].evidence
    assert "2000.0 ms" in result.anomalies[1].evidence


def test_without_history_an_elevated_error_rate_warns() -> None:
    result = analyze(request(digest(errors=10)), [])
    assert result.anomalies == []
    assert result.severity is InsightSeverity.WARNING
    assert "absolute thresholds" in result.summary
    assert analyze(request(digest()), []).severity is InsightSeverity.INFO


def test_a_new_source_at_six_percent_errors_warns_until_its_history_says_it_is_usual(
) -> None:
    # As the README's severity table says: no baseline yet, 5% or more warns; with
    # MIN_BASELINE_BATCHES earlier batches at the same rate, that rate is its normal.
    history: list[Digest] = []
    severities = []
    for _ in range(5):
        batch = digest(errors=6)
        severities.append(analyze(request(batch), history).severity)
        history.append(batch)
    assert severities == [InsightSeverity.WARNING] * MIN_BASELINE_BATCHES + [
        InsightSeverity.INFO] * (5 - MIN_BASELINE_BATCHES)


def test_tiny_latency_samples_are_not_flagged() -> None:
    assert analyze(request(digest(p95=5000.0, timed=3)), []).anomalies == []


def test_chronically_slow_source_is_flagged_but_not_critical() -> None:
    slow = [digest(p95=2400.0 + i) for i in range(10)]
    result = analyze(request(digest(p95=2450.0)), slow)
    [anomaly] = result.anomalies
    assert anomaly.metric == "latency_p95_ms" and anomaly.baseline is not None
    assert result.severity is InsightSeverity.WARNING


def test_deterministic() -> None:
    spike = digest(errors=25, p95=900.0, server_errors=20,
                   top_errors=[("HTTP 503 /checkout", 20), ("Timeout: db", 5)])
    first = analyze(request(spike), HISTORY)
    second = analyze(request(spike), list(HISTORY))
    assert first == second


def test_confidence_grows_with_batch_size_and_history() -> None:
    small = analyze(request(digest(events=12, errors=0, timed=2), events=12), [])
    large = analyze(request(digest()), [])
    deep = analyze(request(digest()), HISTORY)
    deepest = analyze(request(digest()), [digest() for _ in range(200)])
    assert 0.0 <= small.confidence < large.confidence < deep.confidence
    assert deep.confidence <= deepest.confidence <= 1.0


def test_batch_without_http_or_errors() -> None:
    d = Digest(by_type={"job": 5}, by_status={}, by_severity={}, error_count=0,
               top_errors=[], latency=None, routes={}, users=0, samples=[])
    result = analyze(request(d, events=5), [])
    assert result.severity is InsightSeverity.INFO
    assert "p95" not in result.summary


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 4000) == 1000
