"""Kafka through confluent-kafka: the clients we build, and what a cluster says about its
topics and groups, read rather than believed where a broker is known to answer wrong.

Every command and the lag readers ask a ``Cluster``; nothing else works around a broker.
What brokers answer, measured on Apache Kafka 4.4 and Tansu (tests/integration/
test_cluster.py checks each on both, so a Tansu that fixes one fails its test):

- End offset (ListOffsets latest, the high watermark). Kafka: exact. Tansu: the base
  offset of the last produce batch + 1, trailing by up to a batch. On Tansu the
  ``Cluster`` reads from there to the end of the log.
- Offset of a point in time (ListOffsets by timestamp). Kafka: exact. Tansu: 0 for any
  time. On Tansu the ``Cluster`` searches message timestamps (binary search).
- Group members (DescribeGroups). Kafka: exact. Tansu: 0 for a group in use (its state,
  ``stable``, is right). On Tansu members are unknown (None) and a group's idleness goes
  by its state.

Two more Tansu quirks are handled where they bite, not here: a new group's join waits
about half the session timeout (tests and the demo use a short one) and a cooperative
rebalance never hands revoked partitions on (``group_protocol`` picks range there).

Which answers a broker gets believed for is decided from its ApiVersions: a broker
without OffsetForLeaderEpoch (API 23) keeps no leader epochs and so no Kafka-style log
with a high watermark and time index. Apache Kafka (since 0.11), and the brokers that
replicate a log the way it does, answer it; Tansu, which keeps messages in memory or in
a database, does not.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.protocol.admin import ApiVersionRequest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from streams.errors import ConfigError, PermanentError, RetryableError, StreamsightError

ADMIN_TIMEOUT = 15.0
#: How long a command waits for a broker to accept a connection before saying so.
_PROBE_S = 5.0

#: OffsetForLeaderEpoch: answered by brokers that keep a replicated log with leader epochs.
_OFFSET_FOR_LEADER_EPOCH = 23
_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]

#: (topic, partition)
Where = tuple[str, int]


# --- clients ------------------------------------------------------------------------------


def client_conf(bootstrap: str, client_id: str = "streamsight", *, service: bool = False,
                ) -> dict[str, Any]:
    """Settings every client of ours starts from. librdkafka's lines go to the
    ``librdkafka`` logger, as JSON like ours, served by the client's poll or consume.
    A command's failures reach its caller as one StreamsightError, which librdkafka's
    lines about each connection attempt (level 3) would only repeat: it keeps level 2
    and below. A ``service`` (the worker's consumers) keeps warnings and errors too;
    the log's repeat window makes an outage a line a minute."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "log_level": 4 if service else 2,
        "logger": logging.getLogger("librdkafka"),
    }


def make_admin(bootstrap: str, **overrides: Any) -> AdminClient:
    """An AdminClient for ``bootstrap``; ``overrides`` are librdkafka settings."""
    return AdminClient({**client_conf(bootstrap, "streamsight-admin"), **overrides})


def make_reader(bootstrap: str, client_id: str) -> Consumer:
    """A consumer that is assigned partitions, never subscribed, and never commits: it
    joins no group and moves no offset (librdkafka needs a group.id all the same)."""
    return Consumer({
        **client_conf(bootstrap, client_id),
        "group.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # Probes move from offset to offset: a fetch held open at the end would delay each.
        "fetch.wait.max.ms": 10,
    })


