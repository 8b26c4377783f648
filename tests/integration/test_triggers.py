"""Manual triggers through the running workers: `streamsight seal`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import orjson
from confluent_kafka import Producer

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import Broker, batch_rows, run_cli, wait_for_log, worker_env


def send(bootstrap: str, counts: dict[str, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    stamp = datetime.now(UTC).isoformat()
    for source, count in counts.items():
        for n in range(count):
            producer.produce("events", orjson.dumps({
                "event_id": f"{source}-{n}", "event_type": "page_view", "source": source,
                "timestamp": stamp}), source.encode())
    assert producer.flush(30) == 0




async def test_seal_now_closes_one_sources_batch_through_the_worker(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    # Batches would stay open for ten minutes: only the request seals them.
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="600")
    worker = workers("seal", env, "batcher")
    await wait_for_log(worker, "fetch.assigned")
    await asyncio.to_thread(send, fresh_broker.bootstrap, {"checkout": 25, "cart": 15})

    result = await asyncio.to_thread(run_cli, env, "seal", "--source", "checkout")
    assert result.returncode == 0, result.stderr
    assert "seal requested for 'checkout'" in result.stdout

    deadline = time.monotonic() + 30
    while not await batch_rows(migrated_database):
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        await asyncio.sleep(0.3)
    await asyncio.sleep(1)  # a second row (cart's) would show up now
    [row] = await batch_rows(migrated_database)
    assert (row["source"], row["seal_reason"], row["event_count"]) == ("checkout", "manual", 25)
    assert "event.dead_lettered" not in worker.log_text()  # a command is not a bad event

    bad = await asyncio.to_thread(run_cli, {**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
                                  "seal", "--source", "checkout")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert await asyncio.to_thread(worker.stop) == 0
