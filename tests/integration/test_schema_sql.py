"""The sinks' schema (sql/004_sinks.sql, sql/005_sink_aggregates.sql) on a real PostgreSQL.

Plain PostgreSQL runs here; the same assertions hold on TimescaleDB, where the tables are
hypertables and the aggregates continuous aggregates with the same names and columns.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from streams.adapters.db import migrate
from streams.adapters.policies import apply_policies, has_timescaledb
from streams.errors import ConfigError

pytestmark = pytest.mark.integration

# A whole UTC hour a day back: inside every retention window (a fixed date months back
# was dropped by TimescaleDB's retention job, which runs about a second after migrate).
T0 = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)

TS, TEXT, INT, FLOAT, BOOL, UUID, JSONB, BIGINT = (
    "timestamp with time zone",
    "text",
    "integer",
    "double precision",
    "boolean",
    "uuid",
    "jsonb",
    "bigint",
)

# name -> [(column, type, nullable)] in table order.
TABLES: dict[str, list[tuple[str, str, bool]]] = {
    "api_performance": [
        ("time", TS, False),
        ("source", TEXT, False),
        ("route", TEXT, True),
        ("method", TEXT, True),
        ("status_code", INT, True),
        ("duration_ms", FLOAT, False),
        ("success", BOOL, False),
        ("event_id", TEXT, False),
    ],
    "error_events": [
        ("time", TS, False),
        ("source", TEXT, False),
        ("type", TEXT, False),
        ("message", TEXT, False),
        ("event_id", TEXT, True),
        ("batch_id", UUID, True),
        ("error_id", TEXT, False),
    ],
    "insights": [
        ("insight_id", UUID, False),
        ("batch_id", UUID, False),
        ("source", TEXT, False),
        ("window_start", TS, False),
        ("window_end", TS, False),
        ("summary", TEXT, False),
        ("severity", TEXT, False),
        ("confidence", FLOAT, False),
        ("patterns", JSONB, False),
        ("anomalies", JSONB, False),
        ("recommendations", JSONB, False),
        ("analyzer", TEXT, False),
        ("prompt_tokens", INT, False),
        ("completion_tokens", INT, False),
        ("cost_usd", FLOAT, False),
        ("latency_ms", FLOAT, False),
        ("created_at", TS, False),
    ],
    "ai_usage": [
        ("request_id", UUID, False),
        ("batch_id", UUID, False),
        ("analyzer", TEXT, False),
        ("model", TEXT, False),
        ("attempt", INT, False),
        ("outcome", TEXT, False),
        ("prompt_tokens", INT, False),
        ("completion_tokens", INT, False),
        ("cost_usd", FLOAT, False),
        ("latency_ms", FLOAT, False),
        ("at", TS, False),
        ("error", TEXT, True),
    ],
}

KEYS = {
    "api_performance": ["event_id", "time"],
    "error_events": ["error_id", "time"],
    "insights": ["insight_id", "window_start"],
    "ai_usage": ["request_id", "at"],
}

_PERF_STATS = [
    ("count", BIGINT),
    ("errors", BIGINT),
    ("mean_ms", FLOAT),
    ("max_ms", FLOAT),
    ("p50_ms", FLOAT),
    ("p95_ms", FLOAT),
    ("p99_ms", FLOAT),
]
VIEWS: dict[str, list[tuple[str, str]]] = {
    "api_performance_1m": [("bucket", TS), ("source", TEXT), ("route", TEXT), *_PERF_STATS],
    "api_performance_1h": [("bucket", TS), ("source", TEXT), ("route", TEXT), *_PERF_STATS],
    "error_events_1m": [("bucket", TS), ("source", TEXT), ("type", TEXT), ("count", BIGINT)],
}


@pytest.fixture
async def conn(migrated_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_database)
    try:
        yield connection
    finally:
        await connection.close()


async def columns(conn: asyncpg.Connection, name: str) -> list[tuple[str, str, bool]]:
    rows = await conn.fetch(
        """SELECT column_name, data_type, is_nullable = 'YES' AS nullable
           FROM information_schema.columns
           WHERE table_schema = current_schema() AND table_name = $1
           ORDER BY ordinal_position""",
        name,
    )
    return [(r["column_name"], r["data_type"], r["nullable"]) for r in rows]


async def snapshot(dsn: str) -> list[tuple[str, str, str, str]]:
    """Every relation, column and index in the schema: what a second migration must keep."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT c.relname, c.relkind::text, a.attname, format_type(a.atttypid, a.atttypmod)
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                                        AND NOT a.attisdropped
               WHERE n.nspname = current_schema()
               ORDER BY 1, 3"""
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


async def test_fresh_database_gets_the_sink_files_and_a_second_run_changes_nothing(
    database: str,
) -> None:
    applied = await migrate(database)
    assert applied[-3:] == ["004_sinks", "005_sink_aggregates", "006_late_rows"]
    before = await snapshot(database)

    assert await migrate(database) == []
    assert await snapshot(database) == before


@pytest.mark.parametrize("table", sorted(TABLES))
async def test_table_columns_and_key(conn: asyncpg.Connection, table: str) -> None:
    assert await columns(conn, table) == TABLES[table]
    key = await conn.fetchval(
        """SELECT array_agg(a.attname ORDER BY k.ord)
           FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = $1::regclass AND i.indisprimary""",
        table,
    )
    assert key == KEYS[table]


@pytest.mark.parametrize("view", sorted(VIEWS))
async def test_aggregate_names_exist_with_the_dashboard_columns(
    conn: asyncpg.Connection, view: str
) -> None:
    assert [(c, t) for c, t, _ in await columns(conn, view)] == VIEWS[view]
    # On plain PostgreSQL an ordinary view; with TimescaleDB a continuous aggregate.
    if not await has_timescaledb(conn):
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", view)
            == "v"
        )


async def test_grafana_indexes_exist(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    names = {r["indexname"] for r in rows}
    assert {
        "api_performance_time_idx",
        "api_performance_source_route_time_idx",
        "error_events_time_idx",
        "error_events_source_type_time_idx",
        "insights_time_idx",
        "insights_source_time_idx",
        "ai_usage_time_idx",
    } <= names


# --- idempotent writes ----------------------------------------------------------------


async def insert_twice(conn: asyncpg.Connection, sql: str, *rows: Sequence[object]) -> int:
    """Insert ``rows`` twice (a replay), ON CONFLICT DO NOTHING; rows written the second time."""
    await conn.executemany(sql + " ON CONFLICT DO NOTHING", rows)
    status = [await conn.execute(sql + " ON CONFLICT DO NOTHING", *row) for row in rows]
    return sum(int(s.split()[-1]) for s in status)


async def test_api_performance_replay_keeps_one_row(conn: asyncpg.Connection) -> None:
    sql = """INSERT INTO api_performance
             (time, source, route, method, status_code, duration_ms, success, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""
    rows = [
        (T0, "checkout", "/pay", "POST", 200, 12.5, True, "e-1"),
        (T0, "checkout", None, None, None, 3.0, True, "e-2"),  # a timed non-HTTP operation
    ]
    assert await insert_twice(conn, sql, *rows) == 0
    assert await conn.fetchval("SELECT count(*) FROM api_performance") == 2


async def test_error_events_identity_with_and_without_event_id(conn: asyncpg.Connection) -> None:
    batch = uuid.uuid4()
    sql = """INSERT INTO error_events (time, source, type, message, event_id, batch_id)
             VALUES ($1, $2, $3, $4, $5, $6)"""
    rows = [
        (T0, "checkout", "Timeout", "upstream timed out", "e-1", None),
        (T0, "analyst", "ai_failed", "gave up after 5 attempts", None, batch),
        (T0, "analyst", "ai_failed", "another reason", None, batch),
    ]
    assert await insert_twice(conn, sql, *rows) == 0
    ids = await conn.fetch("SELECT error_id FROM error_events ORDER BY error_id")
    assert len(ids) == 3
    assert ids[-1]["error_id"] == "event/e-1"
    assert all(r["error_id"].startswith("derived/") for r in ids[:2])
    # The id is the server's, computed from the row: writers cannot get it wrong.
    with pytest.raises(asyncpg.GeneratedAlwaysError):
        await conn.execute(
            "INSERT INTO error_events (time, source, type, message, error_id) "
            "VALUES ($1, 's', 't', 'm', 'mine')",
            T0,
        )


async def test_insights_replay_with_a_later_created_at_keeps_one_row(
    conn: asyncpg.Connection,
) -> None:
    insight, batch = uuid.uuid4(), uuid.uuid4()
    sql = """INSERT INTO insights (insight_id, batch_id, source, window_start, window_end,
                 summary, severity, confidence, patterns, anomalies, recommendations,
                 analyzer, prompt_tokens, completion_tokens, cost_usd, latency_ms, created_at)
             VALUES ($1, $2, 'checkout', $3, $4, 'all quiet', 'info', 0.9,
                     '["p"]', '[{"metric": "p95_ms", "value": 1.0}]', '[]',
                     'builtin', 0, 0, 0, 1.5, $5)"""
    await conn.execute(
        sql + " ON CONFLICT DO NOTHING", insight, batch, T0, T0 + timedelta(minutes=10), T0
    )
    # A retry re-publishes the same insight later: same id and window, new created_at.
    later = T0 + timedelta(hours=1)
    status = await conn.execute(
        sql + " ON CONFLICT DO NOTHING", insight, batch, T0, T0 + timedelta(minutes=10), later
    )
    assert status == "INSERT 0 0"
    assert await conn.fetchval("SELECT count(*) FROM insights") == 1
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(sql.replace("'info'", "'loud'"), uuid.uuid4(), batch, T0, T0, T0)


async def test_ai_usage_replay_keeps_one_row_but_a_redone_call_is_its_own(
    conn: asyncpg.Connection,
) -> None:
    request, batch = uuid.uuid4(), uuid.uuid4()
    sql = """INSERT INTO ai_usage (request_id, batch_id, analyzer, model, attempt, outcome,
                 prompt_tokens, completion_tokens, cost_usd, latency_ms, at, error)
             VALUES ($1, $2, 'openai', 'gpt-4o-mini', 1, $3, 100, 20, 0.001, 850.0, $4, $5)"""
    assert await insert_twice(conn, sql, (request, batch, "rate_limited", T0, "429")) == 0
    assert await conn.fetchval("SELECT count(*) FROM ai_usage") == 1
    # The same attempt really made again after a crash: billed again, so a second row.
    await conn.execute(
        sql + " ON CONFLICT DO NOTHING", request, batch, "ok", T0 + timedelta(seconds=30), None
    )
    assert await conn.fetchval("SELECT count(*) FROM ai_usage") == 2


# --- the aggregates -------------------------------------------------------------------


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def expected_stats(durations: list[float], failures: int) -> dict[str, float]:
    return {
        "count": len(durations),
        "errors": failures,
        "mean_ms": statistics.fmean(durations),
        "max_ms": max(durations),
        "p50_ms": percentile_cont(durations, 0.5),
        "p95_ms": percentile_cont(durations, 0.95),
        "p99_ms": percentile_cont(durations, 0.99),
    }


def close(row: asyncpg.Record, want: dict[str, float]) -> bool:
    return all(row[k] == pytest.approx(v, rel=1e-9) for k, v in want.items())


async def test_api_performance_aggregates(conn: asyncpg.Connection) -> None:
    # Three minutes of /pay (the third in the next hour), one of /cart, another source.
    samples: list[tuple[datetime, str, str, float, bool]] = []
    pay_1 = [float(d) for d in range(1, 101)]  # 12:00, every 10th fails
    samples += [
        (T0 + timedelta(seconds=i % 60), "checkout", "/pay", d, i % 10 != 0)
        for i, d in enumerate(pay_1)
    ]
    pay_2 = [5.0, 7.0, 1000.0]  # 12:01
    samples += [(T0 + timedelta(minutes=1, seconds=59), "checkout", "/pay", d, True) for d in pay_2]
    pay_3 = [40.0, 60.0]  # 13:00
    samples += [(T0 + timedelta(hours=1), "checkout", "/pay", d, False) for d in pay_3]
    cart = [2.0, 4.0]  # 12:00
    samples += [(T0 + timedelta(seconds=30), "checkout", "/cart", d, True) for d in cart]
    other = [9.0]  # 12:00, another source on the same route
    samples += [(T0, "search", "/pay", d, True) for d in other]
    await conn.executemany(
        """INSERT INTO api_performance
           (time, source, route, method, status_code, duration_ms, success, event_id)
           VALUES ($1, $2, $3, 'GET', 200, $4, $5, $6)""",
        [(t, s, r, d, ok, f"e-{n}") for n, (t, s, r, d, ok) in enumerate(samples)],
    )
    # Buckets are UTC-aligned whatever the session's zone (as time_bucket's are).
    await conn.execute("SET TIME ZONE 'Asia/Kolkata'")
    await refresh(conn, "api_performance_1m", "api_performance_1h")

    minutes = await conn.fetch("SELECT * FROM api_performance_1m ORDER BY bucket, source, route")
    got = [(r["bucket"], r["source"], r["route"]) for r in minutes]
    assert got == [
        (T0, "checkout", "/cart"),
        (T0, "checkout", "/pay"),
        (T0, "search", "/pay"),
        (T0 + timedelta(minutes=1), "checkout", "/pay"),
        (T0 + timedelta(hours=1), "checkout", "/pay"),
    ]
    assert close(minutes[0], expected_stats(cart, 0))
    assert close(minutes[1], expected_stats(pay_1, 10))
    assert close(minutes[2], expected_stats(other, 0))
    assert close(minutes[3], expected_stats(pay_2, 0))
    assert close(minutes[4], expected_stats(pay_3, 2))
    assert minutes[1]["p95_ms"] == pytest.approx(95.05)

    hours = await conn.fetch("SELECT * FROM api_performance_1h ORDER BY bucket, source, route")
    got = [(r["bucket"], r["source"], r["route"]) for r in hours]
    assert got == [
        (T0, "checkout", "/cart"),
        (T0, "checkout", "/pay"),
        (T0, "search", "/pay"),
        (T0 + timedelta(hours=1), "checkout", "/pay"),
    ]
    # The hour's percentiles come from the raw rows, not from the minutes'.
    assert close(hours[1], expected_stats(pay_1 + pay_2, 10))
    assert close(hours[3], expected_stats(pay_3, 2))

    # A Grafana-style query: time filter on bucket, error rate per route.
    rate = await conn.fetch(
        """SELECT route, sum(errors)::float / sum(count) AS error_rate
           FROM api_performance_1m
           WHERE bucket >= $1 AND bucket < $2 AND source = 'checkout'
           GROUP BY route ORDER BY route""",
        T0,
        T0 + timedelta(minutes=30),
    )
    assert [(r["route"], r["error_rate"]) for r in rate] == [("/cart", 0.0), ("/pay", 10 / 103)]


async def test_error_events_per_minute(conn: asyncpg.Connection) -> None:
    rows = [
        (T0 + timedelta(seconds=1), "checkout", "Timeout", "e-1"),
        (T0 + timedelta(seconds=2), "checkout", "Timeout", "e-2"),
        (T0 + timedelta(seconds=59), "checkout", "KeyError", "e-3"),
        (T0 + timedelta(minutes=1), "checkout", "Timeout", "e-4"),
        (T0 + timedelta(seconds=5), "search", "Timeout", "e-5"),
    ]
    sql = """INSERT INTO error_events (time, source, type, message, event_id)
             VALUES ($1, $2, $3, 'boom', $4)"""
    assert await insert_twice(conn, sql, *rows) == 0
    await refresh(conn, "error_events_1m")

    got = await conn.fetch("SELECT * FROM error_events_1m ORDER BY bucket, source, type")
    assert [tuple(r) for r in got] == [
        (T0, "checkout", "KeyError", 1),
        (T0, "checkout", "Timeout", 2),
        (T0, "search", "Timeout", 1),
        (T0 + timedelta(minutes=1), "checkout", "Timeout", 1),
    ]


async def refresh(conn: asyncpg.Connection, *aggregates: str) -> None:
    """Materialise continuous aggregates (TimescaleDB); views need nothing."""
    if not await has_timescaledb(conn):
        return
    for name in aggregates:
        # Outside a transaction, as TimescaleDB requires; no arguments, so asyncpg sends
        # one simple query rather than an extended-protocol one.
        start, end = (T0 - timedelta(days=1)).isoformat(), (T0 + timedelta(days=1)).isoformat()
        await conn.execute(f"CALL refresh_continuous_aggregate('{name}', '{start}', '{end}')")


# --- policies -------------------------------------------------------------------------


_OUR_JOBS = """
SELECT j.proc_name, j.fixed_schedule,
       extract(epoch FROM j.initial_start - date_trunc('minute', j.initial_start)) AS second
FROM timescaledb_information.jobs j
WHERE j.proc_name IN ('policy_refresh_continuous_aggregate', 'policy_compression',
                      'policy_retention', 'refresh_late_rows')
"""


async def test_policy_jobs_start_at_seconds_of_their_own(conn: asyncpg.Connection) -> None:
    """All started together (about a second after a fresh migration) retention,
    compression and refreshes deadlocked on the same tables."""
    if not await has_timescaledb(conn):
        # Plain PostgreSQL: no jobs, and nothing that would schedule them.
        assert await conn.fetchval(
            "SELECT to_regproc('streamsight_stagger_jobs') IS NULL") is True
        return
    await apply_policies(conn, {"api_performance": 14}, 3)  # re-added: staggered again
    jobs = await conn.fetch(_OUR_JOBS)
    assert len(jobs) == 3 + 4 + 7 + 1
    assert all(job["fixed_schedule"] for job in jobs)
    seconds = sorted(float(job["second"]) for job in jobs)
    assert seconds == [pytest.approx(4 * n) for n in range(15)]


async def test_apply_policies_is_a_no_op_without_timescaledb(conn: asyncpg.Connection) -> None:
    if await has_timescaledb(conn):
        changes = await apply_policies(conn, {"api_performance": 14}, 3)
        assert changes == [
            "retention api_performance: 30 days -> 14 days",
            *(
                f"compression {t}: 7 days -> 3 days"
                for t in ("api_performance", "error_events", "insights", "ai_usage")
            ),
        ]
        assert await apply_policies(conn, {"api_performance": 14}, 3) == []
        return
    assert await apply_policies(conn, {"api_performance": 14, "api_performance_1h": 0}, 3) == []
    # Bad values fail on plain PostgreSQL too, so a setting is never wrong unnoticed.
    with pytest.raises(ConfigError, match="retention for 'api_perf'"):
        await apply_policies(conn, {"api_perf": 14}, 3)
