"""`streamsight replay reset` and `replay copy` as subprocesses against a real broker, and a
batcher replay end to end: refused while the worker runs, and replaying adds no rows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from streams.adapters.kafka import make_admin
from streams.commands import replay
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    ROOT,
    Broker,
    batch_rows,
    caught_up,
    committed,
    events_batched,
    produce,
    table_count,
    wait_for,
    wait_for_log,
    worker_env,
)

MINUTE = 60_000


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", *args],
        env={**os.environ, "COLUMNS": "200", **env}, capture_output=True, text=True,
        cwd=ROOT, timeout=120)


def create_topics(bootstrap: str, **partitions: int) -> None:
    admin = make_admin(bootstrap)
    futures = admin.create_topics([NewTopic(name, count, 1) for name, count in
                                   partitions.items()])
    for future in futures.values():
        future.result(timeout=30)
    deadline = time.monotonic() + 15
    while not set(partitions) <= set(admin.list_topics(timeout=5).topics):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def commit(bootstrap: str, group: str, topic: str, offsets: list[int]) -> None:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o)
                                                   for p, o in enumerate(offsets)])
    admin = make_admin(bootstrap)
    deadline = time.monotonic() + 30
    while True:
        result = admin.alter_consumer_group_offsets([request])[group].result(timeout=30)
        errors = [tp.error for tp in result.topic_partitions if tp.error is not None]
        if not errors:
            return
        # Kafka's first group on a new cluster waits for the offsets topic.
        assert all(e.name() in ("NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS")
                   for e in errors), errors
        assert time.monotonic() < deadline, errors
        time.sleep(0.2)


def produce_stamped(bootstrap: str, topic: str, stamps: list[int], partitions: int,
                    ) -> dict[int, tuple[int, int]]:
    """Message i: key k<i % 3>, partition i % partitions, timestamp stamps[i], headers with
    a repeated name and a null value; flushed every 7 so partitions hold several batches
    (Tansu's "latest" offset then trails the end). Returns i -> (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5})
    where: dict[int, tuple[int, int]] = {}

    def delivered(err: Any, msg: Any, i: int) -> None:
        assert err is None, err
        where[i] = (msg.partition(), msg.offset())

    for i, stamp in enumerate(stamps):
        producer.produce(topic, f"value-{i}".encode(), f"k{i % 3}".encode(),
                         partition=i % partitions, timestamp=stamp,
                         headers=[("trace", f"t{i}".encode()), ("trace", b"again"),
                                  ("empty", None)],
                         on_delivery=lambda err, msg, i=i: delivered(err, msg, i))
        if i % 7 == 6:
            producer.flush(30)
    producer.flush(30)
    assert len(where) == len(stamps)
    return where


def read_all(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every message of ``topic``, read to the end of each partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, ended = [], set()
    deadline = time.monotonic() + 30
    try:
        while len(ended) < partitions:
            assert time.monotonic() < deadline
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is None:
                    out.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
    finally:
        consumer.close()
    return out


@pytest.mark.kafka
def test_reset_plans_and_moves_offsets(fresh_broker: Broker) -> None:
    bootstrap = fresh_broker.bootstrap
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "APP_ID": "it"}
    create_topics(bootstrap, stamped=2)
    # 40 messages a minute apart, the last 30 s before now; message i is at offset i // 2
    # of partition i % 2.
    t0 = int(time.time() * 1000)
    stamps = [t0 - (40 - i) * MINUTE + MINUTE // 2 for i in range(40)]
    where = produce_stamped(bootstrap, "stamped", stamps, 2)
    assert where[39] == (1, 19)
    base = ["--group", "ops", "--topic", "stamped"]

    # By duration first: now - 20m falls between messages 19 and 20 for 30 s after t0.
    commit(bootstrap, "ops", "stamped", [15, 12])
    done = cli(env, "reset", *base, "--by-duration", "20m", "--execute")
    assert done.returncode == 0, done.stderr
    assert time.time() * 1000 - t0 < MINUTE // 2, "too slow for the by-duration check"
    assert committed(bootstrap, "ops", "stamped", 2) == [10, 10]

    # A dry run shows the plan and moves nothing.
    commit(bootstrap, "ops", "stamped", [15, 12])
    dry = cli(env, "reset", *base, "--to-earliest")
    assert dry.returncode == 0, dry.stderr
    rows = [line.split("│")[1:5] for line in dry.stdout.splitlines() if line.count("│") == 5]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["0", "15", "0", "15"], ["1", "12", "0", "12"]]
    assert "27 messages to reprocess; dry run: add --execute to apply" in dry.stdout
    assert committed(bootstrap, "ops", "stamped", 2) == [15, 12]

    done = cli(env, "reset", *base, "--to-earliest", "--execute")
    assert done.returncode == 0, done.stderr
    assert "moved ops on 2 partitions of stamped; 27 messages to reprocess" in done.stdout
    assert committed(bootstrap, "ops", "stamped", 2) == [0, 0]

    done = cli(env, "reset", *base, "--to-offset", "7", "--partitions", "1", "--execute")
    assert done.returncode == 0, done.stderr
    assert committed(bootstrap, "ops", "stamped", 2) == [0, 7]

    # Beyond the end: kept at the exact end (20), which Tansu's ListOffsets under-reports.
    done = cli(env, "reset", *base, "--to-offset", "1000", "--execute")
    assert done.returncode == 0, done.stderr
    assert "clamped to 0..20" in done.stdout
    assert committed(bootstrap, "ops", "stamped", 2) == [20, 20]

    # Just after message 10: messages 12 (partition 0) and 11 (partition 1).
    just_after = replay.format_ms(stamps[10] + 1)
    done = cli(env, "reset", *base, "--to-datetime", just_after, "--execute")
    assert done.returncode == 0, done.stderr
    assert committed(bootstrap, "ops", "stamped", 2) == [6, 5]
    # Exactly at message 10, written with Z; then times written without a zone (UTC).
    at = replay.format_ms(stamps[10])
    done = cli(env, "reset", *base, "--to-datetime", at.replace("+00:00", "Z"), "--execute")
    assert done.returncode == 0, done.stderr
    assert committed(bootstrap, "ops", "stamped", 2) == [5, 5]
    for moment, expected in ((stamps[0] - MINUTE, [0, 0]), (stamps[39] + 1, [20, 20]),
                             (stamps[39], [20, 19])):
        done = cli(env, "reset", *base, "--to-datetime",
                   replay.format_ms(moment).replace("+00:00", ""), "--execute")
        assert done.returncode == 0, done.stderr
        assert committed(bootstrap, "ops", "stamped", 2) == expected

    # Mistakes end with one line and exit code 1.
    two = cli(env, "reset", *base, "--to-datetime", at, "--to-earliest")
    assert two.returncode == 1 and "choose exactly one" in two.stderr
    missing = cli(env, "reset", "--group", "ops", "--topic", "nope", "--to-earliest")
    assert (missing.returncode, missing.stderr) == (
        1, "streamsight: topic 'nope' does not exist\n")
    no_topic = cli(env, "reset", "--group", "ops", "--to-earliest")
    assert no_topic.returncode == 1 and "--topic is needed" in no_topic.stderr
    bad = cli(env, "reset", *base, "--to-earliest", "--partitions", "2")
    assert bad.returncode == 1 and "no partition 2" in bad.stderr


@pytest.mark.kafka
def test_copy_a_time_range_and_a_key(fresh_broker: Broker) -> None:
    bootstrap = fresh_broker.bootstrap
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    create_topics(bootstrap, source=2, target=3)
    t0 = int(time.time() * 1000) - 60 * 1000
    stamps = [t0 + i * 1000 for i in range(60)]
    where = produce_stamped(bootstrap, "source", stamps, 2)
    origin = {v: i for i, v in where.items()}

    since, until = replay.format_ms(stamps[10]), replay.format_ms(stamps[40])
    done = cli(env, "copy", "--from", "source", "--to", "target", "--since", since,
               "--until", until, "--key", "k1")
    assert done.returncode == 0, done.stderr
    wanted = [i for i in range(10, 40) if i % 3 == 1]
    assert f"read 30, matched {len(wanted)}, copied {len(wanted)} from source to target" in (
        done.stdout)

    # Without --until: to the end captured at the start; without --key: every key.
    done = cli(env, "copy", "--from", "source", "--to", "target", "--since",
               replay.format_ms(stamps[55]).replace("+00:00", "Z"))
    assert done.returncode == 0, done.stderr
    assert "read 5, matched 5, copied 5 from source to target" in done.stdout
    wanted += range(55, 60)

    copies = read_all(bootstrap, "target", 3)
    assert len(copies) == len(wanted)
    seen = []
    for message in copies:
        headers = message.headers()
        assert headers[-1][0] == replay.COPIED_AT
        name, value = headers[-2]
        assert name == replay.COPIED_FROM
        topic, partition, offset = value.decode().split("/")
        assert topic == "source"
        i = origin[(int(partition), int(offset))]
        seen.append(i)
        assert message.key() == f"k{i % 3}".encode()
        assert message.value() == f"value-{i}".encode()
        assert message.timestamp() == (1, stamps[i])  # CreateTime, the original one
        assert headers[:-2] == [("trace", f"t{i}".encode()), ("trace", b"again"),
                                ("empty", None)]
    assert sorted(seen) == sorted(wanted)
    # One key, one partition of the target.
    assert len({m.partition() for m in copies if m.key() == b"k1"}) == 1

    nothing = cli(env, "copy", "--from", "source", "--to", "target", "--since",
                  replay.format_ms(stamps[59] + 1))
    assert nothing.returncode == 0, nothing.stderr
    assert "read 0, matched 0, copied 0" in nothing.stdout
    missing = cli(env, "copy", "--from", "source", "--to", "nope", "--since", since)
    assert (missing.returncode, missing.stderr) == (
        1, "streamsight: topic 'nope' does not exist\n")


def performance_rows(bootstrap: str) -> int:
    """Rows in the messages of the performance topic (each a JSON array of rows)."""
    return sum(len(orjson.loads(m.value())) for m in read_all(bootstrap, "performance", 4))


@pytest.mark.kafka
async def test_batcher_replay_is_refused_while_it_runs_and_adds_nothing(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    bootstrap, dsn = fresh_broker.bootstrap, migrated_database
    env = worker_env(fresh_broker, dsn, BATCH_MAX_EVENTS="20", BATCH_MAX_AGE_SECONDS="3")
    batcher = workers("batcher", env)
    sink = workers("sink", env, "sink-performance")
    both = [batcher, sink]
    await wait_for_log(batcher, "fetch.assigned")
    traffic = await asyncio.to_thread(produce, bootstrap, 600, sources=5, invalid_every=50,
                                      seed=23)
    assert traffic.failed == 0

    async def all_batched() -> bool:
        return await events_batched(dsn) == len(traffic.valid)
    await wait_for(all_batched, 90, "every event batched", both)

    # Refused while the worker runs, with one line, and nothing moves.
    before = committed(bootstrap, "it-batcher", "events", 4)
    refused = await asyncio.to_thread(cli, env, "reset", "--group", "batcher", "--to-earliest",
                                      "--execute")
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.startswith("streamsight: consumer group it-batcher is active (state")
    assert refused.stderr.count("\n") == 1
    assert committed(bootstrap, "it-batcher", "events", 4) == before
    # Its dry run shows the plan all the same, marked as not executable now.
    dry = await asyncio.to_thread(cli, env, "reset", "--group", "batcher", "--to-earliest")
    assert dry.returncode == 0, dry.stderr
    assert "messages to reprocess; dry run" in dry.stdout
    assert "not executable now: consumer group it-batcher is active (state" in dry.stdout
    assert committed(bootstrap, "it-batcher", "events", 4) == before

    assert batcher.stop() == 0
    await wait_for(caught_up(bootstrap, "it-batcher", "events"), 30, "batcher committed", both)
    await wait_for(caught_up(bootstrap, "it-sink-performance", "performance"), 60,
                   "performance rows written", both)
    rows = await batch_rows(dsn)
    performance = await table_count(dsn, "api_performance")
    assert rows and performance
    requests = read_all(bootstrap, "analysis-requests", 4)
    assert len(requests) == len(rows)
    timed = performance_rows(bootstrap)
    assert timed == performance, "one row per timed event"

    # The group has left: the reset goes through. The agent's name stands for its group.
    dry = await asyncio.to_thread(cli, env, "reset", "--group", "batcher", "--to-earliest")
    assert dry.returncode == 0, dry.stderr
    assert "reset it-batcher on events to earliest" in dry.stdout
    sent = len(traffic.valid) + len(traffic.invalid)
    assert f"{sent:,} messages to reprocess; dry run" in dry.stdout
    done = await asyncio.to_thread(cli, env, "reset", "--group", "batcher", "--to-earliest",
                                   "--execute")
    assert done.returncode == 0, done.stderr
    assert committed(bootstrap, "it-batcher", "events", 4) == [0, 0, 0, 0]

    batcher.start()
    await wait_for_log(batcher, "batcher.recovering")
    await wait_for(caught_up(bootstrap, "it-batcher", "events"), 60, "batcher re-read", both)

    async def republished() -> bool:
        return len(read_all(bootstrap, "analysis-requests", 4)) == 2 * len(rows)
    await wait_for(republished, 30, "requests re-published", both)
    await wait_for(caught_up(bootstrap, "it-sink-performance", "performance"), 60,
                   "replayed performance rows written", both)
    assert batcher.stop() == 0

    # The same batches, re-published byte for byte; no new row anywhere.
    again = await batch_rows(dsn)
    assert [dict(r) for r in again] == [dict(r) for r in rows]
    assert await table_count(dsn, "api_performance") == performance
    assert performance_rows(bootstrap) == 2 * timed, "the replay re-sent every row"
    published: dict[str, set[bytes]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for message in read_all(bootstrap, "analysis-requests", 4):
        batch_id = orjson.loads(message.value())["batch_id"]
        published[batch_id].add(message.value())
        counts[batch_id] += 1
    assert set(published) == {str(r["batch_id"]) for r in rows}
    assert all(len(values) == 1 for values in published.values())
    assert set(counts.values()) == {2}
