"""TOPIC_PREFIX: a second deployment on a cluster that already holds streamsight's topics
works end to end under its own names, and touches none of the other deployment's."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import pytest
from confluent_kafka.admin import AdminClient

from streams.config import Topics
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    events_batched,
    free_port,
    produce,
    read_topic,
    run_cli,
    worker_env,
)

PREFIX = "team-a.prod."
AGENTS = "batcher,analyst,sink-insights,sink-performance,sink-errors"


@pytest.mark.kafka
async def test_a_prefixed_deployment_uses_only_its_own_topics(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    port = free_port()
    env = worker_env(fresh_broker, migrated_database, TOPIC_PREFIX=PREFIX, APP_ID="team-a",
                     BATCH_MAX_EVENTS="50", BATCH_MAX_AGE_SECONDS="2",
                     WEB_ENABLED="true", WEB_PORT=str(port), LAG_INTERVAL_SECONDS="1")
    applied = await asyncio.to_thread(run_cli, env, "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    names = set(AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
                .list_topics(timeout=10).topics)
    assert set(Topics.prefixed(PREFIX).names()) <= names

    workers("prefixed", env, AGENTS)
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 400, sources=4,
                                      seed=5, invalid_every=40, topic=f"{PREFIX}events")
    assert traffic.failed == 0
    deadline = time.monotonic() + 120
    conn = await asyncpg.connect(migrated_database)
    try:
        while True:
            batched = await events_batched(migrated_database)
            batches = await conn.fetchval("SELECT count(*) FROM batches")
            insights = await conn.fetchval("SELECT count(*) FROM insights")
            if batched == len(traffic.valid) and insights == batches:
                break
            assert time.monotonic() < deadline, (batched, batches, insights)
            await asyncio.sleep(0.5)
        topics = {r[0] for r in await conn.fetch("SELECT DISTINCT topic FROM batches")}
        assert await conn.fetchval("SELECT count(*) FROM api_performance") > 0
    finally:
        await conn.close()
    assert topics == {f"{PREFIX}events"}

    listed = await asyncio.to_thread(run_cli, env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    counts = json.loads(listed.stdout)
    assert counts["total"] == len(traffic.invalid)
    assert counts["by_origin_topic"] == {f"{PREFIX}events": len(traffic.invalid)}

    status = await asyncio.to_thread(run_cli, env, "status", "--json", "--worker",
                                     f"http://127.0.0.1:{port}")
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert f"{PREFIX}events" in {t["topic"] for t in seen["topics"]}
    assert {g["group"]: g["topic"] for g in seen["lag"]}["team-a-batcher"] == f"{PREFIX}events"

    # The unprefixed deployment's topics got nothing.
    for topic in ("events", "analysis-requests", "insights", "dead-letter"):
        assert await asyncio.to_thread(read_topic, fresh_broker.bootstrap, topic,
                                       idle=0.5) == [], topic