def kafka_error(exc: BaseException, doing: str) -> StreamsightError:
    """Map a confluent-kafka failure onto streams.errors."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if isinstance(err, KafkaError):
        text = f"{doing}: {err.str()} ({err.name()})"
        if err.code() == KafkaError._UNSUPPORTED_FEATURE:
            return PermanentError(f"{doing}: the broker does not support it ({err.str()})")
        if (
            err.code()
            in (
                KafkaError._TRANSPORT,
                KafkaError._TIMED_OUT,
                KafkaError._ALL_BROKERS_DOWN,
                KafkaError.REQUEST_TIMED_OUT,
            )
            or err.retriable()
        ):
            return RetryableError(text)
        return PermanentError(text)
    return RetryableError(f"{doing}: {exc}")


# --- what the broker is -------------------------------------------------------------------


def _host_port(server: str) -> tuple[str, str]:
    host, _, port = server.strip().split("://")[-1].rpartition(":")
    return host.strip("[]"), port


def _reason(exc: BaseException, host: str, within_s: float) -> str:
    """Why a connection to ``host`` failed, in a few words."""
    if isinstance(exc, socket.gaierror | ValueError):
        return f"no such host {host}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {within_s:g} s"
    return str(exc) or type(exc).__name__


def why_unreachable(bootstrap: str) -> str:
    """What stands between us and the first bootstrap server, in a few words."""
    host, port = _host_port(bootstrap.split(",")[0])
    try:
        socket.getaddrinfo(host, int(port))
        socket.create_connection((host, int(port)), timeout=_PROBE_S).close()
    except (OSError, ValueError) as exc:
        return _reason(exc, host, _PROBE_S)
    return "it does not answer as a Kafka broker"


async def api_keys(bootstrap: str) -> frozenset[int]:
    """The requests the broker answers (its ApiVersions)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="streamsight-probe")
    # aiokafka logs each refused connection; the one-line error below says it all.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await client.bootstrap()
        response = await client.send(client.get_random_node(), ApiVersionRequest())
    except AIOKafkaError:
        raise RetryableError(f"Kafka at {bootstrap}: not reachable ({why_unreachable(bootstrap)})"
                             ) from None
    finally:
        quiet.setLevel(level)
        await client.close()
    return frozenset(key for key, _low, _high in response.api_versions)


async def unanswered(bootstrap: str, within_s: float) -> str | None:
    """None when a server of ``bootstrap`` answers a request within ``within_s`` seconds,
    else why none did (the last server's reason). One connection per call, no client:
    a watch that asks every few seconds adds no retry loop and no log line of its own."""
    why = "no server listed"
    for server in bootstrap.split(","):
        host, port = _host_port(server)
        try:
            async with asyncio.timeout(within_s):
                conn = await create_conn(host, int(port), client_id="streamsight-watch",
                                         request_timeout_ms=int(within_s * 1000))
                try:
                    await conn.send(ApiVersionRequest())
                finally:
                    conn.close()
            return None
        except (OSError, ValueError, AIOKafkaError) as exc:
            why = f"{server.strip()}: {_reason(exc, host, within_s)}"
    return why


@dataclass(frozen=True)
class Quirks:
    """Which of the broker's answers are read rather than believed."""

    ends_trail: bool = False
    times_unlisted: bool = False
    members_unreported: bool = False

    @classmethod
    def of(cls, keys: frozenset[int]) -> Quirks:
        if _OFFSET_FOR_LEADER_EPOCH in keys:
            return cls()
        return cls(ends_trail=True, times_unlisted=True, members_unreported=True)


def quirks(bootstrap: str) -> Quirks:
    """The broker's quirks; callable from inside an event loop too."""
    with ThreadPoolExecutor(1) as pool:
        return Quirks.of(pool.submit(asyncio.run, api_keys(bootstrap)).result())


def ensure_reachable(bootstrap: str) -> None:
    """RetryableError in one line, within seconds, when no broker answers at ``bootstrap``
    (librdkafka's clients would retry for their whole request timeout)."""
    quirks(bootstrap)


def require_topic(bootstrap: str, topic: str) -> int:
    """The partitions of ``topic``; one line when the broker is not reachable or the topic
    does not exist (commands that write never create topics: a broker with
    auto.create.topics.enable would make one for a typo)."""
    with Cluster(bootstrap, "streamsight-check") as cluster:
        try:
            return len(cluster.partitions(topic))
        except PermanentError:
            raise ConfigError(f"topic {topic} does not exist on {bootstrap}: create it with "
                              "`streamsight topics apply`") from None


