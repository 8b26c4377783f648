"""The ``batches`` table as the record of seal decisions (asyncpg)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from streams.adapters.db import QUERY_ERRORS, query_error
from streams.core.batching import SealDecision
from streams.core.models import AnalysisRequest, Digest, SealReason

_INSERT = """
INSERT INTO batches (batch_id, source, topic, partition, first_offset, last_offset,
                     event_count, seal_reason, opened_at, sealed_at, first_event_at,
                     last_event_at, digest)
SELECT b.batch_id, b.source, b.topic, b.partition, b.first_offset, b.last_offset,
       b.event_count, b.seal_reason, b.opened_at, b.sealed_at, b.first_event_at,
       b.last_event_at, b.digest::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::bigint[],
            $7::int[], $8::text[], $9::timestamptz[], $10::timestamptz[],
            $11::timestamptz[], $12::timestamptz[], $13::text[])
     AS b(batch_id, source, topic, partition, first_offset, last_offset, event_count,
          seal_reason, opened_at, sealed_at, first_event_at, last_event_at, digest)
ON CONFLICT DO NOTHING
"""

_DECISIONS = """
SELECT source, first_offset, last_offset, seal_reason, opened_at, sealed_at
FROM batches
WHERE topic = $1 AND partition = $2 AND last_offset >= $3
ORDER BY first_offset
"""

_encode = msgspec.json.Encoder().encode


class BatchStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, requests: Sequence[AnalysisRequest]) -> None:
        """Insert sealed batches; a batch recorded before is left as it is."""
        if not requests:
            return
        columns: list[list[object]] = [[] for _ in range(13)]
        for r in requests:
            row = (r.batch_id, r.key, r.topic, r.partition, r.first_offset, r.last_offset,
                   r.event_count, r.seal_reason.value, r.opened_at, r.sealed_at,
                   r.first_event_at, r.last_event_at,
                   _encode(r.digest).decode())
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        try:
            await self._pool.execute(_INSERT, *columns)
        except QUERY_ERRORS as exc:
            raise query_error("batches table", exc) from exc

    async def decisions(self, topic: str, partition: int, start: int) -> list[SealDecision]:
        """Seal decisions on a partition that reach ``start`` or beyond."""
        try:
            rows = await self._pool.fetch(_DECISIONS, topic, partition, start)
        except QUERY_ERRORS as exc:
            raise query_error("batches table", exc) from exc
        return [
            SealDecision(
                key=row["source"],
                first_offset=row["first_offset"],
                last_offset=row["last_offset"],
                reason=SealReason(row["seal_reason"]),
                opened_at=row["opened_at"],
                sealed_at=row["sealed_at"],
            )
            for row in rows
        ]


_HISTORY = """
SELECT digest::text FROM batches
WHERE source = $1 AND first_event_at < $2
ORDER BY first_event_at DESC, batch_id
LIMIT $3
"""
_decode_digest = msgspec.json.Decoder(Digest).decode


class BatchHistory:
    """Digests of a source's earlier batches: the built-in analyzer's baseline."""

    def __init__(self, pool: asyncpg.Pool, limit: int = 50) -> None:
        self._pool = pool
        self._limit = limit

    async def before(self, source: str, until: datetime) -> list[Digest]:
        """Oldest first, the batches that started before ``until``."""
        try:
            rows = await self._pool.fetch(_HISTORY, source, until, self._limit)
        except QUERY_ERRORS as exc:
            raise query_error("batches table", exc) from exc
        return [_decode_digest(row[0]) for row in reversed(rows)]


# A batch that got its insight stays ANALYZED, whatever a late retry of it says.
_STATUS = """
UPDATE batches SET status = $3, updated_at = now()
WHERE batch_id = $1 AND first_event_at = $2 AND status <> 'ANALYZED' AND status <> $3
"""


class BatchStatus:
    """Moves a batch through SEALED -> ANALYZED, or FAILED / DEAD."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def set(self, batch_id: str, first_event_at: datetime, status: str) -> None:
        try:
            await self._pool.execute(_STATUS, batch_id, first_event_at, status)
        except QUERY_ERRORS as exc:
            raise query_error("batches table", exc) from exc
