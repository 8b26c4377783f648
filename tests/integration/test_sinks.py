"""Sinks into PostgreSQL: rows arrive, and a replay of the same topic adds none."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from confluent_kafka import Producer

from streams.core.models import PerformanceRow
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    caught_up,
    events_batched,
    expected_rows,
    produce,
    read_topic,
    wait_for,
    worker_env,
)
from tests.support.ai_server import AIServer, Reply


async def counts(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return (
            int(await conn.fetchval("SELECT count(*) FROM batches")),
            int(await conn.fetchval("SELECT count(*) FROM insights")),
            int(await conn.fetchval("SELECT count(*) FROM ai_usage")),
        )
    finally:
        await conn.close()


async def test_insights_and_usage_land_once_even_when_replayed(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="3",
                     OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=ai_server.base_url,
                     AI_REQUESTS_PER_MINUTE="6000")
    worker = workers("sink", env, "batcher,analyst,sink-insights")
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 600, sources=4,
                                      seed=12)
    deadline = time.monotonic() + 90
    while True:
        batches, insights, usage = await counts(migrated_database)
        # Every event sealed (by age) and analysed: stopping now seals nothing more.
        if (insights == batches == usage
                and await events_batched(migrated_database) == len(traffic.valid)):
            break
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.5)
    assert await asyncio.to_thread(worker.stop) == 0
    conn = await asyncpg.connect(migrated_database)
    try:
        unanalysed = await conn.fetchval(
            "SELECT count(*) FROM batches b WHERE NOT EXISTS "
            "(SELECT 1 FROM insights i WHERE i.batch_id = b.batch_id)")
        statuses = {r[0] for r in await conn.fetch("SELECT DISTINCT status FROM batches")}
    finally:
        await conn.close()
    assert unanalysed == 0
    assert statuses == {"ANALYZED"}

    # A second sink in a new consumer group reads the whole topic again: nothing new.
    replay = workers("replay", {**env, "APP_ID": "replay"}, "sink-insights")
    await wait_for(caught_up(fresh_broker.bootstrap, "replay-sink-insights", "insights"), 90,
                   "the replaying sink read insights to its end", [replay])
    assert await asyncio.to_thread(replay.stop) == 0
    assert "fetch.first" in replay.log_text()
    assert await counts(migrated_database) == (batches, insights, usage)


async def test_error_records_and_their_usage_land_once(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    ai_server: AIServer,
) -> None:
    ai_server.default = Reply.status(500)
    env = worker_env(fresh_broker, migrated_database, OPENAI_API_KEY="sk-test",
                     OPENAI_BASE_URL=ai_server.base_url, AI_MAX_ATTEMPTS="2")
    worker = workers("errors", env, "batcher,analyst,sink-errors")
    await asyncio.to_thread(produce, fresh_broker.bootstrap, 100, sources=1, seed=5)

    async def rows() -> tuple[int, int]:
        """Error rows of our own (the failed analysis) and usage rows; the traffic's own
        error events have rows too, which the batcher test counts."""
        conn = await asyncpg.connect(migrated_database)
        try:
            return (int(await conn.fetchval(
                        "SELECT count(*) FROM error_events WHERE event_id IS NULL")),
                    int(await conn.fetchval("SELECT count(*) FROM ai_usage")))
        finally:
            await conn.close()

    deadline = time.monotonic() + 90
    while await rows() != (1, 2):
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.5)
    assert await asyncio.to_thread(worker.stop) == 0
    conn = await asyncpg.connect(migrated_database)
    try:
        error = await conn.fetchrow("SELECT * FROM error_events WHERE event_id IS NULL")
        batch = await conn.fetchrow("SELECT batch_id, sealed_at, status FROM batches")
    finally:
        await conn.close()
    assert error["type"] == "ai_failed" and error["batch_id"] == batch["batch_id"]
    assert error["time"] == batch["sealed_at"]
    assert batch["status"] == "DEAD"

    replay = workers("replay-errors", {**env, "APP_ID": "replay"}, "sink-errors")
    await wait_for(caught_up(fresh_broker.bootstrap, "replay-sink-errors", "errors"), 90,
                   "the replaying sink read errors to its end", [replay])
    assert await asyncio.to_thread(replay.stop) == 0
    assert "fetch.first" in replay.log_text()
    assert await rows() == (1, 2)


async def test_performance_rows_land_once_and_feed_the_aggregates(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    # A day back: inside retention, whenever the test runs.
    base = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    rows = [PerformanceRow(time=base + timedelta(seconds=n), source=f"svc{n % 3}",
                           event_id=f"e{n}", duration_ms=float(n % 100), success=n % 10 != 0,
                           route="/r", method="GET", status_code=500 if n % 10 == 0 else 200)
            for n in range(3000)]
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap, "acks": "all"})
    chunks = [rows[i:i + 100] for i in range(0, len(rows), 100)]
    for chunk in [*chunks, *chunks[:5]]:  # the first 500 twice, as a producer retry would
        producer.produce("performance", msgspec.json.encode(chunk), b"svc")
    producer.produce("performance", b"{not a row", b"svc0")
    producer.flush(30)

    env = worker_env(fresh_broker, migrated_database)
    worker = workers("perf", env, "sink-performance")

    async def stored() -> int:
        conn = await asyncpg.connect(migrated_database)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM api_performance"))
        finally:
            await conn.close()

    await wait_for(caught_up(fresh_broker.bootstrap, "it-sink-performance", "performance"),
                   60, "the sink read performance to its end", [worker])
    assert await asyncio.to_thread(worker.stop) == 0
    assert await stored() == len(rows)

    conn = await asyncpg.connect(migrated_database)
    try:
        minute = await conn.fetch(
            "SELECT source, sum(count) AS n, sum(errors) AS errors FROM api_performance_1m "
            "GROUP BY source ORDER BY source")
    finally:
        await conn.close()
    assert [(r["source"], r["n"], r["errors"]) for r in minute] == [
        ("svc0", 1000, 100), ("svc1", 1000, 100), ("svc2", 1000, 100)]

    [(_, value, headers)] = await asyncio.to_thread(
        read_topic, fresh_broker.bootstrap, "dead-letter", idle=2.0)
    assert value == b"{not a row" and headers["dlq.origin.topic"] == b"performance"

    replay = workers("replay-perf", {**env, "APP_ID": "replay"}, "sink-performance")
    await wait_for(caught_up(fresh_broker.bootstrap, "replay-sink-performance", "performance"), 90,
                   "the replaying sink read performance to its end", [replay])
    assert await asyncio.to_thread(replay.stop) == 0
    assert "fetch.first" in replay.log_text()
    assert await stored() == len(rows)


async def test_batcher_rows_reach_grafana_tables_once_across_a_crash(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    """Every timed event becomes one api_performance row and every error event one
    error_events row naming its batch, though the worker is killed mid-stream."""
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="3")
    agents = "batcher,sink-performance,sink-errors"

    async def stored() -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        conn = await asyncpg.connect(migrated_database)
        try:
            return (await conn.fetch("SELECT event_id, success FROM api_performance"),
                    await conn.fetch(
                        "SELECT e.event_id, b.partition, b.first_offset, b.last_offset "
                        "FROM error_events e JOIN batches b USING (batch_id)"))
        finally:
            await conn.close()

    worker = workers("rows", env, agents)
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 3000, sources=6,
                                      seed=21, rate=1500, invalid_every=50)
    deadline = time.monotonic() + 60
    while not (await stored())[0]:  # killed once rows are flowing, not before it started
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.2)
    worker.kill()
    await asyncio.to_thread(produce, fresh_broker.bootstrap, 1000, sources=6, seed=22,
                            traffic=traffic)
    worker = workers("rows-again", env, agents)

    timed, failed = await asyncio.to_thread(expected_rows, fresh_broker.bootstrap)
    assert timed and failed and timed | failed <= traffic.valid.keys()

    deadline = time.monotonic() + 90
    while True:
        performance, errors = await stored()
        if len(performance) >= len(timed) and len(errors) >= len(failed):
            break
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)  # anything extra would show up now
    assert await asyncio.to_thread(worker.stop) == 0
    performance, errors = await stored()

    assert sorted(r["event_id"] for r in performance) == sorted(timed)
    assert {r["event_id"] for r in performance if not r["success"]} == timed & failed
    assert sorted(r["event_id"] for r in errors) == sorted(failed)
    for row in errors:
        partition, offset = traffic.valid[row["event_id"]]
        assert row["partition"] == partition
        assert row["first_offset"] <= offset <= row["last_offset"]
