"""The batch-consumer primitive: whole fetches, not messages, are the unit of work.

A ``FetchLoop`` is a mode Service started with the Faust app. It owns an aiokafka
consumer in its own consumer group, hands every fetch (a list of records per partition)
to a plain handler, and commits offsets only after the handler has made everything
below them durable. Rebalances are settled under the same lock as processing, so a
partition is never given up with work half done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from streams.errors import RetryableError

log = structlog.get_logger(__name__)


class FetchHandler(Protocol):
    """What a FetchLoop drives. ``records`` and ``tick`` are synchronous and do no I/O;
    ``settle`` makes their output durable and says which offsets may be committed."""

    async def assigned(self, starts: dict[int, int]) -> None: ...

    def revoked(self, partitions: Sequence[int]) -> None: ...

    def records(self, partition: int, records: list[ConsumerRecord], now: float) -> None: ...

    def tick(self, now: float) -> None: ...

    def drain(self, now: float) -> None: ...

    async def settle(self) -> dict[int, int]: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: FetchLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._loop.on_assigned(assigned)


class FetchLoop(Service):
    """Consume one topic in whole fetches for one handler."""

    def __init__(
        self,
        *,
        name: str,
        topic: str,
        group_id: str,
        bootstrap_servers: str,
        handler: FetchHandler,
        max_records: int,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        idle_timeout_ms: int = 200,
        clock: Callable[[], float] = time.time,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = name
        self.topic = topic
        self.group_id = group_id
        self.handler = handler
        self.max_records = max_records
        self.idle_timeout_ms = idle_timeout_ms
        self.clock = clock
        self.assigned: set[int] = set()
        self.first_fetch_at: float | None = None
        self.events_consumed = 0
        self._lock = asyncio.Lock()
        self._committed: dict[int, int] = {}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=f"{group_id}-{name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            # A slow settle (database outage) must not cost the group membership.
            max_poll_interval_ms=max(300_000, session_timeout_ms),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )

    @property
    def label(self) -> str:
        return f"FetchLoop({self.name})"

    async def on_start(self) -> None:
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        await self._consumer.start()
        log.info("fetch.started", loop=self.name, topic=self.topic, group=self.group_id)

    async def on_stop(self) -> None:
        async with self._lock:
            self.handler.drain(self.clock())
            await self._settle()
            # Nothing is open any more: the revoke callback during stop has nothing to do.
            self.assigned.clear()
        await self._consumer.stop()
        log.info("fetch.stopped", loop=self.name)

    @Service.task
    async def _run(self) -> None:
        consumer = self._consumer
        handler = self.handler
        while not self.should_stop:
            try:
                fetched = await consumer.getmany(
                    timeout_ms=self.idle_timeout_ms, max_records=self.max_records
                )
            except KafkaError as exc:
                log.warning("fetch.error", loop=self.name, error=str(exc))
                await self.sleep(1.0)
                continue
            async with self._lock:
                if self.should_stop:
                    # on_stop already drained and settled; these records stay uncommitted.
                    break
                now = self.clock()
                if fetched and self.first_fetch_at is None:
                    self.first_fetch_at = now
                    log.info("fetch.first", loop=self.name, ts=now)
                for tp, records in fetched.items():
                    # A partition revoked while this fetch was in flight is not ours.
                    if tp.partition in self.assigned:
                        self.events_consumed += len(records)
                        handler.records(tp.partition, records, now)
                handler.tick(now)
                await self._settle()

    async def _settle(self) -> None:
        # While the database or broker is away, consumption pauses here (the lock is
        # held) instead of buffering without bound; the work waits, it is not dropped.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            wait=wait_exponential_jitter(initial=0.2, max=30.0),
            before_sleep=self._log_retry,
            reraise=True,
        ):
            with attempt:
                offsets = await self.handler.settle()
        changed = {
            TopicPartition(self.topic, p): o
            for p, o in offsets.items()
            if p in self.assigned and self._committed.get(p) != o
        }
        if not changed:
            return
        try:
            await self._consumer.commit(changed)
        except (CommitFailedError, KafkaError) as exc:
            # The work is durable; the next settle or the next owner commits it.
            log.warning("fetch.commit_failed", loop=self.name, error=str(exc))
            return
        for tp, offset in changed.items():
            self._committed[tp.partition] = offset

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("fetch.settle_retry", loop=self.name, attempt=state.attempt_number,
                    error=str(exc))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            mine = [tp for tp in assigned if tp.topic == self.topic]
            starts: dict[int, int] = {}
            beginnings = await self._consumer.beginning_offsets(mine) if mine else {}
            for tp in mine:
                committed = await self._consumer.committed(tp)
                starts[tp.partition] = committed if committed is not None else beginnings[tp]
            await self.handler.assigned(starts)
            self.assigned.update(starts)
            self._committed.update(starts)
            log.info("fetch.assigned", loop=self.name, partitions=sorted(starts))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            mine = [tp.partition for tp in revoked if tp.topic == self.topic]
            if not mine:
                return
            await self._settle()
            self.handler.revoked(mine)
            self.assigned.difference_update(mine)
            for partition in mine:
                self._committed.pop(partition, None)
            log.info("fetch.revoked", loop=self.name, partitions=sorted(mine))
