"""The batcher: validated events into sealed per-key batches, durable before committed.

``BatcherHandler`` is the plain handler a FetchLoop drives over ``events``. Per fetch it
validates and batches in memory; ``settle`` then records the sealed batches in
PostgreSQL (the seal decision), publishes them to ``analysis-requests``, refused
messages to ``dead-letter`` and the rows for Grafana to ``performance`` and ``errors``
with acks=all, and only then names the offsets to commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec
import structlog

from streams import config
from streams.adapters import metrics
from streams.adapters.batch_store import BatchStore
from streams.adapters.publish import Publisher, Send
from streams.core import deadletter
from streams.core.batching import Batcher
from streams.core.ingest import Output, Record, ingest
from streams.core.models import Reason, SealReason
from streams.core.rows import chunks, error_record

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode


class BatcherHandler:
    def __init__(
        self,
        *,
        store: BatchStore,
        publisher: Publisher,
        max_events: int,
        max_age_seconds: float,
        max_event_bytes: int,
        topics: config.Topics = config.DEFAULT_TOPICS,
    ) -> None:
        self.batcher = Batcher(topics.events, max_events, max_age_seconds)
        self.topic = topic = topics.events
        self.topics = topics
        self.store = store
        self.publisher = publisher
        self.max_event_bytes = max_event_bytes
        self._out = Output()
        self._duplicates_logged = 0
        self._reasons_logged: set[str] = set()
        self._consumed = metrics.EVENTS_CONSUMED.labels(topic)

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

    def records(self, partition: int, records: Sequence[Record], now: float) -> None:
        ingest(self.batcher, partition, records, now, self.max_event_bytes, self._out)
        self._consumed.inc(len(records))

    def wants_more(self) -> bool:
        # Everything a fetch produces is settled before the next one: never full.
        return True

    def tick(self, now: float) -> None:
        self.batcher.due(now, self._out.sealed)

    def drain(self, now: float) -> None:
        self.batcher.drain(SealReason.SHUTDOWN, now, self._out.sealed)

    async def settle(self) -> dict[int, int]:
        out = self._out
        if out.sealed or out.rejected or out.performance or out.errors:
            # The row is the seal decision: write it before anyone can see the batch.
            await self.store.record(out.sealed)
            await self.publisher.publish(self._messages(out))
            self._out = Output()
            _account(out, self._reasons_logged)
        metrics.OPEN_BATCHES.set(self.batcher.open_batches())
        if self.batcher.duplicates != self._duplicates_logged:
            log.info("batcher.duplicates_dropped",
                     count=self.batcher.duplicates - self._duplicates_logged,
                     total=self.batcher.duplicates)
            self._duplicates_logged = self.batcher.duplicates
        return {p: self.batcher.commit_offset(p) for p in self.batcher.partitions}

    def _messages(self, out: Output) -> Iterator[Send]:
        topics = self.topics
        for record, rejection in out.rejected:
            yield Send(topics.dead_letter, record.value(), record.key(),
                       deadletter.headers(rejection, self.topic, record))
        for request in out.sealed:
            yield Send(topics.analysis_requests, _encode(request), request.key.encode())
        # Rows need no key (each names its source) and no order: unkeyed messages
        # spread over the partitions, and the sinks write them in any order.
        errors = [error_record(event, batch_id) for event, batch_id in out.errors]
        for topic, rows in ((topics.performance, out.performance), (topics.errors, errors)):
            for chunk in chunks(rows):
                yield Send(topic, _encode(chunk))


def _account(out: Output, reasons_logged: set[str]) -> None:
    """Metrics and logs of what a settle published. The first dead-letter of each reason
    is logged; after that the counters show them (bad input arrives in floods)."""
    for request in out.sealed:
        reason = request.seal_reason.value
        metrics.BATCHES_SEALED.labels(reason).inc()
        metrics.BATCH_SIZE.observe(request.event_count)
        metrics.BATCH_AGE.observe((request.sealed_at - request.opened_at).total_seconds())
        log.debug("batch.sealed", batch_id=request.batch_id, key=request.key,
                  events=request.event_count, reason=reason)
    for record, rejection in out.rejected:
        reason = rejection.reason.value
        metrics.EVENTS_INVALID.labels(reason).inc()
        metrics.DEAD_LETTERS.labels(reason).inc()
        if reason not in reasons_logged:
            reasons_logged.add(reason)
            # Unprocessable means our code raised on an event: a bug to report.
            (log.error if rejection.reason is Reason.UNPROCESSABLE else log.info)(
                "event.dead_lettered", partition=record.partition(), offset=record.offset(),
                reason=reason, field=rejection.field, error=rejection.message)
    metrics.EVENT_ERRORS.inc(len(out.errors))
    metrics.OPERATION_DURATION.observe_many([row.duration_ms / 1000 for row in out.performance])
