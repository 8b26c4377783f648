"""Guarantees 1-3 against a real broker, a real PostgreSQL and real worker processes:
SIGKILL at random moments, a rebalance, age sealing of an idle key, clean shutdown."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import orjson
import pytest

from streams.core.models import Reason
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    Traffic,
    Worker,
    batch_rows,
    events_batched,
    produce,
    read_topic,
    wait_for_log,
    worker_env,
)

MAX_EVENTS = 100


def produce_in_background(bootstrap: str, count: int, rate: float, seed: int,
                          ) -> tuple[threading.Thread, Traffic]:
    traffic = Traffic()
    thread = threading.Thread(target=produce, args=(bootstrap, count), kwargs={
        "rate": rate, "invalid_every": 40, "seed": seed, "traffic": traffic})
    thread.start()
    return thread, traffic


async def wait_until_batched(dsn: str, expected: int, workers: list[Worker],
                             within: float = 120) -> None:
    deadline = time.monotonic() + within
    while (done := await events_batched(dsn)) < expected:
        if time.monotonic() > deadline:
            logs = "\n".join(w.log_text()[-3000:] for w in workers)
            pytest.fail(f"only {done} of {expected} events batched in {within}s\n{logs}")
        await asyncio.sleep(0.5)


async def assert_guarantees(broker: Broker, dsn: str, traffic: Traffic) -> None:
    """Every acknowledged valid event in exactly one sealed batch, every invalid one on
    dead-letter with its origin, no batch twice, count-sealed batches exactly full."""
    assert traffic.failed == 0
    rows = await batch_rows(dsn)
    row_ids = [str(r["batch_id"]) for r in rows]
    assert len(row_ids) == len(set(row_ids)), "a batch_id is recorded twice"

    published: dict[str, dict[str, Any]] = {}
    for _key, value, _headers in read_topic(broker.bootstrap, "analysis-requests"):
        request = orjson.loads(value or b"")
        earlier = published.setdefault(request["batch_id"], request)
        # A batch re-published after a crash must be the same batch, byte for byte.
        assert earlier == request, f"batch {request['batch_id']} published with two contents"
    assert set(published) == set(row_ids)

    placed = Counter(eid for r in published.values() for eid in r["event_ids"])
    twice = [eid for eid, n in placed.items() if n > 1]
    assert not twice, f"{len(twice)} events in more than one batch"
    missing = set(traffic.valid) - set(placed)
    assert not missing, f"{len(missing)} acknowledged events in no batch"
    assert set(placed) == set(traffic.valid)

    for row in rows:
        request = published[str(row["batch_id"])]
        assert row["event_count"] == len(request["event_ids"]) == request["event_count"]
        if row["seal_reason"] == "count":
            assert row["event_count"] == MAX_EVENTS

    dead = read_topic(broker.bootstrap, "dead-letter")
    origins = set()
    for _key, _value, headers in dead:
        assert headers["dlq.origin.topic"] == b"events"
        assert Reason(headers["dlq.reason"].decode())  # a known, machine-readable reason
        origins.add((int(headers["dlq.origin.partition"]), int(headers["dlq.origin.offset"])))
    assert traffic.invalid <= origins, "an invalid message is missing from dead-letter"


@pytest.mark.kafka
async def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="4")
    worker = workers("killed", env)
    producer, traffic = produce_in_background(fresh_broker.bootstrap, 8000, rate=300, seed=11)
    rng = random.Random(2026)
    for kills in range(3):
        # Kill while it works: after it has partitions, at a random moment.
        await wait_for_log(worker, "fetch.assigned", kills + 1)
        await asyncio.sleep(rng.uniform(0.2, 4.0))
        worker.kill()
        worker.start()
    await asyncio.to_thread(producer.join)
    assert len(traffic.valid) > 7000
    await wait_until_batched(migrated_database, len(traffic.valid), [worker])
    assert worker.stop() == 0
    await assert_guarantees(fresh_broker, migrated_database, traffic)
    assert worker.log_text().count("batcher.recovering") >= 1


@pytest.mark.kafka
async def test_worker_joining_and_leaving_midstream(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="4")
    first = workers("first", env)
    producer, traffic = produce_in_background(fresh_broker.bootstrap, 6000, rate=300, seed=12)
    await asyncio.sleep(5)
    second = workers("second", env)
    await wait_for_log(second, "fetch.assigned")
    await asyncio.sleep(4)
    assert second.stop() == 0
    await asyncio.to_thread(producer.join)
    await wait_until_batched(migrated_database, len(traffic.valid), [first, second])
    assert first.stop() == 0
    await assert_guarantees(fresh_broker, migrated_database, traffic)
    assert "fetch.revoked" in first.log_text()


@pytest.mark.kafka
async def test_idle_key_seals_by_age_near_its_deadline(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    age = 3.0
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS=str(age))
    worker = workers("age", env)
    await wait_for_log(worker, "fetch.assigned")
    sent_at = time.monotonic()
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 5, sources=1, seed=3)
    await wait_until_batched(migrated_database, 5, [worker], within=30)
    seen_after = time.monotonic() - sent_at
    worker.stop()
    [row] = await batch_rows(migrated_database)
    assert row["seal_reason"] == "age"
    assert row["event_count"] == len(traffic.valid) == 5
    held = row["sealed_at"] - row["opened_at"]
    assert timedelta(seconds=age) <= held < timedelta(seconds=age + 2)
    assert seen_after < age + 4


@pytest.mark.kafka
async def test_clean_shutdown_seals_open_batches_and_restart_adds_nothing(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="600")
    worker = workers("clean", env)
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 700, sources=5, seed=4)
    deadline = time.monotonic() + 60
    # 700 events over 5 keys: some count seals, the rest stays open until shutdown.
    while await events_batched(migrated_database) < 100:
        assert time.monotonic() < deadline, worker.log_text()[-2000:]
        await asyncio.sleep(0.3)
    await asyncio.sleep(2)
    assert worker.stop() == 0
    rows = await batch_rows(migrated_database)
    assert sum(r["event_count"] for r in rows) == len(traffic.valid) == 700
    assert {r["seal_reason"] for r in rows} == {"count", "shutdown"}
    published = len(read_topic(fresh_broker.bootstrap, "analysis-requests", idle=2.0))

    worker.start()
    await wait_for_log(worker, "fetch.assigned", 2)
    await asyncio.sleep(3)
    assert worker.stop() == 0
    assert len(await batch_rows(migrated_database)) == len(rows)
    assert len(read_topic(fresh_broker.bootstrap, "analysis-requests", idle=2.0)) == published
