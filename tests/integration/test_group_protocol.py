"""Consumer group protocols and static membership, on Tansu and Apache Kafka.

Where the broker offers Kafka 4's consumer protocol (KIP-848), ``auto`` takes it for a
dynamic member and cooperative-sticky for a static one; range elsewhere. Asking for the
consumer protocol on a broker without it stops the worker with one line (librdkafka
would wait for an assignment for ever, in silence). With a WORKER_ID, a worker killed
and started again within the session timeout takes its own partitions back and the
other worker never notices; on the consumer protocol the broker refuses its id until
the old session has timed out, and the agent starts again until it is let in."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streams.adapters.group_protocol import resolve
from streams.errors import ConfigError
from streams.local.kafka import KafkaCluster
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import Broker, Worker, run_cli, wait_for_log, worker_env
from tests.integration.test_guarantees import (
    assert_guarantees,
    produce_in_background,
    wait_until_batched,
)

SESSION_TIMEOUT_MS = 30_000


def is_kafka(broker: Broker) -> bool:
    return isinstance(broker, KafkaCluster)


@pytest.mark.kafka
async def test_auto_takes_the_consumer_protocol_only_where_the_broker_offers_it(
    fresh_broker: Broker,
) -> None:
    kafka = is_kafka(fresh_broker)
    assert await resolve("auto", fresh_broker.bootstrap) == ("consumer" if kafka else "range")
    assert await resolve("auto", fresh_broker.bootstrap, static=True) == (
        "cooperative-sticky" if kafka else "range")
    assert await resolve("cooperative-sticky", fresh_broker.bootstrap) == "cooperative-sticky"
    if is_kafka(fresh_broker):
        assert await resolve("consumer", fresh_broker.bootstrap) == "consumer"
    else:
        with pytest.raises(ConfigError, match="does not offer the consumer protocol"):
            await resolve("consumer", fresh_broker.bootstrap)


async def test_worker_start_up_failures_are_one_line(
    fresh_broker: Broker, migrated_database: str,
) -> None:
    env = worker_env(fresh_broker, migrated_database)
    for extra, expected in (
        ({"CONSUMER_GROUP_PROTOCOL": "consumer"},
         "invalid setting CONSUMER_GROUP_PROTOCOL: the broker at"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "Kafka at 127.0.0.1:1: not reachable"),
        ({"WORKER_ID": "pod 1"}, "invalid setting WORKER_ID"),
    ):
        result = await asyncio.to_thread(run_cli, {**env, **extra}, "worker")
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("streamsight: "), result.stderr
        assert expected in lines[0]


def partitions_assigned(worker: Worker) -> list[list[int]]:
    """Every ``fetch.assigned`` of the worker's current process, in order."""
    text = (worker.log_dir / f"{worker.name}-{worker.starts}.log").read_text()
    lines = (line for line in text.splitlines() if line.startswith("{"))
    return [entry["partitions"] for entry in map(json.loads, lines)
            if entry.get("message") == "fetch.assigned"]


async def holds_partitions(worker: Worker, within: float = 90) -> set[int]:
    """Once the worker's current process holds partitions: which."""
    deadline = time.monotonic() + within
    while not (held := {p for got in partitions_assigned(worker) for p in got}):
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.2)
    return held


# Apache Kafka only: Tansu makes every join wait about half the session timeout, so
# there a static member's quick return cannot be told from a new member's.
@pytest.mark.kafka(only=True)
async def test_a_static_member_killed_and_restarted_keeps_its_partitions(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="4",
                     CONSUMER_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS))
    a = workers("a", {**env, "WORKER_ID": "a"})
    producer, traffic = produce_in_background(fresh_broker.bootstrap, 6000, rate=300, seed=21)
    await wait_for_log(a, "fetch.assigned", within=90)
    b = workers("b", {**env, "WORKER_ID": "b"})
    # The group has settled when b holds some partitions, not all.
    mine = await holds_partitions(b)
    assert len(mine) < 4
    revoked_from_a = a.log_text().count("fetch.revoked")

    b.kill()
    b.start()
    # Back before the killed member's session could have expired: let in as the same
    # member, not as a new one (which waits for the old one to time out first).
    assert await holds_partitions(b, within=SESSION_TIMEOUT_MS / 1000 - 5) == mine

    await asyncio.to_thread(producer.join)
    await wait_until_batched(migrated_database, len(traffic.valid), [a, b])
    await assert_guarantees(fresh_broker, migrated_database, traffic)
    assert a.log_text().count("fetch.revoked") == revoked_from_a, "a gave partitions up"
    assert a.alive() and b.alive()


@pytest.mark.kafka(only=True)
async def test_a_static_member_on_the_consumer_protocol_is_let_back_in_after_a_kill(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="4",
                     CONSUMER_GROUP_PROTOCOL="consumer", WORKER_ID="a")
    worker = workers("static", env)
    producer, traffic = produce_in_background(fresh_broker.bootstrap, 3000, rate=300, seed=22)
    await wait_until_batched(migrated_database, 1, [worker])  # killed mid-work
    worker.kill()
    worker.start()
    # Refused while the killed member's session (6 s on the test broker) runs out; the
    # agent is restarted by its supervisor until the broker lets it in.
    assert await holds_partitions(worker) == {0, 1, 2, 3}
    await asyncio.to_thread(producer.join)
    await wait_until_batched(migrated_database, len(traffic.valid), [worker])
    await assert_guarantees(fresh_broker, migrated_database, traffic)
    assert worker.alive()
