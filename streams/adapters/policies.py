"""TimescaleDB retention and compression policies, (re)set from configuration.

``sql/005_sink_aggregates.sql`` installs defaults that need no settings. ``apply_policies``
moves them to the configured values; it is idempotent (a policy that already has the
wanted value is left alone), safe to run from several processes at once (one transaction
under an advisory lock), and does nothing on plain PostgreSQL, where there are no
policies. Values are checked first on either server, so a bad setting fails everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import asyncpg

from streams.errors import ConfigError

# The four hypertables that the sinks write; all are compressed after the same age.
HYPERTABLES = ("api_performance", "error_events", "insights", "ai_usage")
# Continuous aggregates; retention applies to them as to tables.
AGGREGATES = ("api_performance_1m", "api_performance_1h", "error_events_1m")
RELATIONS = HYPERTABLES + AGGREGATES

# What the migration installs (keep in step with sql/005_sink_aggregates.sql).
DEFAULT_RETENTION_DAYS: Mapping[str, int] = {
    "api_performance": 30,
    "error_events": 90,
    "insights": 365,
    "ai_usage": 365,
    "api_performance_1m": 90,
    "api_performance_1h": 730,
    "error_events_1m": 365,
}
DEFAULT_COMPRESS_AFTER_DAYS = 7

# Raw rows must outlive the widest refresh window of the aggregates built on them
# (api_performance_1h refreshes the last day); otherwise a refresh over dropped chunks
# would empty the aggregate there.
MIN_RETENTION_DAYS: Mapping[str, int] = {"api_performance": 2, "error_events": 1}

#: Policies subtract their age from now(): beyond about 2,700 years the result would fall
#: before 4713 BC, where PostgreSQL's timestamps end, and every run of the job would fail.
MAX_DAYS = 1_000_000

POLICY_LOCK_KEY = 0x5354_5245_414D_504F  # "STREAMPO"

_CURRENT = """
SELECT hypertable_name AS relation, proc_name,
       CASE proc_name
           WHEN 'policy_retention' THEN (config ->> 'drop_after')::interval
           ELSE (config ->> 'compress_after')::interval
       END AS value
FROM timescaledb_information.jobs
WHERE proc_name IN ('policy_retention', 'policy_compression')
  AND hypertable_schema = current_schema()
  AND hypertable_name = ANY($1::text[])
"""


def check(retention_days: Mapping[str, int], compress_after_days: int) -> None:
    """ConfigError naming the first bad value; 0 days means "no such policy"."""
    for name, days in retention_days.items():
        if name not in RELATIONS:
            raise ConfigError(
                f"retention for {name!r}: unknown table or aggregate "
                f"(one of {', '.join(RELATIONS)})"
            )
        if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_DAYS:
            raise ConfigError(
                f"retention for {name!r}: {days!r} is not a whole number of days "
                f"from 0 to {MAX_DAYS:,}"
            )
        least = MIN_RETENTION_DAYS.get(name, 1)
        if 0 < days < least:
            raise ConfigError(
                f"retention for {name!r}: {days} days is shorter than the {least} days "
                "its continuous aggregates refresh; use 0 to keep rows forever"
            )
    if (
        isinstance(compress_after_days, bool)
        or not isinstance(compress_after_days, int)
        or not 0 <= compress_after_days <= MAX_DAYS
    ):
        raise ConfigError(
            f"compress after: {compress_after_days!r} is not a whole number of days "
            f"from 0 to {MAX_DAYS:,}"
        )


async def has_timescaledb(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"))


async def apply_policies(
    conn: asyncpg.Connection, retention_days: Mapping[str, int], compress_after_days: int
) -> list[str]:
    """Set retention (per relation named in ``retention_days``; others keep what they
    have) and compression (every hypertable) policies; 0 days removes the policy.

    Returns one line per policy changed, e.g. ``retention api_performance: 30 days ->
    14 days``; empty when nothing changed or the server has no TimescaleDB.
    """
    check(retention_days, compress_after_days)
    if not await has_timescaledb(conn):
        return []
    changes: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", POLICY_LOCK_KEY)
        rows = await conn.fetch(_CURRENT, list(RELATIONS))
        current: dict[tuple[str, str], timedelta] = {
            (row["proc_name"], row["relation"]): row["value"] for row in rows
        }
        for name, days in retention_days.items():
            change = await _set(conn, "retention", name, days, current)
            if change:
                changes.append(change)
        for name in HYPERTABLES:
            change = await _set(conn, "compression", name, compress_after_days, current)
            if change:
                changes.append(change)
        # A policy added here would start at once, beside the others (sql/006_late_rows.sql).
        if changes:
            await conn.execute("SELECT streamsight_stagger_jobs()")
    return changes


async def _set(
    conn: asyncpg.Connection,
    kind: str,
    relation: str,
    days: int,
    current: Mapping[tuple[str, str], timedelta],
) -> str | None:
    have = current.get((f"policy_{kind}", relation))
    want = timedelta(days=days) if days else None
    if have == want:
        return None
    if have is not None:
        await conn.execute(
            f"SELECT remove_{kind}_policy($1::regclass, if_exists => true)", relation
        )
    if want is not None:
        # remove + add rather than alter_job: the add functions validate the value.
        await conn.execute(f"SELECT add_{kind}_policy($1::regclass, $2::interval)", relation, want)
    return f"{kind} {relation}: {_show(have)} -> {_show(want)}"


def _show(value: timedelta | None) -> str:
    if value is None:
        return "none"
    days = value / timedelta(days=1)
    return f"{days:g} days"
