"""Grafana's aggregates stay exact whatever arrives late: rows two days late, then a
replay of the sinks, then a dlq redrive. After each, every aggregate equals the same
query on its raw table.

On TimescaleDB the buckets are materialised first, as the refresh policies would have
done long before such rows come: real-time aggregation then no longer covers them, and
only the refresh_late_rows job (sql/006_late_rows.sql) brings them in. On plain
PostgreSQL the aggregates are views and the same checks hold at once. Point the suite at
a TimescaleDB server with STREAMSIGHT_TEST_POSTGRES (README, "Tests")."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from confluent_kafka import Producer

from streams.adapters.late_rows import LateRows
from streams.adapters.policies import has_timescaledb
from streams.core.models import ErrorRecord, PerformanceRow
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    caught_up,
    run_cli,
    table_count,
    wait_for,
    worker_env,
)

AGENTS = "sink-performance,sink-errors"
#: The aggregate, its raw table and bucket, and the columns compared exactly.
AGGREGATES = {
    "api_performance_1m": ("api_performance", "minute",
                           "count(*) AS count, count(*) FILTER (WHERE NOT success) AS errors, "
                           "max(duration_ms) AS max_ms", "source, route"),
    "api_performance_1h": ("api_performance", "hour",
                           "count(*) AS count, count(*) FILTER (WHERE NOT success) AS errors, "
                           "max(duration_ms) AS max_ms", "source, route"),
    "error_events_1m": ("error_events", "minute", "count(*) AS count", "source, type"),
}
LATE = timedelta(days=2)


def performance(at: datetime, n: int, prefix: str) -> list[PerformanceRow]:
    return [PerformanceRow(time=at + timedelta(seconds=7 * i), source=f"svc{i % 3}",
                           route=f"/r{i % 2}", method="GET",
                           status_code=500 if i % 5 == 0 else 200,
                           duration_ms=float(i % 97), success=i % 5 != 0,
                           event_id=f"{prefix}-{i}")
            for i in range(n)]


def errors(at: datetime, n: int, prefix: str) -> list[ErrorRecord]:
    return [ErrorRecord(time=at + timedelta(seconds=11 * i), source=f"svc{i % 3}",
                        type=("Timeout", "KeyError")[i % 2], message="boom",
                        event_id=f"{prefix}-{i}")
            for i in range(n)]


async def mismatches(dsn: str) -> dict[str, int]:
    """Per aggregate, the rows in which it differs from the same query on the raw table."""
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for name, (table, unit, measures, keys) in AGGREGATES.items():
            raw = (f"SELECT date_trunc('{unit}', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
                   f"AS bucket, {keys}, {measures} FROM {table} GROUP BY 1, {keys}")
            columns = ", ".join(c.split(" AS ")[-1] for c in measures.split(", "))
            aggregate = f"SELECT bucket, {keys}, {columns} FROM {name}"
            out[name] = int(await conn.fetchval(
                f"SELECT count(*) FROM (({raw} EXCEPT {aggregate}) "
                f"UNION ALL ({aggregate} EXCEPT {raw})) AS d"))
        return out
    finally:
        await conn.close()


async def materialise(dsn: str, now: datetime) -> bool:
    """Rows that came on time three hours ago, materialised as the policies would have
    done since (on TimescaleDB): the aggregates' watermarks then lie two hours back, and
    real-time aggregation no longer covers anything older. Whether the server has
    TimescaleDB."""
    conn = await asyncpg.connect(dsn)
    try:
        earlier = now - timedelta(hours=3)
        await conn.execute(
            "INSERT INTO api_performance (time, source, route, method, status_code, "
            "duration_ms, success, event_id) VALUES ($1, 'svc0', '/r0', 'GET', 200, 5, true, "
            "'on-time')", earlier)
        await conn.execute("INSERT INTO error_events (time, source, type, message, event_id) "
                           "VALUES ($1, 'svc0', 'Timeout', 'boom', 'on-time')", earlier)
        if not await has_timescaledb(conn):
            return False
        until = now - timedelta(hours=1)
        for name in AGGREGATES:
            # Outside a transaction, as TimescaleDB requires: one simple query.
            await conn.execute(
                f"CALL refresh_continuous_aggregate('{name}', "
                f"'{(until - timedelta(days=3)).isoformat()}', '{until.isoformat()}')")
        return True
    finally:
        await conn.close()


async def job_errors(dsn: str) -> list[str]:
    """What TimescaleDB's jobs failed with (none on plain PostgreSQL)."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await has_timescaledb(conn):
            return []
        # Ours: TimescaleDB's own housekeeping jobs are not ours to judge.
        return [f"{r['proc_name']}: {r['err_message']}" for r in await conn.fetch(
            "SELECT proc_name, err_message FROM timescaledb_information.job_errors "
            "WHERE proc_name IN ('policy_refresh_continuous_aggregate', 'policy_compression', "
            "'policy_retention', 'refresh_late_rows')")]
    finally:
        await conn.close()


