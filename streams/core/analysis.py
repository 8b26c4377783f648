"""The built-in statistical analyzer: what writes insights when no AI provider is set.

It reads the batch digest and the digests of the same source's previous batches (the
baseline, oldest first) and reports the volume and mix, the error rate, the latency
percentiles, the top errors, anomalies with the numbers that show them, rule-based
recommendations and a confidence.

Anomalies need two things: a departure from the source's own baseline (z-score of at
least 3 against the mean and standard deviation of the previous batches) and an absolute
size, so that a source that is almost always clean does not flag one stray error. Some
levels are bad whatever the history says (an error rate of 20%, a p95 of two seconds);
those are flagged even for a source seen for the first time.

Deterministic: the same request and history give an equal ``Analysis``. No randomness,
every iteration over a mapping is sorted, floats are rounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean, pstdev

from streams.core.models import (
    Analysis,
    AnalysisRequest,
    Anomaly,
    Digest,
    InsightSeverity,
    LatencyStats,
)

ANALYZER_VERSION = "builtin/1"

# Fewer previous batches than this say too little about what is normal for a source.
MIN_BASELINE_BATCHES = 3
BASELINE_WINDOW = 50
Z_THRESHOLD = 3.0

ERROR_RATE_MIN = 0.05
ERROR_COUNT_MIN = 3
ERROR_RATE_CRITICAL = 0.20
# A clean source has a standard deviation of zero; without a floor its first error would
# score an infinite z.
ERROR_RATE_STD_FLOOR = 0.01

P95_RATIO_MIN = 2.0
P95_MIN_MS = 100.0
P95_ABSOLUTE_MS = 2000.0
P95_STD_FLOOR_RATIO = 0.10
P95_STD_FLOOR_MS = 5.0
# A p95 of a handful of requests is just their maximum: too noisy to flag.
LATENCY_MIN_SAMPLES = 5

DOMINANT_SHARE = 0.5
SERVER_ERROR_SHARE = 0.05
MAX_NEW_ERRORS = 3

# The label digest.summarize gives an HTTP 5xx without an error section.
_HTTP_5XX = re.compile(r"HTTP (5\d\d) (\S.*)")

_RANK = {InsightSeverity.INFO: 0, InsightSeverity.WARNING: 1, InsightSeverity.CRITICAL: 2}


def estimate_tokens(text: str) -> int:
    """Rough token count for prompt budgets: about four characters per token."""
    return (len(text) + 3) // 4


@dataclass(frozen=True, slots=True)
class _Baseline:
    mean: float
    std: float
    batches: int

    def z(self, value: float, floor: float) -> float:
        return (value - self.mean) / max(self.std, floor)


@dataclass(frozen=True, slots=True)
class _Finding:
    anomaly: Anomaly
    level: InsightSeverity


def _baseline(values: Sequence[float]) -> _Baseline | None:
    if len(values) < MIN_BASELINE_BATCHES:
        return None
    mean = fmean(values)
    return _Baseline(mean, pstdev(values, mean), len(values))


def _total(digest: Digest) -> int:
    return sum(digest.by_type.values())


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def _ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _error_finding(
    rate: float, errors: int, events: int, base: _Baseline | None
) -> _Finding | None:
    if errors < ERROR_COUNT_MIN:
        return None
    level = InsightSeverity.CRITICAL if rate >= ERROR_RATE_CRITICAL else InsightSeverity.WARNING
    z = base.z(rate, ERROR_RATE_STD_FLOOR) if base is not None else None
    if base is not None and z is not None and z >= Z_THRESHOLD and rate >= ERROR_RATE_MIN:
        evidence = (
            f"error rate {_pct(rate)} ({errors} of {events} events) vs baseline "
            f"{_pct(base.mean)} ± {_pct(base.std)} over {base.batches} batches, z = {z:.1f}"
        )
    elif rate >= ERROR_RATE_CRITICAL:
        evidence = (
            f"error rate {_pct(rate)} ({errors} of {events} events) is at or above "
            f"{_pct(ERROR_RATE_CRITICAL)}"
        )
        if base is not None:
            evidence += f"; baseline {_pct(base.mean)} over {base.batches} batches"
    else:
        return None
    anomaly = Anomaly(
        metric="error_rate",
        value=round(rate, 4),
        baseline=round(base.mean, 4) if base is not None else None,
        score=round(z, 2) if z is not None else None,
        evidence=evidence,
    )
    return _Finding(anomaly, level)


def _latency_finding(latency: LatencyStats | None, base: _Baseline | None) -> _Finding | None:
    if latency is None or latency.count < LATENCY_MIN_SAMPLES:
        return None
    p95 = latency.p95_ms
    z = None
    if base is not None:
        z = base.z(p95, max(P95_STD_FLOOR_RATIO * base.mean, P95_STD_FLOOR_MS))
    if (
        base is not None and z is not None and z >= Z_THRESHOLD
        and p95 > P95_RATIO_MIN * base.mean and p95 > P95_MIN_MS
    ):
        ratio = f"{p95 / base.mean:.1f}x, " if base.mean > 0 else ""
        evidence = (
            f"p95 latency {_ms(p95)} vs baseline {_ms(base.mean)} ± {_ms(base.std)} "
            f"over {base.batches} batches ({ratio}z = {z:.1f})"
        )
        # A regression into seconds is an outage for users; a slow source that was
        # always slow is a known problem.
        level = InsightSeverity.CRITICAL if p95 >= P95_ABSOLUTE_MS else InsightSeverity.WARNING
    elif p95 >= P95_ABSOLUTE_MS:
        evidence = (
            f"p95 latency {_ms(p95)} is at or above {_ms(P95_ABSOLUTE_MS)} "
            f"(p99 {_ms(latency.p99_ms)}, {latency.count} timed requests)"
        )
        if base is not None:
            evidence += f"; baseline {_ms(base.mean)} over {base.batches} batches"
        level = InsightSeverity.WARNING
    else:
        return None
    anomaly = Anomaly(
        metric="latency_p95_ms",
        value=round(p95, 3),
        baseline=round(base.mean, 3) if base is not None else None,
        score=round(z, 2) if z is not None else None,
        evidence=evidence,
    )
    return _Finding(anomaly, level)


def _server_errors_by_route(digest: Digest) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for label, count in digest.top_errors:
        match = _HTTP_5XX.fullmatch(label)
        if match is not None:
            route = match.group(2)
            counts[route] = counts.get(route, 0) + count
    return _ranked(counts)


def _patterns(
    request: AnalysisRequest, rate: float, error_base: _Baseline | None,
    history: Sequence[Digest],
) -> list[str]:
    digest = request.digest
    events = request.event_count
    patterns: list[str] = []
    span = (request.last_event_at - request.first_event_at).total_seconds()
    volume = f"{events} events over {span:.0f} s"
    if span > 0:
        volume += f" ({events / span:.1f}/s)"
    patterns.append(f"{volume}, {digest.users} distinct users.")
    types = _ranked(digest.by_type)
    if types and events and types[0][1] / events >= DOMINANT_SHARE:
        patterns.append(f"Mostly {types[0][0]}: {_pct(types[0][1] / events)} of events.")
    elif types:
        mix = ", ".join(f"{name} {_pct(count / max(events, 1))}" for name, count in types[:3])
        patterns.append(f"Event mix: {mix}.")
    error_line = f"Error rate {_pct(rate)} ({digest.error_count} of {events} events)"
    if error_base is not None:
        error_line += f", baseline {_pct(error_base.mean)} over {error_base.batches} batches"
    patterns.append(error_line + ".")
    routes = _ranked(digest.routes)
    if routes:
        patterns.append(f"Busiest route: {routes[0][0]} ({routes[0][1]} requests).")
    responses = sum(digest.by_status.values())
    server_errors = digest.by_status.get("5xx", 0)
    if server_errors:
        patterns.append(
            f"5xx responses: {server_errors} of {responses} ({_pct(server_errors / responses)})."
        )
    latency = digest.latency
    if latency is not None:
        patterns.append(
            f"Latency p50 {_ms(latency.p50_ms)}, p95 {_ms(latency.p95_ms)}, "
            f"p99 {_ms(latency.p99_ms)} over {latency.count} timed requests."
        )
    if digest.top_errors and digest.error_count:
        label, count = digest.top_errors[0]
        patterns.append(f"Top error: {label} ({count} of {digest.error_count} errors).")
    if len(history) >= MIN_BASELINE_BATCHES:
        seen = {label for past in history for label, _ in past.top_errors}
        new = [(label, n) for label, n in digest.top_errors if label not in seen]
        for label, count in new[:MAX_NEW_ERRORS]:
            patterns.append(
                f"New error, not among the top errors of the previous {len(history)} "
                f"batches: {label} ({count})."
            )
    return patterns


def _recommendations(
    digest: Digest, error: _Finding | None, latency: _Finding | None, rate: float,
) -> list[str]:
    recommendations: list[str] = []
    responses = sum(digest.by_status.values())
    server_errors = digest.by_status.get("5xx", 0)
    five_xx_routes = _server_errors_by_route(digest)
    spiking = server_errors >= ERROR_COUNT_MIN and (
        error is not None or server_errors / max(responses, 1) >= SERVER_ERROR_SHARE
    )
    if spiking and five_xx_routes:
        route, count = five_xx_routes[0]
        recommendations.append(
            f"Investigate the 5xx responses on {route} ({count} in this batch): check the "
            "service's recent deploys, its downstream dependencies and its logs."
        )
    if latency is not None:
        anomaly = latency.anomaly
        routes = _ranked(digest.routes)
        where = f" on {routes[0][0]}" if routes else ""
        if anomaly.baseline is not None and anomaly.value > P95_RATIO_MIN * anomaly.baseline:
            recommendations.append(
                f"p95 latency regressed to {_ms(anomaly.value)} from {_ms(anomaly.baseline)}: "
                f"compare with the last deploy and look for slow queries or downstream "
                f"calls{where}."
            )
        else:
            recommendations.append(
                f"p95 latency is {_ms(anomaly.value)}: profile the slowest requests{where} "
                "and add timeouts or caching to slow dependencies."
            )
    errors = digest.error_count
    if digest.top_errors and errors >= ERROR_COUNT_MIN:
        label, count = digest.top_errors[0]
        covered = spiking and _HTTP_5XX.fullmatch(label) is not None
        if count / errors >= DOMINANT_SHARE and not covered:
            recommendations.append(
                f"Fix '{label}' first: it accounts for {count} of {errors} errors."
            )
    if error is not None and not recommendations:
        recommendations.append(
            f"Error rate is {_pct(rate)}: review the top errors and the changes made "
            "since the previous batch."
        )
    return recommendations


def _confidence(events: int, history: int) -> float:
    # Saturating in both: 100 events and 50 previous batches say about as much as more.
    size = events / (events + 20)
    depth = history / (history + 5)
    return round(0.2 + 0.5 * size + 0.3 * depth, 2)


def analyze(request: AnalysisRequest, history: Sequence[Digest]) -> Analysis:
    """Analyse one batch against the previous batches of its source (oldest first)."""
    digest = request.digest
    events = request.event_count
    errors = digest.error_count
    rate = errors / events if events else 0.0
    window = [past for past in history[-BASELINE_WINDOW:] if _total(past) > 0]
    error_base = _baseline([past.error_count / _total(past) for past in window])
    latency_base = _baseline([
        past.latency.p95_ms for past in window
        if past.latency is not None and past.latency.count >= LATENCY_MIN_SAMPLES
    ])

    error = _error_finding(rate, errors, events, error_base)
    latency = _latency_finding(digest.latency, latency_base)
    findings = [f for f in (error, latency) if f is not None]

    severity = InsightSeverity.INFO
    if error_base is None and rate >= ERROR_RATE_MIN and errors >= ERROR_COUNT_MIN:
        # Nothing says this level is normal for the source yet.
        severity = InsightSeverity.WARNING
    for finding in findings:
        if _RANK[finding.level] > _RANK[severity]:
            severity = finding.level

    noun = "error" if errors == 1 else "errors"
    headline = f"{request.key}: {events} events, {errors} {noun} ({_pct(rate)})"
    if digest.latency is not None:
        headline += f", p95 {_ms(digest.latency.p95_ms)}"
    if findings:
        detail = "Flagged: " + "; ".join(f.anomaly.evidence for f in findings)
    elif error_base is not None or latency_base is not None:
        batches = max(b.batches for b in (error_base, latency_base) if b is not None)
        detail = f"In line with the previous {batches} batches"
    else:
        detail = "Too little history for a baseline; only absolute thresholds apply"

    return Analysis(
        summary=f"{headline}. {detail}.",
        severity=severity,
        confidence=_confidence(events, len(window)),
        patterns=_patterns(request, rate, error_base, window),
        anomalies=[f.anomaly for f in findings],
        recommendations=_recommendations(digest, error, latency, rate),
    )
