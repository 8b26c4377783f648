"""The batch-consumer primitive: whole fetches, not messages, are the unit of work.

A ``FetchLoop`` is a mode Service started with the Faust app. It owns a confluent-kafka
consumer in its own consumer group and hands every fetch (the messages of one
``consume`` call, grouped per partition) to a plain handler. Offsets are committed only
after the handler has made everything below them durable.

Why confluent-kafka and not Faust's aiokafka consumer: librdkafka fetches and decodes in
its own threads, which leaves the Python thread to our work; per event it costs about
half of what aiokafka does (see bench/). ``consume`` blocks, so it runs in a worker
thread; rebalance callbacks fire inside it and are carried over to the event loop, where
they settle a partition's work before it is given up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from mode import Service
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from streams.adapters import metrics
from streams.adapters.group_protocol import librdkafka_settings
from streams.adapters.kafka import client_conf, kafka_error
from streams.errors import RetryableError

log = structlog.get_logger(__name__)

#: Longest a stopping loop waits to settle and commit what it holds.
STOP_SETTLE_S = 10.0
#: Longest a request to the broker (a commit above all) may wait for its answer.
REQUEST_TIMEOUT_MS = 10_000
#: Times the start offsets of newly assigned partitions are asked for.
START_OFFSET_ATTEMPTS = 5


def _retriable(exc: BaseException) -> bool:
    return (isinstance(exc, KafkaException)
            and isinstance(kafka_error(exc, "looking up offsets"), RetryableError))


class FetchHandler(Protocol):
    """What a FetchLoop drives. ``records``, ``tick`` and ``drain`` are synchronous and do
    no I/O; ``settle`` makes their output durable and names the offsets to commit."""

    async def assigned(self, starts: dict[int, int]) -> None: ...

    def revoked(self, partitions: Sequence[int]) -> None: ...

    def records(self, partition: int, records: list[Message], now: float) -> None: ...

    def tick(self, now: float) -> None: ...

    def drain(self, now: float) -> None: ...

    async def settle(self) -> dict[int, int]: ...

    def wants_more(self) -> bool:
        """False pauses fetching (polling goes on, so the group membership stays)."""
        ...


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
        protocol: str = "range",
        instance_id: str | None = None,
        idle_timeout: float = 0.2,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.topic = topic
        self.group_id = group_id
        self.handler = handler
        self.max_records = max_records
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.assigned: set[int] = set()
        # True once the group has given this member its share (which may be no partition
        # at all, when workers outnumber partitions): the worker is then ready.
        self.rebalanced = False
        self.first_fetch_at: float | None = None
        self._lock = asyncio.Lock()
        self._committed: dict[int, int] = {}
        self._finished = asyncio.Event()
        # Set when a stop gave up settling: the partitions are then handed back as after
        # a crash, with nothing more settled or committed.
        self._abandoned = False
        self._rebalance_failure: Exception | None = None
        # One thread blocks in consume(); the other runs the short blocking calls
        # (commit, offsets) so they never wait behind it.
        self._poller = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-consume")
        self._calls = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-calls")
        self._consumer = Consumer(
            {
                **client_conf(bootstrap_servers, f"{group_id}-{name}", service=True),
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # A long settle (database outage) must not cost the group membership.
                "max.poll.interval.ms": max(300_000, session_timeout_ms),
                # A commit waits this long at most for a broker that stopped answering
                # (librdkafka's 60 s held the worker's shutdown, and a failover, as long).
                "socket.timeout.ms": REQUEST_TIMEOUT_MS,
                # Wake as soon as data is there instead of librdkafka's default backoff.
                "fetch.queue.backoff.ms": 1,
                "fetch.wait.max.ms": 100,
                "queued.max.messages.kbytes": 65536,
                **librdkafka_settings(protocol, session_timeout_ms, heartbeat_interval_ms),
                # Static membership: a member that comes back under the same id within
                # the session timeout takes its partitions back without a rebalance.
                **({"group.instance.id": instance_id} if instance_id else {}),
            }
        )

    @property
    def label(self) -> str:
        return f"FetchLoop({self.name})"

    async def on_start(self) -> None:
        self._consumer.subscribe(
            [self.topic], on_assign=self._guarded(self._on_assign),
            on_revoke=self._guarded(self._on_revoke), on_lost=self._guarded(self._on_lost),
        )
        log.info("fetch.started", loop=self.name, topic=self.topic, group=self.group_id)

    async def on_stop(self) -> None:
        # consume() must not be in flight while the last commit (on another thread) and
        # close() run: a rebalance callback inside it would wait for the event loop,
        # and the commit for the callback.
        await self._finished.wait()
        # After a crash the handler's state is not to be trusted: nothing more is
        # committed, and the partitions' next owner re-reads from the last commit.
        if not self.crashed:
            async with self._lock:
                self.handler.drain(self.clock())
                try:
                    async with asyncio.timeout(STOP_SETTLE_S):
                        await self._settle()
                except TimeoutError:
                    # The broker or the database is away: waiting for it would hold the
                    # shutdown for the whole outage. What is not settled stays
                    # uncommitted and the partitions' next owner reads it again, as
                    # after a crash (the guarantees hold through SIGKILL too).
                    self._abandoned = True
                    log.warning("fetch.stopped_unsettled", loop=self.name,
                                waited_s=STOP_SETTLE_S)
        await self.loop.run_in_executor(self._poller, self._consumer.close)
        self._poller.shutdown(wait=False)
        self._calls.shutdown(wait=False)
        log.info("fetch.stopped", loop=self.name)

    @Service.task
    async def _run(self) -> None:
        try:
            await self._consume_until_stopped()
        finally:
            self._finished.set()

    async def _consume_until_stopped(self) -> None:
        consumer = self._consumer
        handler = self.handler
        run = self.loop.run_in_executor
        paused = False
        while not self.should_stop:
            # Kafka wants poll() called within max.poll.interval.ms however long the
            # handler is busy, so a full handler pauses the partitions and polls on.
            # Pausing again each time covers partitions assigned in the meantime.
            want = handler.wants_more()
            if not want or paused:
                mine = [TopicPartition(self.topic, p) for p in self.assigned]
                if mine:
                    (consumer.resume if want else consumer.pause)(mine)
                paused = not want
            messages = await run(self._poller, consumer.consume, self.max_records,
                                 self.idle_timeout)
            if self._rebalance_failure is not None:
                # Crash: the supervisor starts the agent again with a new consumer.
                raise self._rebalance_failure
            async with self._lock:
                if self.should_stop:
                    # Stopping: these stay unread and uncommitted; on_stop settles the rest.
                    return
                now = self.clock()
                by_partition: dict[int, list[Message]] = {}
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.fatal() or error.code() == KafkaError._FATAL:
                            # The consumer is finished (fenced, a refused instance id):
                            # crash, and the supervisor starts the agent with a new one.
                            raise KafkaException(error)
                        self._on_error(error)
                        continue
                    # Data messages always carry their partition; only errors may not.
                    part: int = message.partition()  # type: ignore[assignment]
                    bucket = by_partition.get(part)
                    if bucket is None:
                        by_partition[part] = bucket = []
                    bucket.append(message)
                if by_partition and self.first_fetch_at is None:
                    self.first_fetch_at = now
                    log.info("fetch.first", loop=self.name, ts=now)
                for partition, records in by_partition.items():
                    if partition in self.assigned:
                        handler.records(partition, records, now)
                handler.tick(now)
                await self._settle()

    def _on_error(self, error: KafkaError) -> None:
        log.warning("fetch.error", loop=self.name, code=error.name(), error=error.str())

    def _retrying(self) -> AsyncRetrying:
        """Retry what the database or broker being away made fail, until it is back."""
        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            # Capped low: once the database is back, work resumes within seconds.
            wait=wait_exponential_jitter(multiplier=0.2, max=10.0),
            before_sleep=self._log_retry,
            reraise=True,
        )

    async def _settle(self) -> None:
        changed = await self._settled_offsets()
        if not changed:
            return
        try:
            await self.loop.run_in_executor(
                self._calls, lambda: self._consumer.commit(offsets=changed, asynchronous=False)
            )
        except KafkaException as exc:
            # The work is durable; the next settle, or the partition's next owner,
            # commits it (and re-forms only what was recorded).
            log.warning("fetch.commit_failed", loop=self.name, error=str(exc))
            return
        for tp in changed:
            self._committed[tp.partition] = tp.offset

    async def _settled_offsets(self) -> list[TopicPartition]:
        """Settle the handler; the offsets that moved since the last commit."""
        # While the database or broker is away, consumption pauses here (the lock is
        # held and consume() is not called) instead of buffering without bound.
        async for attempt in self._retrying():
            with attempt:
                offsets = await self.handler.settle()
        return [
            TopicPartition(self.topic, p, o)
            for p, o in offsets.items()
            if p in self.assigned and self._committed.get(p) != o
        ]

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("fetch.retry", loop=self.name, attempt=state.attempt_number,
                    error=str(exc))

    # -- rebalance: called inside consume() on the poller thread ---------------------

    def _guarded(self, callback: Callable[[Consumer, list[TopicPartition]], None],
                 ) -> Callable[[Consumer, list[TopicPartition]], None]:
        """An exception raised in a rebalance callback comes back out of consume() as
        something no ``except`` matches (seen after a broker stall: a bare KafkaError
        from an offset lookup ended the polling thread and left the loop waiting for
        ever). It is kept instead, and the loop raises it."""

        def guarded(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            try:
                callback(consumer, partitions)
            except Exception as exc:  # noqa: BLE001 - raised from the loop, see above
                log.warning("fetch.rebalance_failed", loop=self.name, error=str(exc))
                self._rebalance_failure = exc

        return guarded

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Offsets are looked up here, on the polling thread: from any other thread
        # librdkafka would wait for this callback to return first, and never answer.
        starts = self._start_offsets([tp for tp in partitions if tp.topic == self.topic])
        asyncio.run_coroutine_threadsafe(self._assigned(starts), self.loop).result()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        final = asyncio.run_coroutine_threadsafe(self._revoked(partitions, lost=False),
                                                 self.loop).result()
        # The partitions' last commit happens here, on the polling thread, inside the
        # callback: from any other thread librdkafka would wait for this callback to
        # return first, and the two would wait for each other for ever.
        if final:
            try:
                consumer.commit(offsets=final, asynchronous=False)
            except KafkaException as exc:
                log.warning("fetch.commit_failed", loop=self.name, error=str(exc))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        asyncio.run_coroutine_threadsafe(self._revoked(partitions, lost=True),
                                         self.loop).result()

    async def _assigned(self, starts: dict[int, int]) -> None:
        async with self._lock:
            async for attempt in self._retrying():
                with attempt:
                    await self.handler.assigned(starts)
            self.assigned.update(starts)
            self._committed.update(starts)
            self.rebalanced = True
            metrics.PARTITIONS_ASSIGNED.labels(self.group_id).set(len(self.assigned))
            log.info("fetch.assigned", loop=self.name, partitions=sorted(starts))

    def _start_offsets(self, partitions: list[TopicPartition]) -> dict[int, int]:
        """Where reading will start: the committed offset, else the log start. A broker
        that has just come back answers "not leader" for a moment: asked again, briefly,
        before the loop gives up (and its agent restarts)."""
        if not partitions:
            return {}
        retrying = Retrying(retry=retry_if_exception(_retriable),
                            wait=wait_exponential_jitter(initial=0.2, max=2.0),
                            stop=stop_after_attempt(START_OFFSET_ATTEMPTS), reraise=True)
        return retrying(self._look_up_starts, partitions)

    def _look_up_starts(self, partitions: list[TopicPartition]) -> dict[int, int]:
        starts: dict[int, int] = {}
        for tp in self._consumer.committed(partitions, timeout=30):
            if tp.offset >= 0:
                starts[tp.partition] = tp.offset
            else:
                low, _high = self._consumer.get_watermark_offsets(tp, timeout=30)
                starts[tp.partition] = low
        return starts

    async def _revoked(self, partitions: list[TopicPartition], *, lost: bool,
                       ) -> list[TopicPartition]:
        """Give partitions up; the offsets the caller commits first (none when lost)."""
        async with self._lock:
            mine = [tp.partition for tp in partitions if tp.topic == self.topic]
            if not mine:
                return []
            final = ([] if lost or self.crashed or self._abandoned
                     else await self._settled_offsets())
            self.handler.revoked(mine)
            self.assigned.difference_update(mine)
            metrics.PARTITIONS_ASSIGNED.labels(self.group_id).set(len(self.assigned))
            for partition in mine:
                self._committed.pop(partition, None)
            log.info("fetch.revoked", loop=self.name, partitions=sorted(mine), lost=lost)
            return final
