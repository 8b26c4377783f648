"""Which insights exist: the analyst asks before it spends an AI call on a batch."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from streams.adapters.db import QUERY_ERRORS, query_error
from streams.core.models import insight_id_for

# The analyst's check before an AI call: one primary-key lookup.
_HAS_INSIGHT = "SELECT EXISTS (SELECT 1 FROM insights WHERE insight_id = $1 AND window_start = $2)"


class InsightIndex:
    """Whether ``insights`` already holds the insight of (batch, analyzer)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def exists(self, batch_id: str, analyzer: str, window_start: datetime) -> bool:
        try:
            return bool(await self._pool.fetchval(
                _HAS_INSIGHT, uuid.UUID(insight_id_for(batch_id, analyzer)), window_start))
        except QUERY_ERRORS as exc:
            raise query_error("insights table", exc) from exc
