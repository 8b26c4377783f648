"""Guarantee 6: PostgreSQL down for a minute under load. Writers retry with backoff,
consumption pauses instead of buffering without bound, and once the server is back every
row arrives exactly once."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from streams.adapters.db import migrate
from streams.local.postgres import LocalPostgres
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    expected_rows,
    stored_rows,
    wait_for_log,
    worker_env,
)
from tests.integration.test_guarantees import (
    assert_guarantees,
    produce_in_background,
    wait_until_batched,
)

DOWN_SECONDS = 60


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A server of this test's own, which it stops and starts."""
    server = LocalPostgres(Path(tempfile.mkdtemp(prefix="streamsight-pg-"))).init().start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.kafka
async def test_database_down_for_a_minute_under_load(
    fresh_broker: Broker, private_postgres: LocalPostgres, workers: WorkerFactory
) -> None:
    dsn = private_postgres.dsn
    await migrate(dsn)
    env = worker_env(fresh_broker, dsn, BATCH_MAX_AGE_SECONDS="4")
    worker = workers("outage", env,
                     "batcher,analyst,sink-insights,sink-performance,sink-errors")
    await wait_for_log(worker, "fetch.assigned", 5)
    producer, traffic = produce_in_background(fresh_broker.bootstrap, 6000, rate=200,
                                              seed=21)
    await asyncio.sleep(5)
    await asyncio.to_thread(private_postgres.stop)
    down_at = time.monotonic()
    await asyncio.sleep(DOWN_SECONDS)
    await asyncio.to_thread(private_postgres.start)
    await asyncio.to_thread(producer.join)
    assert time.monotonic() - down_at >= DOWN_SECONDS

    await wait_until_batched(dsn, len(traffic.valid), [worker])
    timed, failed = await asyncio.to_thread(expected_rows, fresh_broker.bootstrap)
    deadline = time.monotonic() + 90
    while True:
        conn = await asyncpg.connect(dsn)
        try:
            batches = await conn.fetchval("SELECT count(*) FROM batches")
            insights = await conn.fetchval("SELECT count(*) FROM insights")
        finally:
            await conn.close()
        performance, errors = await stored_rows(dsn)
        if insights == batches and len(performance) >= len(timed) and len(errors) >= len(
                failed):
            break
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.5)
    assert await asyncio.to_thread(worker.stop) == 0
    assert worker.alive() is False
    await assert_guarantees(fresh_broker, dsn, traffic)
    # Every row for Grafana exactly once, though the sinks' writes failed for a minute.
    performance, errors = await stored_rows(dsn)
    assert sorted(performance) == sorted(timed) and sorted(errors) == sorted(failed)
    log = worker.log_text()
    # It waited on the database (retrying), it did not crash or restart.
    assert "fetch.retry" in log
    assert log.count("fetch.assigned") == 5
