"""Idempotent bulk writes: COPY into a temporary table, then INSERT ... ON CONFLICT.

COPY is PostgreSQL's fastest way in, but it cannot skip rows that exist; the staging
table lets one statement drop the duplicates a replay or a retry brings back.
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

    async def write(self, conn: asyncpg.Connection, rows: Sequence[tuple[object, ...]]) -> int:
        """Write ``rows`` inside the caller's transaction; the number of new rows."""
        if not rows:
            return 0
        try:
            await conn.execute(self._create)
            await conn.copy_records_to_table(self._staging, records=rows, columns=self.columns)
            status = await conn.execute(self._insert)
        except QUERY_ERRORS as exc:
            raise query_error(f"writing {self.table}", exc) from exc
        return int(status.rsplit(" ", 1)[-1])
