"""Lag readings taken in a child process of their own.

librdkafka (2.16) aborts the whole process when a group coordinator's connection drops in
the middle of an admin request (``rd_kafka_enq_once_del_source_return: Assertion
eonce->refcnt > 0``, librdkafka issues 3663 and 4605): seen when a Kafka broker was
killed under a worker, and as a SIGSEGV of ``streamsight lag-exporter``. In a child, such
a crash costs one reading; the next reading starts a new child.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from confluent_kafka import KafkaException

from streams.adapters.lag import GroupLag, LagReader
from streams.errors import StreamsightError

# The child's reader, kept between readings (its clients stay connected).
_reader: LagReader | None = None


def _end_with(parent: int) -> None:
    """In the child, first: exit as soon as the parent is gone. A process killed with
    SIGKILL cannot stop its child, whose librdkafka clients would otherwise retry for
    ever (seen: a hundred orphans after a test run)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)  # no atexit: closing the clients would wait for a broker

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _read(bootstrap: str, groups: dict[str, str], client_id: str,
          ) -> tuple[list[GroupLag], str | None]:
    """In the child: one reading, or why it failed (a KafkaException does not pickle;
    the reader's Cluster raises StreamsightError for the most part)."""
    global _reader
    if _reader is None:
        _reader = LagReader(bootstrap, groups, client_id)
        atexit.register(_reader.close)
    try:
        return _reader.read(), None
    except (KafkaException, StreamsightError) as exc:
        return [], str(exc)


class LagProcess:
    """A LagReader in a child process: ``read`` blocks for one reading and raises
    KafkaException when it failed, the child's death included."""

    def __init__(self, bootstrap_servers: str, groups: Mapping[str, str], client_id: str,
                 ) -> None:
        self._args = (bootstrap_servers, dict(groups), client_id)
        self._pool = self._new_pool()

    @staticmethod
    def _new_pool() -> ProcessPoolExecutor:
        # Spawned, not forked: the parent runs librdkafka threads, which a fork would copy
        # in whatever state they are.
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_end_with, initargs=(os.getpid(),))

    def read(self) -> list[GroupLag]:
        try:
            groups, error = self._pool.submit(_read, *self._args).result()
        except BrokenProcessPool:
            self._pool.shutdown(wait=False)
            self._pool = self._new_pool()
            raise KafkaException("the lag reader process died; a new one reads next time") from None
        if error is not None:
            raise KafkaException(error)
        return groups

    def close(self) -> None:
        """After the reading in flight; the child closes its clients as it exits."""
        self._pool.shutdown()
