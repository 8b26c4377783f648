"""Idempotent bulk writes: COPY straight in, or through a staging table on conflict.

COPY is PostgreSQL's fastest way in, but it cannot skip rows that exist. Most writes
bring only new rows, so a writer first COPYs into the table itself (inside a savepoint);
when that hits a unique key a replay or a retry brought back, it rolls the savepoint back
and COPYs into a temporary staging table instead, from which one
``INSERT ... ON CONFLICT DO NOTHING`` drops the duplicates. While writes keep
conflicting (a replay in progress) it goes through staging directly, and returns to the
direct path after a staged write found nothing to drop.

When the database refuses a value itself (a NUL in text, an integer out of its column's
range: ``DataRejected``), the writer finds the refused rows by halving the write down to
single rows, each half in a savepoint of its own, writes every other row and names the
refused ones: k bad rows among n cost about 2k log2(n) extra COPYs, and none when all
rows are good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from streams.adapters.db import QUERY_ERRORS, query_error
from streams.errors import DataRejected

Row = tuple[object, ...]


@dataclass
class Written:
    #: Rows that are new in the table.
    added: int = 0
    #: (index in the rows given, the database's reason) of each row it refused.
    refused: list[tuple[int, str]] = field(default_factory=list)


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

    async def write(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> Written:
        """Write ``rows`` inside the caller's transaction, setting aside refused ones."""
        written = Written()
        if rows:
            await self._isolate(conn, rows, 0, written)
        return written

    async def _isolate(self, conn: asyncpg.Connection, rows: Sequence[Row], start: int,
                       written: Written) -> None:
        try:
            written.added += await self._attempt(conn, rows)
        except DataRejected as exc:
            if len(rows) == 1:
                written.refused.append((start, exc.detail))
                return
            half = len(rows) // 2
            await self._isolate(conn, rows[:half], start, written)
            await self._isolate(conn, rows[half:], start + half, written)

    async def _attempt(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
        """One write in a savepoint, so that a refused one leaves the transaction usable;
        the number of new rows."""
        try:
            if not self._conflicting:
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table(self.table, records=rows,
                                                         columns=self.columns)
                    return len(rows)
                except asyncpg.UniqueViolationError:
                    self._conflicting = True
            async with conn.transaction():
                added = await self._merge(conn, rows)
        except QUERY_ERRORS as exc:
            raise query_error(f"writing {self.table}", exc) from exc
        self._conflicting = added < len(rows)
        return added

    async def _merge(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
        await conn.execute(self._create)
        await conn.copy_records_to_table(self._staging, records=rows, columns=self.columns)
        status = await conn.execute(self._insert)
        return int(status.rsplit(" ", 1)[-1])
