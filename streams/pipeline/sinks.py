"""Sinks: records from Kafka into TimescaleDB tables, idempotent and durable before commit.

A ``SinkHandler`` is a FetchLoop handler: ``records`` turns a fetch into rows in memory
and ``settle`` writes them (one transaction for all tables, COPY with a staging table and
INSERT ... ON CONFLICT DO NOTHING when rows already exist: see adapters/copy.py) before
the offsets are committed. A replay or a restart
re-reads what was not committed and writes nothing twice: every table's key is
deterministic. A message that cannot be read goes to ``dead-letter`` with its reason.

A row the database refuses for its values (``db_rejected``: a NUL in text, a number out
of its column's range) costs only itself: the writer sets it aside, every other row is
written, and the refused row goes to ``dead-letter`` before the offsets are committed,
as a message of the topic's own format (``[row]`` on the row topics, the record itself on
``insights``) that ``streamsight dlq redrive`` can send back once the cause is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import msgspec
import structlog
from msgspec.structs import astuple

from streams import config
from streams.adapters import metrics
from streams.adapters.copy import CopyWriter, Row, Written
from streams.adapters.db import QUERY_ERRORS, query_error
from streams.adapters.late_rows import LateRows
from streams.adapters.publish import Publisher, Send
from streams.core import deadletter
from streams.core.ingest import Record
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
_decode_any = msgspec.json.Decoder(list[object]).decode

#: Turns one message value into (table, row) pairs; raises msgspec errors on bad input.
RowsOf = Callable[[bytes], Iterable[tuple[str, Row]]]
#: Splits one message value into its records, each a message value of its own.
Split = Callable[[bytes], list[bytes]]

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


#: Where the tables that feed continuous aggregates keep their rows' time.
_TIME_COLUMN = {table: writer.columns.index("time") for table, writer in WRITERS.items()
                if "time" in writer.columns}


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


def one_record(value: bytes) -> list[bytes]:
    """``insights`` carries one record per message."""
    return [value]


def array_items(value: bytes) -> list[bytes]:
    """``performance`` and ``errors`` carry JSON arrays of rows: each as ``[row]``."""
    return [_encode([item]) for item in _decode_any(value)]


class SinkHandler:
    """One topic into its tables."""

    def __init__(self, topic: str, rows_of: RowsOf, split: Split, pool: asyncpg.Pool,
                 publisher: Publisher, dead_letter: str = config.DEFAULT_TOPICS.dead_letter,
                 ) -> None:
        self.topic = topic
        self.dead_letter = dead_letter
        self.rows_of = rows_of
        self.split = split
        self.pool = pool
        self.publisher = publisher
        self._rows: dict[str, list[Row]] = {}
        # The messages whose rows are in ``_rows``, in order: refused rows are traced back
        # to them (only then, so the hot path keeps no per-row bookkeeping).
        self._sources: list[Record] = []
        self._rejected: list[tuple[bytes | None, Record, Rejection, list[tuple[str, bytes]]]]
        self._rejected = []
        self._position: dict[int, int] = {}
        self._duration = metrics.SINK_WRITE_DURATION.labels(topic)
        self._logged: set[str] = set()
        self._late = LateRows()

    async def assigned(self, starts: dict[int, int]) -> None:
        self._position.update(starts)

    def revoked(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self._position.pop(partition, None)

    def records(self, partition: int, records: Sequence[Record], now: float) -> None:
        rows = self._rows
        for message in records:
            try:
                produced = list(self.rows_of(message.value() or b""))
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                self._reject(message.value(), message,
                             Rejection(Reason.MALFORMED_JSON, f"unreadable record: {exc}"))
                continue
            for table, row in produced:
                rows.setdefault(table, []).append(row)
            if produced:
                self._sources.append(message)
        if records:
            self._position[partition] = (records[-1].offset() or 0) + 1

    def _reject(self, value: bytes | None, message: Record, rejection: Rejection,
                extra: list[tuple[str, bytes]] | None = None) -> None:
        self._rejected.append((value, message, rejection, extra or []))

    def tick(self, now: float) -> None:
        return None

    def drain(self, now: float) -> None:
        return None

    def wants_more(self) -> bool:
        return True

    async def settle(self) -> dict[int, int]:
        if self._rows:
            started = time.perf_counter()
            written: dict[str, Written] = {}
            try:
                now = datetime.now(UTC)
                async with self.pool.acquire() as conn, conn.transaction():
                    for table, rows in self._rows.items():
                        written[table] = await WRITERS[table].write(conn, rows)
                        log.debug("sink.written", table=table, rows=len(rows),
                                  added=written[table].added)
                        if table in _TIME_COLUMN and await self._late.note(
                                conn, table, rows, _TIME_COLUMN[table], now):
                            metrics.LATE_WRITES.labels(table).inc()
            except QUERY_ERRORS as exc:
                raise query_error(f"sink of {self.topic}", exc) from exc
            # Counted once the transaction committed: a retried write is not counted twice.
            self._duration.observe(time.perf_counter() - started)
            for table, result in written.items():
                metrics.SINK_ROWS.labels(table).inc(result.added)
            refused = {table: dict(result.refused) for table, result in written.items()
                       if result.refused}
            if refused:
                self._set_aside(refused)
            self._rows = {}
            self._sources = []
        if self._rejected:
            await self._dead_letter()
        return dict(self._position)

    def _set_aside(self, refused: dict[str, dict[int, str]]) -> None:
        """Trace refused rows back to their records, which go to dead-letter."""
        seen = dict.fromkeys(refused, 0)
        for message in self._sources:
            for record in self.split(message.value() or b""):
                reasons: list[tuple[str, str]] = []
                for table, _row in self.rows_of(record):
                    index = seen.get(table, 0)
                    seen[table] = index + 1
                    reason = refused.get(table, {}).get(index)
                    if reason is not None:
                        reasons.append((table, reason))
                if reasons:
                    table, reason = reasons[0]
                    self._reject(record, message,
                                 Rejection(Reason.DB_REJECTED, f"{table}: {reason}"),
                                 [("dlq.table", table.encode())])
        for table, by_row in refused.items():
            # Once per reason; after that only the dead-letter counter shows them.
            for reason in set(by_row.values()) - self._logged:
                self._logged.add(reason)
                log.warning("sink.rows_refused", topic=self.topic, table=table,
                            rows=sum(r == reason for r in by_row.values()), reason=reason)

    async def _dead_letter(self) -> None:
        await self.publisher.publish(
            Send(self.dead_letter, value, message.key(),
                 deadletter.headers(rejection, self.topic, message) + extra)
            for value, message, rejection, extra in self._rejected)
        for _value, _message, rejection, _extra in self._rejected:
            metrics.DEAD_LETTERS.labels(rejection.reason.value).inc()
        self._rejected = []
