"""Late rows: rows written where the refresh policies of the continuous aggregates no
longer reach, noted for the ``refresh_late_rows`` job (sql/006_late_rows.sql).

A refresh policy re-materialises its window (``start_offset`` back from now) every
``schedule_interval``; a row older than what the next run of every policy of its table
will still cover would stay out of the aggregates for good. ``LateRows.note`` adds the
time span of such rows to ``late_rows`` in the writer's transaction, so the note is as
durable as the rows; the job refreshes it off the write path. On plain PostgreSQL the
aggregates are views, nothing is ever late and nothing is noted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

import asyncpg

from streams.adapters.policies import has_timescaledb

Row = tuple[object, ...]

# Per table with aggregates: how far back every policy will still refresh at its next
# run. NULL (no limit) where a policy refreshes from the beginning; 0 where an aggregate
# has no policy at all (every written row is late for it).
_COVERED = """
SELECT ca.hypertable_name AS table_name,
       min(CASE
               WHEN j.job_id IS NULL THEN INTERVAL '0'
               WHEN j.config ->> 'start_offset' IS NULL THEN NULL
               ELSE (j.config ->> 'start_offset')::interval - j.schedule_interval
           END) AS covered,
       bool_or(j.job_id IS NULL) AS unrefreshed
FROM timescaledb_information.continuous_aggregates ca
LEFT JOIN timescaledb_information.jobs j
  ON j.proc_name = 'policy_refresh_continuous_aggregate'
 -- The aggregate's own name (TimescaleDB 2.28) or its materialization hypertable's.
 AND ((j.hypertable_schema = ca.view_schema AND j.hypertable_name = ca.view_name)
      OR (j.hypertable_schema = ca.materialization_hypertable_schema
          AND j.hypertable_name = ca.materialization_hypertable_name))
WHERE ca.view_schema = current_schema()
GROUP BY ca.hypertable_name
"""

_NOTE = """
INSERT INTO late_rows (table_name, lo, hi) VALUES ($1, $2, $3)
ON CONFLICT (table_name) DO UPDATE
SET lo = least(late_rows.lo, excluded.lo), hi = greatest(late_rows.hi, excluded.hi),
    version = late_rows.version + 1
"""

#: Policies change rarely (apply_policies at a worker's start): read them this often.
RELOAD_S = 300.0


class LateRows:
    """Notes late rows of the tables that have continuous aggregates."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        #: table -> how far back its policies reach (None: all the way).
        self._covered: dict[str, timedelta | None] = {}
        self._loaded_at: float | None = None

    async def _load(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(_COVERED) if await has_timescaledb(conn) else []
        self._covered = {r["table_name"]: (timedelta(0) if r["unrefreshed"] else r["covered"])
                         for r in rows}
        self._loaded_at = self._monotonic()

    async def note(self, conn: asyncpg.Connection, table: str, rows: Sequence[Row],
                   column: int, now: datetime) -> bool:
        """In the writer's transaction: note the span of the rows (their time in
        ``column``) that lie where the policies will not refresh; whether any did."""
        if self._loaded_at is None or self._monotonic() - self._loaded_at > RELOAD_S:
            await self._load(conn)
        covered = self._covered.get(table, None)
        if covered is None or not rows:
            return False
        cutoff = now - covered
        times: Iterable[datetime] = (row[column] for row in rows)  # type: ignore[misc]
        late = [t for t in times if t < cutoff]
        if not late:
            return False
        await conn.execute(_NOTE, table, min(late), max(late))
        return True
