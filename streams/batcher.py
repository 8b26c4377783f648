"""The batcher: validated events into sealed per-key batches, durable before committed.

``BatcherHandler`` is the plain handler a FetchLoop drives over ``events``. Per fetch it
validates and batches in memory; ``settle`` then records the sealed batches in
PostgreSQL (the seal decision), publishes them to ``analysis-requests`` and refused
messages to ``dead-letter`` with acks=all, and only then names the offsets to commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from confluent_kafka import Message

from streams import config
from streams.adapters.batch_store import BatchStore
from streams.core import deadletter
from streams.core.batching import Batcher
from streams.core.ingest import Record, ingest
from streams.core.models import AnalysisRequest, Rejection, SealReason
from streams.errors import RetryableError

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode


class BatcherHandler:
    def __init__(
        self,
        *,
        store: BatchStore,
        producer: AIOKafkaProducer,
        max_events: int,
        max_age_seconds: float,
        max_event_bytes: int,
        topic: str = config.EVENTS_TOPIC,
    ) -> None:
        self.batcher = Batcher(topic, max_events, max_age_seconds)
        self.topic = topic
        self.store = store
        self.producer = producer
        self.max_event_bytes = max_event_bytes
        self._sealed: list[AnalysisRequest] = []
        self._rejected: list[tuple[Record, Rejection]] = []
        self._duplicates_logged = 0

    async def assigned(self, starts: dict[int, int]) -> None:
        for partition, start in starts.items():
            decisions = await self.store.decisions(self.topic, partition, start)
            self.batcher.assign(partition, start, decisions)
            if decisions:
                log.info("batcher.recovering", partition=partition, start=start,
                         decisions=len(decisions))

    def revoked(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self.batcher.revoke(partition)

    def records(self, partition: int, records: list[Message], now: float) -> None:
        ingest(self.batcher, partition, records, now, self.max_event_bytes,
               self._sealed, self._rejected)

    def wants_more(self) -> bool:
        # Everything a fetch produces is settled before the next one: never full.
        return True

    def tick(self, now: float) -> None:
        self.batcher.due(now, self._sealed)

    def drain(self, now: float) -> None:
        self.batcher.drain(SealReason.SHUTDOWN, now, self._sealed)

    async def settle(self) -> dict[int, int]:
        sealed, rejected = self._sealed, self._rejected
        if sealed or rejected:
            # The row is the seal decision: write it before anyone can see the batch.
            await self.store.record(sealed)
            try:
                await self._publish(sealed, rejected)
            except KafkaError as exc:
                raise RetryableError(f"publishing to Kafka failed: {exc}") from exc
            for request in sealed:
                log.debug("batch.sealed", batch_id=request.batch_id, key=request.key,
                          events=request.event_count, reason=request.seal_reason.value)
            for record, rejection in rejected:
                log.info("event.dead_lettered", partition=record.partition(),
                         offset=record.offset(), reason=rejection.reason.value,
                         field=rejection.field)
            self._sealed, self._rejected = [], []
        if self.batcher.duplicates != self._duplicates_logged:
            log.info("batcher.duplicates_dropped",
                     count=self.batcher.duplicates - self._duplicates_logged,
                     total=self.batcher.duplicates)
            self._duplicates_logged = self.batcher.duplicates
        return {p: self.batcher.commit_offset(p) for p in self.batcher.partitions}

    async def _publish(
        self, sealed: list[AnalysisRequest], rejected: list[tuple[Record, Rejection]]
    ) -> None:
        send = self.producer.send
        pending = []
        for record, rejection in rejected:
            headers = deadletter.headers(rejection, self.topic, record)
            pending.append(await send(config.DEAD_LETTER_TOPIC, record.value(),
                                      key=record.key(), headers=headers))
        for request in sealed:
            pending.append(await send(config.ANALYSIS_REQUESTS_TOPIC, _encode(request),
                                      key=request.key.encode()))
        await asyncio.gather(*pending)
