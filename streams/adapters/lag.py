"""Consumer lag read from the broker, so that it keeps growing when every worker is dead.

Per consumer group, topic and partition: offset lag (the high watermark minus the
committed offset) and time lag (how old the first message not yet committed is), plus
the group's state and member count, all from Kafka's admin API (through the Kafka
adapter's ``Cluster``, which reads the exact end of each partition where a broker's
watermark trails). A worker that reported
its own lag would go silent exactly when lag matters most; this runs in every worker and
in ``streamsight lag-exporter``, a process of its own that needs no worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.adapters.kafka import Cluster, make_reader
from streams.errors import StreamsightError

log = structlog.get_logger(__name__)

#: Longest wait for the broker's answers in one reading.
TIMEOUT_S = 10.0
#: Failed readings in a row after which lag is unknown rather than its last value.
STALE_AFTER = 3


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    #: The committed offset, or None when the group never committed on the partition
    #: (it then starts at the earliest offset).
    committed: int | None
    high_watermark: int
    messages: int
    seconds: float


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    topic: str
    state: str
    #: None where the broker does not report members (Tansu).
    members: int | None
    partitions: tuple[PartitionLag, ...]

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions)

    @property
    def seconds(self) -> float:
        return max((p.seconds for p in self.partitions), default=0.0)


class Reader(Protocol):
    def read(self) -> list[GroupLag]:
        """One reading of every group; raises KafkaException or StreamsightError when it
        fails."""
        ...


class LagReader:
    """Reads the lag of the given groups (group -> the topic it consumes)."""

    def __init__(self, bootstrap_servers: str, groups: Mapping[str, str], client_id: str,
                 cluster: Cluster | None = None) -> None:
        """``cluster``: one the caller already asks (and closes), instead of a new one."""
        self.groups = dict(groups)
        self._owns_cluster = cluster is None
        self._cluster = cluster or Cluster(bootstrap_servers, client_id, timeout=TIMEOUT_S)
        # Reads single messages for their timestamps (a fetch held open at the end of a
        # partition would delay each reading by half a second).
        self._reader = make_reader(bootstrap_servers, f"{client_id}-stamps")
        # Timestamps of the messages at committed offsets: they do not change.
        self._stamps: dict[tuple[str, int, int], float] = {}

    def close(self) -> None:
        self._reader.close()
        if self._owns_cluster:
            self._cluster.close()

    def read(self, now: float | None = None) -> list[GroupLag]:
        """One reading of every group; raises KafkaException or StreamsightError when the
        broker fails."""
        now = time.time() if now is None else now
        cluster = self._cluster
        existing = cluster.topics()
        partitions = {t: existing[t] for t in sorted(set(self.groups.values())) if t in existing}
        wheres = [(t, p) for t, ps in partitions.items() for p in ps]
        spans = cluster.spans(wheres)
        described = cluster.groups(self.groups)
        positions: dict[tuple[str, str, int], tuple[int | None, int]] = {}
        for group, topic in self.groups.items():
            committed = cluster.committed(group, topic, partitions.get(topic, []))
            for partition, offset in committed.items():
                start = offset if offset is not None else spans[(topic, partition)][0]
                positions[(group, topic, partition)] = (offset, start)
        stamps = self._timestamps({
            (topic, partition, start)
            for (_, topic, partition), (_, start) in positions.items()
            if start < spans[(topic, partition)][1]})

        out = []
        for group, topic in self.groups.items():
            rows = []
            for partition in partitions.get(topic, []):
                own, start = positions[(group, topic, partition)]
                high = spans[(topic, partition)][1]
                # A high watermark below the position is a broker answering late: no lag,
                # not a negative one.
                behind = max(0, high - start)
                stamp = stamps.get((topic, partition, start)) if behind else None
                rows.append(PartitionLag(group, topic, partition, own, high, behind,
                                         max(0.0, now - stamp) if stamp else 0.0))
            found = described[group]
            out.append(GroupLag(group, topic, found.state, found.members, tuple(rows)))
        return out

    def _timestamps(self, wanted: set[tuple[str, int, int]]) -> dict[tuple[str, int, int], float]:
        """Timestamps (epoch seconds) of the messages at the given offsets."""
        missing = wanted - self._stamps.keys()
        if missing:
            self._reader.assign([TopicPartition(t, p, o) for t, p, o in missing])
            deadline = time.monotonic() + TIMEOUT_S
            left = {(t, p): o for t, p, o in missing}
            while left and time.monotonic() < deadline:
                for message in self._reader.consume(len(left), 0.5):
                    if message.error() is not None:
                        continue
                    where = (message.topic(), message.partition())
                    if where in left:
                        # The first message at or after the offset (compaction or
                        # transaction markers may have removed the offset itself).
                        self._stamps[(*where, left.pop(where))] = message.timestamp()[1] / 1000
                        self._reader.incremental_unassign([TopicPartition(*where)])
            self._reader.unassign()
        # Old offsets are never asked for again once a group has moved past them.
        self._stamps = {k: v for k, v in self._stamps.items() if k in wanted}
        return dict(self._stamps)


class LagCollector(Collector):
    """Exposes the latest reading; scrapes never wait for the broker."""

    def __init__(self) -> None:
        self.latest: list[GroupLag] = []
        self.read_at: float | None = None
        self.failures = 0

    def update(self, groups: list[GroupLag], at: float) -> None:
        if self.failures:
            log.info("lag.read_recovered", failures=self.failures)
        self.latest, self.read_at, self.failures = groups, at, 0

    def failed(self, error: str) -> None:
        """A reading failed: it is counted, and after ``STALE_AFTER`` in a row the lag is
        no longer exposed, as a value that stopped changing would look current. One or
        two failures (a coordinator moving) keep the last values, so that a lag alert's
        ``for:`` does not start over."""
        self.failures += 1
        if self.failures >= STALE_AFTER:
            self.latest = []
        log.warning("lag.read_failed", error=error, failures=self.failures)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages = GaugeMetricFamily(
            "streamsight_consumer_lag_messages",
            "Messages not yet committed by the consumer group (high watermark minus "
            "committed offset), read from the broker.", labels=["group", "topic", "partition"])
        seconds = GaugeMetricFamily(
            "streamsight_consumer_lag_seconds",
            "Age of the oldest message the consumer group has not committed (0 when none).",
            labels=["group", "topic", "partition"])
        members = GaugeMetricFamily(
            "streamsight_consumer_group_members", "Members of the consumer group.",
            labels=["group"])
        state = GaugeMetricFamily(
            "streamsight_consumer_group_state",
            "1 for the consumer group's current state (stable, empty, preparing_rebalance, ...).",
            labels=["group", "state"])
        for group in self.latest:
            if group.members is not None:
                members.add_metric([group.group], group.members)
            state.add_metric([group.group, group.state], 1)
            for p in group.partitions:
                labels = [p.group, p.topic, str(p.partition)]
                messages.add_metric(labels, p.messages)
                seconds.add_metric(labels, p.seconds)
        read_at = GaugeMetricFamily(
            "streamsight_consumer_lag_read_timestamp_seconds",
            "When lag was last read from the broker (unix time; 0 before the first reading).")
        read_at.add_metric([], self.read_at or 0.0)
        failures = GaugeMetricFamily(
            "streamsight_consumer_lag_read_failures",
            "Readings of lag that failed in a row (the broker did not answer); after "
            f"{STALE_AFTER} in a row, no lag is exported until one succeeds.")
        failures.add_metric([], self.failures)
        yield from (messages, seconds, members, state, read_at, failures)

    def refresh(self, reader: Reader) -> None:
        """Take a reading; a failed one keeps the previous values and counts."""
        try:
            groups = reader.read()
        except (KafkaException, StreamsightError) as exc:
            self.failed(str(exc))
            return
        self.update(groups, time.time())

    def summary(self) -> dict[str, object]:
        """For /health/detailed."""
        return {
            "read_at": self.read_at,
            "groups": {g.group: {"topic": g.topic, "state": g.state, "members": g.members,
                                 "lag_messages": g.messages, "lag_seconds": round(g.seconds, 1)}
                       for g in self.latest},
        }


def agent_groups(app_id: str, topics: Mapping[str, str]) -> dict[str, str]:
    """Consumer group -> topic for every agent."""
    return {f"{app_id}-{agent}": topic for agent, topic in topics.items()}
