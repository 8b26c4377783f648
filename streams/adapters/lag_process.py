"""Lag readings taken in a child process of their own.

librdkafka (2.16) aborts the whole process when a group coordinator's connection drops in
the middle of an admin request (``rd_kafka_enq_once_del_source_return: Assertion
eonce->refcnt > 0``, librdkafka issues 3663 and 4605): seen when a Kafka broker was
killed under a worker, and as a SIGSEGV of ``streamsight lag-exporter``. After a broker
stall, a reading was seen to wait past its calls' timeouts, and clients to keep failing
once the broker was back. In a child, each costs one reading (at most
``READ_TIMEOUT_S``): after a failed reading, the next starts in a new child.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from multiprocessing.pool import Pool

from confluent_kafka import KafkaException

from streams.adapters.lag import GroupLag, LagReader
from streams.errors import StreamsightError

#: Longest one reading may take, its broker calls' own timeouts included.
READ_TIMEOUT_S = 30.0
#: How often a reading in flight looks whether it is still wanted.
_POLL_S = 0.2

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
    try:
        return _reader.read(), None
    except (KafkaException, StreamsightError) as exc:
        return [], str(exc)


class LagProcess:
    """A LagReader in a child process: ``read`` blocks for one reading and raises
    KafkaException when it failed, took longer than ``READ_TIMEOUT_S`` (a stalled broker
    has left librdkafka calls waiting past their own timeouts) or the child died; the
    child is then replaced."""

    def __init__(self, bootstrap_servers: str, groups: Mapping[str, str], client_id: str,
                 ) -> None:
        self._args = (bootstrap_servers, dict(groups), client_id)
        self._pool = self._new_pool()
        self._cancelled = threading.Event()

    @staticmethod
    def _new_pool() -> Pool:
        # Spawned, not forked: the parent runs librdkafka threads, which a fork would copy
        # in whatever state they are.
        return multiprocessing.get_context("spawn").Pool(
            1, initializer=_end_with, initargs=(os.getpid(),))

    def read(self) -> list[GroupLag]:
        result = self._pool.apply_async(_read, self._args)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while not result.ready():
            if self._cancelled.is_set():
                raise KafkaException("the lag reader was stopped during a reading")
            if time.monotonic() >= deadline:
                # A reading that never ends, or a child that died with it.
                self._renew()
                raise KafkaException(f"no lag reading within {READ_TIMEOUT_S:g} s; a new "
                                     "reader process reads next time")
            result.wait(_POLL_S)
        groups, error = result.get()
        if error is not None:
            # Clients that failed were seen to stay broken once the broker was back
            # (after a stall, every metadata request kept failing): new ones read next.
            self._renew()
            raise KafkaException(error)
        return groups

    def _renew(self) -> None:
        self._pool.terminate()
        self._pool.join()
        self._pool = self._new_pool()

    def cancel(self) -> None:
        """End the reading in flight (KafkaException) within ``_POLL_S``; safe from a
        signal handler."""
        self._cancelled.set()

    def close(self) -> None:
        """At once: the child holds no group and commits nothing, so nothing is lost by
        not waiting for a reading held up by the broker."""
        self.cancel()
        self._pool.terminate()
        self._pool.join()
