"""What each broker answers about offsets and groups, and the Kafka adapter's answers,
exact on both: Apache Kafka 4.4 and Tansu.

The brokers' own answers are asserted as well: a broker that fixes a quirk (or grows
one) fails here, which says that a workaround in streams/adapters/kafka.py can go (or
must come)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic, OffsetSpec  # type: ignore[attr-defined]

from streams.adapters.kafka import Cluster, Quirks, make_admin, quirks
from streams.local.embedded import start_local_broker
from tests.integration.harness import Broker

BASE_MS = 1_700_000_000_000
#: Three produce batches of ten messages on partition 0, one second apart each.
BATCHES, PER_BATCH = 3, 10
MESSAGES = BATCHES * PER_BATCH


@pytest.fixture(scope="module", params=["tansu", "kafka"])
def shared_broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, Broker]]:
    """One broker of each kind for the module: these tests only read what they wrote."""
    broker = start_local_broker(request.param)
    try:
        yield request.param, broker
    finally:
        broker.close()


def filled_topic(bootstrap: str, name: str) -> str:
    """``name`` with two partitions: 0 holds MESSAGES in BATCHES produce batches,
    stamped BASE_MS + i s; 1 stays empty."""
    admin = make_admin(bootstrap)
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1000, "acks": "all"})
    for batch in range(BATCHES):
        for i in range(PER_BATCH):
            n = batch * PER_BATCH + i
            producer.produce(name, f"m{n}".encode(), partition=0, timestamp=BASE_MS + n * 1000)
        # One flush, one produce request: the batch boundary Tansu's watermark trails at.
        assert producer.flush(30) == 0
    return name


def listed(bootstrap: str, topic: str, spec: object) -> int:
    """The broker's own ListOffsets answer for partition 0."""
    admin = make_admin(bootstrap)
    futures = admin.list_offsets({TopicPartition(topic, 0): spec}, request_timeout=15)
    return int(next(iter(futures.values())).result().offset)


def test_the_broker_is_told_apart(shared_broker: tuple[str, Broker]) -> None:
    kind, broker = shared_broker
    expected = (Quirks() if kind == "kafka"
                else Quirks(ends_trail=True, times_unlisted=True, members_unreported=True))
    assert quirks(broker.bootstrap) == expected


def test_end_offsets_are_exact(shared_broker: tuple[str, Broker]) -> None:
    kind, broker = shared_broker
    topic = filled_topic(broker.bootstrap, "ends")
    raw = listed(broker.bootstrap, topic, OffsetSpec.latest())  # type: ignore[no-untyped-call]
    if kind == "kafka":
        assert raw == MESSAGES
    else:
        # The last produce batch's base offset + 1.
        assert raw == MESSAGES - PER_BATCH + 1
    with Cluster(broker.bootstrap) as cluster:
        assert cluster.bounds(topic, [0, 1]) == {0: (0, MESSAGES), 1: (0, 0)}
        assert cluster.ends([(topic, 0), (topic, 1)]) == {(topic, 0): MESSAGES, (topic, 1): 0}


def test_offsets_of_points_in_time_are_exact(shared_broker: tuple[str, Broker]) -> None:
    kind, broker = shared_broker
    topic = filled_topic(broker.bootstrap, "times")
    raw = listed(broker.bootstrap, topic, OffsetSpec.for_timestamp(BASE_MS + 12_500))
    assert raw == (13 if kind == "kafka" else 0)
    with Cluster(broker.bootstrap) as cluster:
        bounds = cluster.bounds(topic, [0, 1])
        for ms, expected in ((BASE_MS - 1, 0), (BASE_MS, 0), (BASE_MS + 12_500, 13),
                             (BASE_MS + 13_000, 13), (BASE_MS + 29_000, 29),
                             (BASE_MS + 29_001, MESSAGES)):
            assert cluster.offsets_at(topic, ms, bounds) == {0: expected, 1: 0}, ms


def test_group_state_and_members(shared_broker: tuple[str, Broker]) -> None:
    kind, broker = shared_broker
    topic = filled_topic(broker.bootstrap, "grouped")
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g",
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer was never assigned a partition"
        consumer.poll(0.2)
    admin = make_admin(broker.bootstrap)
    raw = admin.describe_consumer_groups(["g"], request_timeout=15)["g"].result()
    assert len(raw.members) == (1 if kind == "kafka" else 0)
    with Cluster(broker.bootstrap) as cluster:
        group = cluster.group("g")
        assert (group.state, group.members) == ("stable", 1 if kind == "kafka" else None)
        assert not group.idle
        consumer.close()
        deadline = time.monotonic() + 30
        while not cluster.group("g").idle:
            assert time.monotonic() < deadline, f"group g still {cluster.group('g')}"
            time.sleep(0.2)
        assert cluster.group("g").members in (0, None)
