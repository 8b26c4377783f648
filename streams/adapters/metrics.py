"""Prometheus metrics of the worker (prometheus-client), served at ``/metrics``.

Names carry their unit, counters end in ``_total``, labels stay low-cardinality (topic,
reason, model, outcome, table, consumer group, partition: never ids, keys or routes).
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from streams.adapters.lag import LagCollector

REGISTRY = CollectorRegistry()


class BulkHistogram(Collector):
    """A histogram fed a whole fetch's values at once.

    prometheus-client's ``Histogram.observe`` takes a lock and walks the buckets per value,
    which at event volume costs more than validating the event; this sorts the values and
    counts each bucket with one bisection. Exposed like any histogram.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float]) -> None:
        ordered = sorted(values)
        with self._lock:
            below = 0
            for i, bound in enumerate(self._bounds):
                upto = bisect_right(ordered, bound)  # Prometheus buckets hold values <= le
                self._counts[i] += upto - below
                below = upto
            self._counts[-1] += len(ordered) - below
            self._sum += sum(ordered)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip([*map(float, self._bounds), float("inf")], counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family


# -- batcher ----------------------------------------------------------------------------

EVENTS_CONSUMED = Counter(
    "streamsight_events_consumed_total", "Messages read from the events topic, valid or not.",
    ["topic"], registry=REGISTRY)
EVENTS_INVALID = Counter(
    "streamsight_events_invalid_total", "Events refused (sent to dead-letter), by reason.",
    ["reason"], registry=REGISTRY)
EVENT_ERRORS = Counter(
    "streamsight_event_errors_total",
    "Valid events that report an error (severity error/critical, HTTP 5xx, an error "
    "section): the numerator of the error rate.", registry=REGISTRY)
OPERATION_DURATION = BulkHistogram(
    "streamsight_operation_duration_seconds",
    "Durations the events report (http.duration_ms), for latency percentiles.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=REGISTRY)
BATCHES_SEALED = Counter(
    "streamsight_batches_sealed_total", "Batches sealed, by reason (count, age, shutdown, "
    "manual).", ["reason"], registry=REGISTRY)
BATCH_SIZE = Histogram(
    "streamsight_batch_size_events", "Events per sealed batch.",
    buckets=(1, 5, 10, 25, 50, 75, 100, 250, 1000), registry=REGISTRY)
BATCH_AGE = Histogram(
    "streamsight_batch_age_seconds", "Time from a batch's opening to its seal.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800), registry=REGISTRY)
OPEN_BATCHES = Gauge(
    "streamsight_open_batches", "Batches open in this worker.", registry=REGISTRY)
DEAD_LETTERS = Counter(
    "streamsight_dead_letter_messages_total", "Messages sent to dead-letter, by reason.",
    ["reason"], registry=REGISTRY)

# -- analyst ----------------------------------------------------------------------------

AI_REQUESTS = Counter(
    "streamsight_ai_requests_total", "Calls to the AI provider, by model and outcome.",
    ["model", "outcome"], registry=REGISTRY)
AI_TOKENS = Counter(
    "streamsight_ai_tokens_total", "Tokens billed by the AI provider (kind: prompt, "
    "completion).", ["model", "kind"], registry=REGISTRY)
AI_COST = Counter(
    "streamsight_ai_cost_usd_total", "What the AI calls cost, in US dollars.",
    ["model"], registry=REGISTRY)
AI_REQUEST_DURATION = Histogram(
    "streamsight_ai_request_duration_seconds", "Duration of calls to the AI provider.",
    ["model"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120), registry=REGISTRY)
AI_RATELIMIT_WAIT = Histogram(
    "streamsight_ai_ratelimit_wait_seconds",
    "Time a request waited for the deployment-wide rate limit before its call.",
    buckets=(0, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600), registry=REGISTRY)
AI_BREAKER_STATE = Gauge(
    "streamsight_ai_breaker_state",
    "Circuit breaker of the AI provider: 0 closed, 1 half-open, 2 open.", registry=REGISTRY)
AI_DAILY_BUDGET_SPENT = Gauge(
    "streamsight_ai_daily_budget_spent",
    "1 while AI_BUDGET_USD_PER_DAY is spent and requests wait, else 0.", registry=REGISTRY)
AI_DAILY_BUDGET = Gauge(
    "streamsight_ai_daily_budget_usd", "AI_BUDGET_USD_PER_DAY (0: no limit).",
    registry=REGISTRY)
INSIGHTS = Counter(
    "streamsight_insights_total", "Insights published, by analyzer and severity.",
    ["analyzer", "severity"], registry=REGISTRY)

# -- sinks ------------------------------------------------------------------------------

SINK_ROWS = Counter(
    "streamsight_sink_rows_total", "Rows written to TimescaleDB (new rows, not duplicates), "
    "by table.", ["table"], registry=REGISTRY)
LATE_WRITES = Counter(
    "streamsight_sink_late_writes_total", "Writes that held rows older than the refresh "
    "policies of the table's continuous aggregates reach: their span was noted for the "
    "refresh_late_rows job.", ["table"], registry=REGISTRY)
SINK_WRITE_DURATION = Histogram(
    "streamsight_sink_write_duration_seconds",
    "Duration of one sink write (one transaction per fetch), by topic.", ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY)

# -- consumers --------------------------------------------------------------------------

#: Consumer lag of every agent's group, as the broker reports it (see lag.py).
LAG = LagCollector()
REGISTRY.register(LAG)

KAFKA_REACHABLE = Gauge(
    "streamsight_kafka_reachable",
    "1 while a server of KAFKA_BOOTSTRAP_SERVERS answers this worker's probe (every 5 s), "
    "0 while none does.", registry=REGISTRY)

AGENT_RESTARTS = Counter(
    "streamsight_agent_restarts_total",
    "Times an agent failed and was restarted inside its worker", ["agent"], registry=REGISTRY)
AGENT_UP = Gauge(
    "streamsight_agent_up", "1 while the agent runs, 0 while it waits to be restarted",
    ["agent"], registry=REGISTRY)
PARTITIONS_ASSIGNED = Gauge(
    "streamsight_partitions_assigned", "Partitions this worker holds, by consumer group.",
    ["group"], registry=REGISTRY)

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def exposition() -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(REGISTRY)