async def test_aggregates_equal_the_raw_tables_after_late_rows_a_replay_and_a_redrive(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory,
) -> None:
    bootstrap, dsn = fresh_broker.bootstrap, migrated_database
    env = worker_env(fresh_broker, dsn)
    now = datetime.now(UTC)
    late_at = (now - LATE).replace(second=0, microsecond=0)
    tsdb = await materialise(dsn, now)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    late_rows, late_errors = performance(late_at, 300, "late"), errors(late_at, 120, "late")
    for chunk in range(0, len(late_rows), 100):
        producer.produce("performance", msgspec.json.encode(late_rows[chunk:chunk + 100]))
    producer.produce("errors", msgspec.json.encode(late_errors))
    # Live rows beside them, which the policies and real-time aggregation cover.
    producer.produce("performance", msgspec.json.encode(performance(now, 50, "live")))
    producer.produce("errors", msgspec.json.encode(errors(now, 20, "live")))
    assert producer.flush(30) == 0

    worker = workers("late", env, AGENTS)

    async def exact() -> tuple[bool, str]:
        seen = await mismatches(dsn)
        return not any(seen.values()), f"rows differing per aggregate: {seen}"

    async def settled(*topics: str) -> None:
        for topic in topics:
            await wait_for(caught_up(bootstrap, f"it-sink-{topic}", topic), 60,
                           f"the sink read {topic} to its end", [worker])

    await settled("performance", "errors")
    assert await table_count(dsn, "api_performance") == 351
    assert await table_count(dsn, "error_events") == 141
    print(f"\nlate rows written: rows differing per aggregate {await mismatches(dsn)}")
    started = asyncio.get_running_loop().time()
    # The job runs every minute, at its own second of it.
    await wait_for(exact, 150, "the aggregates taking in rows two days late", [worker])
    print(f"exact {asyncio.get_running_loop().time() - started:.0f} s later; "
          f"TimescaleDB: {tsdb}")
    assert await job_errors(dsn) == []

    # A replay writes the same rows again: nothing changes, nothing is missing.
    assert await asyncio.to_thread(worker.stop) == 0
    for agent in ("sink-performance", "sink-errors"):
        reset = await asyncio.to_thread(run_cli, env, "replay", "reset", "--group", agent,
                                        "--to-earliest", "--execute")
        assert reset.returncode == 0, reset.stderr
    worker = workers("late-replay", env, AGENTS)
    await settled("performance", "errors")
    assert (await table_count(dsn, "api_performance"),
            await table_count(dsn, "error_events")) == (351, 141)
    await wait_for(exact, 150, "the aggregates after a replay", [worker])

    # A redrive brings back a late row that had been refused (as a row of its topic).
    redriven = performance(late_at + timedelta(minutes=90), 1, "redriven")
    producer.produce("dead-letter", msgspec.json.encode(redriven), b"svc0", headers=[
        ("dlq.reason", b"db_rejected"), ("dlq.error", b"api_performance: as if refused"),
        ("dlq.origin.topic", b"performance"), ("dlq.origin.partition", b"0"),
        ("dlq.origin.offset", b"0")])
    assert producer.flush(30) == 0
    sent = await asyncio.to_thread(run_cli, env, "dlq", "redrive", "--reason", "db_rejected",
                                   "--execute", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["sent"] == 1
    await settled("performance")
    assert await table_count(dsn, "api_performance") == 352
    await wait_for(exact, 150, "the aggregates after a redrive", [worker])
    assert await asyncio.to_thread(worker.stop) == 0
    assert await job_errors(dsn) == []


async def test_only_rows_beyond_every_refresh_policy_are_noted(migrated_database: str) -> None:
    """Live traffic (rows minutes old, as sealed batches bring them) notes nothing: the
    policies refresh it. On plain PostgreSQL nothing is ever late."""
    conn = await asyncpg.connect(migrated_database)
    try:
        tsdb = await has_timescaledb(conn)
        late = LateRows()
        now = datetime.now(UTC)
        fresh = [(now - timedelta(minutes=m),) for m in (1, 10, 59)]
        old = [(now - timedelta(hours=h),) for h in (3, 50, 2)]
        async with conn.transaction():
            assert await late.note(conn, "api_performance", fresh, 0, now) is False
            assert await late.note(conn, "insights", old, 0, now) is False  # no aggregate
            assert await late.note(conn, "api_performance", old, 0, now) is tsdb
        rows = await conn.fetch("SELECT table_name, lo, hi FROM late_rows")
        # The 1m aggregates' policy reaches 2 h back, less a run's interval: 2 h is late.
        expected = [("api_performance", now - timedelta(hours=50), now - timedelta(hours=2))]
        assert [tuple(r) for r in rows] == (expected if tsdb else [])
    finally:
        await conn.close()
