"""Sinks: records from Kafka into TimescaleDB tables, idempotent and durable before commit.

A ``SinkHandler`` is a FetchLoop handler: ``records`` turns a fetch into rows in memory
and ``settle`` writes them (one transaction for all tables, COPY with a staging table and
INSERT ... ON CONFLICT DO NOTHING when rows already exist: see adapters/copy.py) before
the offsets are committed. A replay or a restart
re-reads what was not committed and writes nothing twice: every table's key is
deterministic. A message that cannot be read goes to ``dead-letter`` with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from uuid import UUID

import asyncpg
import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from confluent_kafka import Message
from msgspec.structs import astuple

from streams import config
from streams.adapters import metrics
from streams.adapters.copy import CopyWriter
from streams.adapters.db import QUERY_ERRORS, query_error
from streams.core import deadletter
from streams.core.models import (
    AIUsage,
    ErrorRecord,
    Insight,
    PerformanceRow,
    Reason,
    Rejection,
)

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_insight = msgspec.json.Decoder(Insight).decode
# ``errors`` and ``performance`` carry rows in JSON arrays: many rows per message.
_decode_errors = msgspec.json.Decoder(list[ErrorRecord]).decode
_decode_performance = msgspec.json.Decoder(list[PerformanceRow]).decode

Row = tuple[object, ...]
#: Turns one message value into (table, row) pairs; raises msgspec errors on bad input.
RowsOf = Callable[[bytes], Iterable[tuple[str, Row]]]

WRITERS = {
    "insights": CopyWriter("insights", (
        "insight_id", "batch_id", "source", "window_start", "window_end", "summary",
        "severity", "confidence", "patterns", "anomalies", "recommendations", "analyzer",
        "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "created_at")),
    "ai_usage": CopyWriter("ai_usage", (
        "request_id", "batch_id", "analyzer", "model", "attempt", "outcome", "prompt_tokens",
        "completion_tokens", "cost_usd", "latency_ms", "at", "error")),
    "error_events": CopyWriter("error_events", (
        "time", "source", "type", "message", "event_id", "batch_id")),
    "api_performance": CopyWriter("api_performance", (
        "time", "source", "route", "method", "status_code", "duration_ms", "success",
        "event_id")),
}


def _usage_row(usage: AIUsage) -> Row:
    return (
        UUID(usage.request_id), UUID(usage.batch_id), usage.analyzer, usage.model,
        usage.attempt, usage.outcome.value, usage.prompt_tokens, usage.completion_tokens,
        usage.cost_usd, usage.latency_ms, usage.at, usage.error,
    )


def insight_rows(value: bytes) -> Iterable[tuple[str, Row]]:
    insight = _decode_insight(value)
    a = insight.analysis
    yield "insights", (
        UUID(insight.insight_id), UUID(insight.batch_id), insight.source,
        insight.window_start, insight.window_end, a.summary, a.severity.value, a.confidence,
        _encode(a.patterns).decode(), _encode(a.anomalies).decode(),
        _encode(a.recommendations).decode(), insight.analyzer, insight.prompt_tokens,
        insight.completion_tokens, insight.cost_usd, insight.latency_ms, insight.created_at,
    )
    for usage in insight.usage:
        yield "ai_usage", _usage_row(usage)


def error_rows(value: bytes) -> Iterable[tuple[str, Row]]:
    for error in _decode_errors(value):
        yield "error_events", (
            error.time, error.source, error.type, error.message, error.event_id,
            UUID(error.batch_id) if error.batch_id else None,
        )
        for usage in error.usage:
            yield "ai_usage", _usage_row(usage)


def performance_rows(value: bytes) -> Iterable[tuple[str, Row]]:
    # The struct's fields are the table's columns, in order.
    for row in _decode_performance(value):
        yield "api_performance", astuple(row)


class SinkHandler:
    """One topic into its tables."""

    def __init__(self, topic: str, rows_of: RowsOf, pool: asyncpg.Pool,
                 producer: AIOKafkaProducer) -> None:
        self.topic = topic
        self.rows_of = rows_of
        self.pool = pool
        self.producer = producer
        self._rows: dict[str, list[Row]] = {}
        self._rejected: list[tuple[Message, Rejection]] = []
        self._position: dict[int, int] = {}
        self._duration = metrics.SINK_WRITE_DURATION.labels(topic)

    async def assigned(self, starts: dict[int, int]) -> None:
        self._position.update(starts)

    def revoked(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self._position.pop(partition, None)

    def records(self, partition: int, records: list[Message], now: float) -> None:
        rows = self._rows
        for message in records:
            try:
                for table, row in self.rows_of(message.value() or b""):
                    rows.setdefault(table, []).append(row)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                self._rejected.append(
                    (message, Rejection(Reason.MALFORMED_JSON, f"unreadable record: {exc}")))
        if records:
            self._position[partition] = (records[-1].offset() or 0) + 1

    def tick(self, now: float) -> None:
        return None

    def drain(self, now: float) -> None:
        return None

    def wants_more(self) -> bool:
        return True

    async def settle(self) -> dict[int, int]:
        if self._rows:
            started = time.perf_counter()
            added: dict[str, int] = {}
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    for table, rows in self._rows.items():
                        added[table] = await WRITERS[table].write(conn, rows)
                        log.debug("sink.written", table=table, rows=len(rows),
                                  added=added[table])
            except QUERY_ERRORS as exc:
                raise query_error(f"sink of {self.topic}", exc) from exc
            # Counted once the transaction committed: a retried write is not counted twice.
            self._duration.observe(time.perf_counter() - started)
            for table, count in added.items():
                metrics.SINK_ROWS.labels(table).inc(count)
            self._rows = {}
        if self._rejected:
            sent = []
            for message, rejection in self._rejected:
                headers = deadletter.headers(rejection, self.topic, message)
                sent.append(await self.producer.send(config.DEAD_LETTER_TOPIC,
                                                     message.value(), key=message.key(),
                                                     headers=headers))
            for future in sent:
                await future
            metrics.DEAD_LETTERS.labels(Reason.MALFORMED_JSON.value).inc(len(self._rejected))
            self._rejected = []
        return dict(self._position)