# --- what the cluster says ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    state: str  # stable, empty, dead, preparing_rebalance, ...
    #: None where the broker does not report members.
    members: int | None

    @property
    def idle(self) -> bool:
        """Nobody consumes: the state says so, and so does the member count if known."""
        return self.state in ("empty", "dead") and not self.members


class Cluster:
    """Topics' offsets and groups' states, exact on every broker; ``close()`` when done."""

    def __init__(self, bootstrap: str, client_id: str = "streamsight",
                 timeout: float = ADMIN_TIMEOUT) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.admin = make_admin(bootstrap, **{"client.id": client_id})
        self._client_id = client_id
        self._reader: Consumer | None = None
        self._quirks: Quirks | None = None

    @property
    def quirks(self) -> Quirks:
        if self._quirks is None:
            self._quirks = quirks(self.bootstrap)
        return self._quirks

    @property
    def reader(self) -> Consumer:
        if self._reader is None:
            self._reader = make_reader(self.bootstrap, f"{self._client_id}-reader")
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> Cluster:
        # A command fails here, fast and in one line, when the broker is not there.
        _ = self.quirks
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- topics

    def partitions(self, topic: str) -> list[int]:
        """The topic's partitions; PermanentError when it does not exist."""
        found = self.topics().get(topic)
        if found is None:
            raise PermanentError(f"topic {topic!r} does not exist")
        return found

    def topics(self) -> dict[str, list[int]]:
        """Every topic with partitions (internal ones included)."""
        try:
            # All topics: a request naming one may create it (auto-create).
            metadata = self.admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise kafka_error(exc, "reading the cluster's topics") from exc
        return {name: sorted(t.partitions) for name, t in metadata.topics.items()
                if t.error is None and t.partitions}

    def _list(self, wheres: Iterable[Where], spec: Any) -> dict[Where, tuple[int, int]]:
        """(offset, timestamp) per partition from ListOffsets."""
        tps = [TopicPartition(t, p) for t, p in wheres]
        if not tps:
            return {}
        try:
            futures = self.admin.list_offsets({tp: spec for tp in tps},
                                              request_timeout=self.timeout)
            return {(tp.topic, tp.partition): (f.result().offset, f.result().timestamp)
                    for tp, f in futures.items()}
        except KafkaException as exc:
            raise kafka_error(exc, "listing offsets") from exc

    def lows(self, wheres: Iterable[Where]) -> dict[Where, int]:
        return {w: o for w, (o, _) in self._list(wheres, _EARLIEST).items()}

    def spans(self, wheres: Iterable[Where]) -> dict[Where, tuple[int, int]]:
        """(low, end) per partition, the end being the offset the next message gets."""
        wheres = list(wheres)
        lows = self.lows(wheres)
        ends = {w: o for w, (o, _) in self._list(wheres, _LATEST).items()}
        if self.quirks.ends_trail:
            # From just before the reported end, one fetch returns the last produce batch
            # whole: its end is the log's.
            ends = self._read_to_end({w: max(lows[w], ends[w] - 1) for w in wheres})
        return {w: (lows[w], ends[w]) for w in wheres}

    def ends(self, wheres: Iterable[Where]) -> dict[Where, int]:
        return {w: end for w, (_, end) in self.spans(wheres).items()}

    def bounds(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        """(low, end) per partition of ``topic``."""
        spans = self.spans((topic, p) for p in partitions)
        return {p: spans[(topic, p)] for p in partitions}

    def _read_to_end(self, starts: Mapping[Where, int]) -> dict[Where, int]:
        reader = self.reader
        reader.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        ends: dict[Where, int] = {}
        deadline = time.monotonic() + self.timeout * 2
        try:
            while len(ends) < len(starts):
                if time.monotonic() > deadline:
                    missing = sorted(set(starts) - set(ends))
                    raise PermanentError(f"reading the end of {missing} timed out")
                for message in reader.consume(10_000, 0.1):
                    error = message.error()
                    if error is None:
                        continue
                    if error.code() == KafkaError._PARTITION_EOF:
                        where: Where = (message.topic(), message.partition())  # type: ignore[assignment]
                        ends[where] = message.offset()  # type: ignore[assignment]
                    elif error.fatal() or not error.retriable():
                        raise kafka_error(KafkaException(error), "reading to the end")
        finally:
            reader.unassign()
        return ends

    def first_at_or_after(self, topic: str, partition: int, offset: int, end: int,
                          ) -> tuple[int, int] | None:
        """(offset, timestamp ms) of the first message at or after ``offset`` and before
        ``end``, or None."""
        if offset >= end:
            return None
        reader = self.reader
        reader.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + self.timeout
        try:
            while time.monotonic() < deadline:
                message = reader.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is None:
                    at: int = message.offset()  # type: ignore[assignment]
                    return (at, message.timestamp()[1]) if at < end else None
                if error.code() == KafkaError._PARTITION_EOF:
                    return None
                if error.fatal() or not error.retriable():
                    raise kafka_error(KafkaException(error), f"reading {topic}")
        finally:
            reader.unassign()
        raise PermanentError(f"reading {topic}/{partition} at offset {offset} timed out")

    def offsets_at(self, topic: str, ms: int, bounds: Mapping[int, tuple[int, int]],
                   ) -> dict[int, int]:
        """Per partition, the offset of the first message stamped at or after ``ms``
        within ``bounds`` (the end when there is none)."""
        if self.quirks.times_unlisted:
            return {p: self._search(topic, p, ms, low, end) for p, (low, end) in bounds.items()}
        answers = self._list([(topic, p) for p in bounds], OffsetSpec.for_timestamp(ms))
        out = {}
        for partition, (low, end) in bounds.items():
            offset = answers[(topic, partition)][0]
            # -1: no message that late; a later answer counts messages after the bounds.
            out[partition] = end if offset < 0 else min(max(offset, low), end)
        return out

    def _search(self, topic: str, partition: int, ms: int, low: int, end: int) -> int:
        """Binary search over message timestamps in [low, end); assumes they do not go
        backwards within a partition (producers stamping the current time, or
        LogAppendTime)."""
        lo, hi = low, end
        while lo < hi:
            mid = (lo + hi) // 2
            found = self.first_at_or_after(topic, partition, mid, end)
            if found is None or found[1] >= ms:
                hi = mid
            else:
                lo = found[0] + 1
        return lo

    # -- groups

    def groups(self, names: Iterable[str]) -> dict[str, Group]:
        names = list(names)
        if not names:
            return {}
        try:
            described = self.admin.describe_consumer_groups(names, request_timeout=self.timeout)
            out = {}
            for name in names:
                description = described[name].result()
                state = str(getattr(description.state, "name", description.state)).lower()
                members = None if self.quirks.members_unreported else len(description.members)
                out[name] = Group(state, members)
            return out
        except KafkaException as exc:
            raise kafka_error(exc, f"describing consumer groups {', '.join(names)}") from exc

    def group(self, name: str) -> Group:
        return self.groups([name])[name]

    def committed(self, group: str, topic: str, partitions: Sequence[int],
                  ) -> dict[int, int | None]:
        """The group's committed offset per partition, None where it never committed."""
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p)
                                                       for p in partitions])
        try:
            result = self.admin.list_consumer_group_offsets(
                [request], request_timeout=self.timeout)[group].result()
        except KafkaException as exc:
            raise kafka_error(exc, f"reading the offsets of consumer group {group}") from exc
        found = {tp.partition: tp.offset for tp in result.topic_partitions}
        return {p: (found[p] if found.get(p, OFFSET_INVALID) >= 0 else None)
                for p in partitions}
