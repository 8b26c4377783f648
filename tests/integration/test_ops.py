"""What an operator sees: health endpoints, metrics, and lag read from the broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import ROOT, Broker, free_port, produce, wait_for, worker_env

SECRET = "sk-test-ops-never-shown-0123456789"




async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(text: str, name: str, **labels: str) -> float:
    return sum(value for (n, ls), value in samples(text).items()
               if n == name and all(dict(ls).get(k) == v for k, v in labels.items()))


async def test_health_metrics_and_readiness(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    port = free_port()
    env = worker_env(fresh_broker, migrated_database, WEB_ENABLED="true", WEB_PORT=str(port),
                     BATCH_MAX_AGE_SECONDS="2", LAG_INTERVAL_SECONDS="1",
                     OPENAI_API_KEY=SECRET, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    worker = workers("ops", env, "batcher,sink-performance,sink-errors")
    base = f"http://127.0.0.1:{port}"

    async def serving() -> bool:
        try:
            return (await get(f"{base}/health/live"))[0] == 200
        except aiohttp.ClientError:
            return False

    await wait_for(serving, 60, "the web server", [worker])
    # Not ready while the consumer groups are still forming (Tansu takes seconds).
    status, body = await get(f"{base}/health/ready")
    assert status == 503 and "waiting for partitions" in body, body

    async def ready() -> bool:
        return (await get(f"{base}/health/ready"))[0] == 200

    await wait_for(ready, 60, "readiness", [worker])
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 800, sources=4,
                                      seed=3, invalid_every=40)

    async def consumed() -> bool:
        text = (await get(f"{base}/metrics"))[1]
        return total(text, "streamsight_events_consumed_total") >= 800 and total(
            text, "streamsight_sink_rows_total", table="api_performance") > 0

    await wait_for(consumed, 60, "events in the metrics", [worker])
    await asyncio.sleep(3)  # the age-sealed batches and a lag reading after them
    text = (await get(f"{base}/metrics"))[1]
    invalid = len(traffic.invalid)
    assert total(text, "streamsight_events_consumed_total", topic="events") == 800
    assert total(text, "streamsight_events_invalid_total") == invalid
    assert total(text, "streamsight_dead_letter_messages_total") == invalid
    conn = await asyncpg.connect(migrated_database)
    try:
        batched = await conn.fetchval("SELECT sum(event_count) FROM batches")
        batches = await conn.fetchval("SELECT count(*) FROM batches")
        performance = await conn.fetchval("SELECT count(*) FROM api_performance")
    finally:
        await conn.close()
    assert batched == len(traffic.valid)
    assert total(text, "streamsight_batches_sealed_total") == batches
    assert total(text, "streamsight_batch_size_events_count") == batches
    assert total(text, "streamsight_batch_size_events_sum") == batched
    assert total(text, "streamsight_operation_duration_seconds_count") == performance
    assert total(text, "streamsight_sink_rows_total", table="api_performance") == performance
    assert total(text, "streamsight_partitions_assigned", group="it-batcher") == 4
    assert total(text, "streamsight_consumer_lag_messages", group="it-batcher") == 0
    assert total(text, "streamsight_consumer_group_state", group="it-batcher") == 1
    assert SECRET not in text

    status, body = await get(f"{base}/health/detailed")
    assert status == 200 and SECRET not in body
    detailed = orjson.loads(body)
    assert detailed["ready"] is True
    assert detailed["memory"]["rss_mib"] > 0
    assert detailed["components"]["kafka:batcher"]["partitions"] == [0, 1, 2, 3]
    assert detailed["checks"]["postgresql"]["ok"] is True
    assert "it-batcher" in detailed["components"]["lag"]["groups"]
    status, body = await get(f"{base}/health")
    assert status == 200 and orjson.loads(body)["ready"] is True
    assert await asyncio.to_thread(worker.stop) == 0
    assert SECRET not in worker.log_text()


def start_exporter(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "lag-exporter"],
                                env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.kafka
async def test_lag_keeps_growing_with_every_worker_stopped(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="2",
                     LAG_INTERVAL_SECONDS="1", LAG_EXPORTER_PORT=str(port))
    exporter = start_exporter(env, tmp_path / "exporter.log")
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        async def lag() -> tuple[float, float, dict[str, float]]:
            text = (await get(url))[1]
            states = {dict(ls)["state"]: v for (n, ls), v in samples(text).items()
                      if n == "streamsight_consumer_group_state"
                      and dict(ls)["group"] == "it-batcher"}
            return (total(text, "streamsight_consumer_lag_messages", group="it-batcher"),
                    max((v for (n, ls), v in samples(text).items()
                         if n == "streamsight_consumer_lag_seconds"
                         and dict(ls)["group"] == "it-batcher"), default=0.0),
                    states)

        worker = workers("lagged", env, "batcher")
        await asyncio.to_thread(produce, fresh_broker.bootstrap, 1000, sources=4, seed=8)

        async def caught_up() -> bool:
            try:
                messages, _seconds, states = await lag()
            except aiohttp.ClientError:
                return False
            return messages == 0 and states.get("stable") == 1

        await wait_for(caught_up, 90, "the batcher to catch up", [worker])
        assert await asyncio.to_thread(worker.stop) == 0

        # Under load with no worker: the exporter sees the backlog build up, exactly on
        # every broker, and age.
        readings = []
        for round_ in range(3):
            await asyncio.to_thread(produce, fresh_broker.bootstrap, 500, sources=4,
                                    seed=20 + round_)
            backlog = 500 * (round_ + 1)

            async def reached(backlog: int = backlog) -> tuple[bool, str]:
                reading = await lag()
                readings.append(reading)
                return reading[0] == backlog, f"readings {readings[-3:]}"

            await wait_for(reached, 30, f"a lag of exactly {backlog} messages", [worker])
        backlogs = [r for r in readings if r[0] in (500, 1000, 1500)]
        ages = [max(r[1] for r in backlogs if r[0] == n) for n in (500, 1000, 1500)]
        assert 0 < ages[0] < ages[1] < ages[2], readings
        assert readings[-1][2] == {"empty": 1.0}, readings
    finally:
        exporter.terminate()
        assert exporter.wait(30) == 0, (tmp_path / "exporter.log").read_text()


def pool_children(pid: int) -> set[int]:
    """The worker's multiprocessing children (the lag reader), not its resource tracker."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return {int(line.split()[0]) for line in out.splitlines() if "spawn_main" in line}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_lag_reader_process_ends_with_a_killed_worker(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    env = worker_env(fresh_broker, migrated_database, LAG_INTERVAL_SECONDS="1")
    worker = workers("orphan", env)
    assert worker.proc is not None
    pid = worker.proc.pid

    async def reader_started() -> bool:
        return bool(pool_children(pid))

    await wait_for(reader_started, 60, "the lag reader process", [worker])
    [reader] = pool_children(pid)
    worker.kill()

    async def reader_gone() -> bool:
        return not alive(reader)

    await wait_for(reader_gone, 30, "the orphaned lag reader to exit", [worker])
