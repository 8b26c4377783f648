"""Sinks: records from Kafka into TimescaleDB tables, idempotent and durable before commit.

A sink handler is a FetchLoop handler: ``records`` turns a fetch into rows in memory and
``settle`` writes them (COPY into staging, INSERT ... ON CONFLICT DO NOTHING, one
transaction) before the offsets are committed. A replay or a restart re-reads what was
not committed and writes nothing twice: every table's key is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg
import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from confluent_kafka import Message

from streams import config
from streams.adapters.copy import CopyWriter
from streams.core import deadletter
from streams.core.models import AIUsage, Insight, Reason, Rejection

log = structlog.get_logger(__name__)

_decode_insight = msgspec.json.Decoder(Insight).decode
_encode = msgspec.json.Encoder().encode

INSIGHT_COLUMNS = (
    "insight_id", "batch_id", "source", "window_start", "window_end", "summary", "severity",
    "confidence", "patterns", "anomalies", "recommendations", "analyzer", "prompt_tokens",
    "completion_tokens", "cost_usd", "latency_ms", "created_at",
)
USAGE_COLUMNS = (
    "request_id", "batch_id", "analyzer", "model", "attempt", "outcome", "prompt_tokens",
    "completion_tokens", "cost_usd", "latency_ms", "at", "error",
)


def insight_row(insight: Insight) -> tuple[object, ...]:
    a = insight.analysis
    return (
        UUID(insight.insight_id), UUID(insight.batch_id), insight.source,
        insight.window_start, insight.window_end, a.summary, a.severity.value, a.confidence,
        _encode(a.patterns).decode(), _encode(a.anomalies).decode(),
        _encode(a.recommendations).decode(), insight.analyzer, insight.prompt_tokens,
        insight.completion_tokens, insight.cost_usd, insight.latency_ms, insight.created_at,
    )


def usage_row(usage: AIUsage) -> tuple[object, ...]:
    return (
        UUID(usage.request_id), UUID(usage.batch_id), usage.analyzer, usage.model,
        usage.attempt, usage.outcome.value, usage.prompt_tokens, usage.completion_tokens,
        usage.cost_usd, usage.latency_ms, usage.at, usage.error,
    )


class InsightSinkHandler:
    """``insights`` into the ``insights`` and ``ai_usage`` tables."""

    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
        self.pool = pool
        self.producer = producer
        self._insights = CopyWriter("insights", INSIGHT_COLUMNS)
        self._usage = CopyWriter("ai_usage", USAGE_COLUMNS)
        self._rows: list[tuple[object, ...]] = []
        self._usage_rows: list[tuple[object, ...]] = []
        self._rejected: list[tuple[Message, Rejection]] = []
        self._position: dict[int, int] = {}

    async def assigned(self, starts: dict[int, int]) -> None:
        self._position.update(starts)

    def revoked(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self._position.pop(partition, None)

    def records(self, partition: int, records: list[Message], now: float) -> None:
        for message in records:
            try:
                insight = _decode_insight(message.value() or b"")
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._rejected.append(
                    (message, Rejection(Reason.MALFORMED_JSON, f"not an insight: {exc}")))
                continue
            self._rows.append(insight_row(insight))
            self._usage_rows.extend(usage_row(u) for u in insight.usage)
        if records:
            self._position[partition] = (records[-1].offset() or 0) + 1

    def tick(self, now: float) -> None:
        return None

    def drain(self, now: float) -> None:
        return None

    def wants_more(self) -> bool:
        return True

    async def settle(self) -> dict[int, int]:
        if self._rows or self._usage_rows:
            async with self.pool.acquire() as conn, conn.transaction():
                added = await self._insights.write(conn, self._rows)
                await self._usage.write(conn, self._usage_rows)
            log.debug("sink.insights", rows=len(self._rows), added=added)
            self._rows, self._usage_rows = [], []
        if self._rejected:
            sent = []
            for message, rejection in self._rejected:
                headers = deadletter.headers(rejection, config.INSIGHTS_TOPIC,
                                             message.partition() or 0, message.offset() or 0,
                                             message.timestamp()[1])
                sent.append(await self.producer.send(config.DEAD_LETTER_TOPIC,
                                                     message.value(), key=message.key(),
                                                     headers=headers))
            for future in sent:
                await future
            self._rejected = []
        return dict(self._position)
