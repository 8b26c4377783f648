"""`streamsight status`: one screen, read from the broker, the workers and the database."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import pytest

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    events_batched,
    free_port,
    produce,
    run_cli,
    worker_env,
)


@pytest.mark.kafka
async def test_status_shows_the_whole_pipeline(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    port = free_port()
    env = worker_env(fresh_broker, migrated_database, WEB_ENABLED="true", WEB_PORT=str(port),
                     BATCH_MAX_AGE_SECONDS="600", BATCH_MAX_EVENTS="50",
                     LAG_INTERVAL_SECONDS="1")
    worker = workers("status", env, "batcher,analyst,sink-insights")
    traffic = await asyncio.to_thread(produce, fresh_broker.bootstrap, 500, sources=3,
                                      seed=9, invalid_every=25)
    deadline = time.monotonic() + 90
    conn = await asyncpg.connect(migrated_database)
    try:
        # Count-sealed batches analysed; the rest stays open (age limit ten minutes).
        while not (await conn.fetchval("SELECT count(*) FROM insights") >= 7):
            assert time.monotonic() < deadline, worker.log_text()[-3000:]
            await asyncio.sleep(0.5)
        insights = await conn.fetchval("SELECT count(*) FROM insights")
        latest = await conn.fetchval(
            "SELECT source FROM insights ORDER BY window_start DESC, created_at DESC LIMIT 1")
    finally:
        await conn.close()
    open_events = len(traffic.valid) - await events_batched(migrated_database)
    assert open_events > 0

    # As in a pipe or an 80-column terminal: nothing cut, nothing wider.
    result = await asyncio.to_thread(run_cli, {**env, "COLUMNS": "80"}, "status", "--worker",
                                     f"http://127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80, out
    for topic in ("events", "analysis-requests", "insights", "dead-letter"):
        assert topic in out
    assert "groups it-<agent>" in out
    lag_rows = {line.split()[0] for line in out.splitlines() if " stable " in line}
    assert {"batcher", "analyst", "sink-insights"} <= lag_rows, out
    row = next(line for line in out.splitlines() if f"http://127.0.0.1:{port}" in line)
    assert "closed" in row and "batcher 4" in row
    assert f"dead-letter: {len(traffic.invalid)} " in out
    assert "ANALYZED" in out and latest in out
    assert f"{insights}" in out

    as_json = await asyncio.to_thread(run_cli, env, "status", "--json", "--worker",
                                      f"http://127.0.0.1:{port}")
    assert as_json.returncode == 0, as_json.stderr
    state = json.loads(as_json.stdout)
    assert {t["topic"]: t["messages"] for t in state["topics"]}["events"] == len(
        traffic.valid) + len(traffic.invalid)
    groups = {g["group"]: g for g in state["lag"]}
    assert groups["it-batcher"]["state"] == "stable"
    assert groups["it-batcher"]["messages"] == sum(
        p["messages"] for p in groups["it-batcher"]["partitions"])
    (seen,) = state["workers"]
    assert seen["error"] is None and seen["partitions"]["it-batcher"] == 4
    assert seen["breaker"] == "closed"
    assert state["dead_letters"]["total"] == len(traffic.invalid)
    assert sum(state["batches"].values()) >= 7 and state["problems"] == []
    assert state["insights"][0]["source"] == latest

    assert await asyncio.to_thread(worker.stop) == 0
    after = await asyncio.to_thread(run_cli, env, "status", "--worker", f"http://127.0.0.1:{port}")
    assert after.returncode == 0, after.stderr
    assert "not reachable" in after.stdout

    down = await asyncio.to_thread(
        run_cli, {**env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:9/none"}, "status",
        "--worker", f"http://127.0.0.1:{port}")
    assert down.returncode == 1
    assert down.stderr.strip().startswith("streamsight: database:"), down.stderr
