"""One agent's fault does not stop the others (issue 12): an agent that fails for a reason
that is not in the data is restarted inside the worker with backoff, counted, and shown
on /health; the batcher keeps sealing meanwhile."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import asyncpg

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    events_batched,
    free_port,
    produce,
    wait_for,
    worker_env,
)
from tests.integration.test_ops import get, total

AGENTS = "batcher,analyst,sink-insights,sink-performance,sink-errors"


async def test_a_failing_agent_is_restarted_while_the_others_go_on(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = worker_env(fresh_broker, migrated_database, WEB_ENABLED="true", WEB_PORT=str(port),
                     BATCH_MAX_AGE_SECONDS="2")
    worker = workers("supervised", env, AGENTS)

    async def ready() -> bool:
        try:
            return (await get(f"{base}/health/ready"))[0] == 200
        except aiohttp.ClientError:
            return False

    await wait_for(ready, 90, "readiness", [worker])
    # An operator's slip, not bad data: the insights table is gone for a while.
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute("ALTER TABLE insights RENAME TO insights_away")
        traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 400, sources=4,
                                          seed=5)

        async def restarting() -> bool:
            metrics = (await get(f"{base}/metrics"))[1]
            status, body = await get(f"{base}/health/detailed")
            agent = json.loads(body)["components"]["agent:sink-insights"]
            return (total(metrics, "streamsight_agent_restarts_total",
                          agent="sink-insights") >= 2
                    and agent["restarts"] >= 2 and status == 200
                    and (await get(f"{base}/health/ready"))[0] == 503
                    and total(metrics, "streamsight_agent_up", agent="sink-insights") == 0)

        await wait_for(restarting, 90, "sink-insights restarted twice", [worker])

        async def batched() -> bool:
            return await events_batched(migrated_database) == len(traffic.valid)

        await wait_for(batched, 60, "the batcher sealing every event meanwhile", [worker])
        metrics = (await get(f"{base}/metrics"))[1]
        for agent in ("batcher", "analyst", "sink-performance", "sink-errors"):
            assert total(metrics, "streamsight_agent_restarts_total", agent=agent) == 0
        detail = json.loads((await get(f"{base}/health/detailed"))[1])
        assert "insights" in detail["checks"]["agent:sink-insights"]["detail"]

        await conn.execute("ALTER TABLE insights_away RENAME TO insights")

        async def caught_up() -> bool:
            batches = await conn.fetchval("SELECT count(*) FROM batches")
            insights = await conn.fetchval("SELECT count(*) FROM insights")
            return bool(batches == insights > 0) and await ready()

        await wait_for(caught_up, 120, "every batch's insight after the table came back", [worker])
    finally:
        await conn.close()
    assert worker.alive()
    log = worker.log_text()
    # Logged once, then counted: however often it restarted.
    assert log.count('"agent.failed"') == 1, log[-3000:]
    assert log.count('"agent.restarted"') >= 2
