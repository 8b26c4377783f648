"""Consumer lag in the worker's /metrics and /health/detailed, read from the broker.

The reading runs in a child process of its own. Its admin requests go to the groups'
coordinators, and librdkafka (2.16) aborts the whole process when a coordinator's
connection drops in the middle of one (``rd_kafka_enq_once_del_source_return: Assertion
eonce->refcnt > 0``, librdkafka issues 3663 and 4605): seen here when a Kafka broker was
killed under a worker. In a child, such an abort costs one reading; the next starts a
new child, and the worker's agents never notice.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import faust
from confluent_kafka import KafkaException
from mode import Service

from agents import web
from streams import config
from streams.adapters.lag import GroupLag, LagReader, agent_groups
from streams.adapters.metrics import LAG

# The child's reader, kept between readings (its clients stay connected).
_reader: LagReader | None = None


def _read(bootstrap: str, groups: dict[str, str], client_id: str,
          ) -> tuple[list[GroupLag], str | None]:
    """In the child: one reading, or why it failed (a KafkaException does not pickle)."""
    global _reader
    if _reader is None:
        _reader = LagReader(bootstrap, groups, client_id)
        atexit.register(_reader.close)
    try:
        return _reader.read(), None
    except KafkaException as exc:
        return [], str(exc)


def _end_with(parent: int) -> None:
    """In the child, first: exit as soon as the worker is gone. A worker killed with
    SIGKILL cannot stop its child, whose librdkafka clients would otherwise retry for
    ever (seen: a hundred orphans after a test run)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)  # no atexit: closing the clients would wait for a broker

    threading.Thread(target=watch, name="end-with-worker", daemon=True).start()


class LagService(Service):
    """Reads lag every LAG_INTERVAL_SECONDS in a child process, so that scrapes and the
    event loop never wait for the broker and a client crash cannot end the worker."""

    def __init__(self, settings: config.Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        # Spawned, not forked: the worker runs librdkafka threads, which a fork would copy
        # in whatever state they are.
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_end_with, initargs=(os.getpid(),))

    async def on_start(self) -> None:
        self._pool = self._new_pool()
        web.report("lag", LAG.summary)

    @Service.task
    async def _refresh(self) -> None:
        s = self.settings
        groups = agent_groups(s.app_id, s.topics.of_agents())
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            assert self._pool is not None, "started"
            try:
                read, error = await loop.run_in_executor(
                    self._pool, _read, s.kafka_bootstrap_servers, groups, f"{s.app_id}-lag")
            except BrokenProcessPool:
                LAG.failed("the lag reader process died; a new one reads next time")
                self._pool.shutdown(wait=False)
                self._pool = self._new_pool()
            else:
                if error is None:
                    LAG.update(read, time.time())
                else:
                    LAG.failed(error)
            await self.sleep(s.lag_interval_seconds)

    async def on_stop(self) -> None:
        if self._pool is not None:
            # The reading in flight finishes before the child closes its clients.
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)


def install(app: faust.App, settings: config.Settings) -> LagService:
    service = LagService(settings, loop=app.loop, beacon=app.beacon)
    app.add_dependency(service)
    return service
