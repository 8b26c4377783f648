"""Idempotent bulk writes: COPY straight in, or through a staging table on conflict.

COPY is PostgreSQL's fastest way in, but it cannot skip rows that exist. Most writes
bring only new rows, so a writer first COPYs into the table itself (inside a savepoint);
when that hits a unique key a replay or a retry brought back, it rolls the savepoint back
and COPYs into a temporary staging table instead, from which one
``INSERT ... ON CONFLICT DO NOTHING`` drops the duplicates. While writes keep
conflicting (a replay in progress) it goes through staging directly, and returns to the
direct path after a staged write found nothing to drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from streams.adapters.db import QUERY_ERRORS, query_error


class CopyWriter:
    """Writes rows of one table; a row whose unique key exists is left as it is."""

    def __init__(self, table: str, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = list(columns)
        self._staging = f"staging_{table}"
        names = ", ".join(self.columns)
        self._create = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self._staging} "
            f"(LIKE {table} INCLUDING DEFAULTS INCLUDING GENERATED) ON COMMIT DELETE ROWS"
        )
        self._insert = (
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {self._staging} "
            "ON CONFLICT DO NOTHING"
        )
        self._conflicting = False

    async def write(self, conn: asyncpg.Connection, rows: Sequence[tuple[object, ...]]) -> int:
        """Write ``rows`` inside the caller's transaction; the number of new rows."""
        if not rows:
            return 0
        try:
            if not self._conflicting:
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table(self.table, records=rows,
                                                         columns=self.columns)
                    return len(rows)
                except asyncpg.UniqueViolationError:
                    self._conflicting = True
            added = await self._merge(conn, rows)
        except QUERY_ERRORS as exc:
            raise query_error(f"writing {self.table}", exc) from exc
        self._conflicting = added < len(rows)
        return added

    async def _merge(self, conn: asyncpg.Connection, rows: Sequence[tuple[object, ...]]) -> int:
        await conn.execute(self._create)
        await conn.copy_records_to_table(self._staging, records=rows, columns=self.columns)
        status = await conn.execute(self._insert)
        return int(status.rsplit(" ", 1)[-1])
