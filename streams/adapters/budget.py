"""The AI budget shared by the whole deployment, kept in PostgreSQL.

Every worker takes from the same two token buckets (requests and tokens per minute),
each a row of ``ai_budget`` locked for the take, on the database's clock. No new
coordination service: the database the sinks write to anyway is the coordinator.
"""

from __future__ import annotations

import asyncpg

from streams.adapters.db import QUERY_ERRORS, query_error
from streams.core.ratelimit import bucket_state

# Burst allowance: one second of the per-minute rate, so that a full bucket plus its
# refill stays within the provider's per-minute limit in any minute (within 1/60).
BURST_SECONDS = 1.0

_LOCK = """
SELECT name, tokens, updated, extract(epoch FROM clock_timestamp())::float8 AS now
FROM ai_budget WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE
"""
_SEED = """
INSERT INTO ai_budget (name, tokens, updated)
SELECT unnest($1::text[]), unnest($2::float8[]), extract(epoch FROM clock_timestamp())
ON CONFLICT (name) DO NOTHING
"""
_STORE = "UPDATE ai_budget SET tokens = $2, updated = greatest(updated, $3) WHERE name = $1"


class GlobalBudget:
    """``reserve`` requests and tokens from the deployment-wide buckets."""

    def __init__(self, pool: asyncpg.Pool, requests_per_minute: int,
                 tokens_per_minute: int) -> None:
        self._pool = pool
        self._rates = {"requests": requests_per_minute / 60.0,
                       "tokens": tokens_per_minute / 60.0}
        self._capacity = {name: max(1.0, rate * BURST_SECONDS)
                          for name, rate in self._rates.items()}

    async def reserve(self, tokens: int) -> float:
        """Take one request and ``tokens`` tokens: 0.0 when granted, else the seconds to
        wait before asking again (nothing taken)."""
        wanted = {"requests": 1.0, "tokens": float(tokens)}
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(_LOCK, list(wanted))
                if len(rows) < len(wanted):
                    # First use of this database. Seeded inside the transaction that reads
                    # the rows: a seed remembered apart from it would outlive a rollback
                    # (a cancelled request) and leave the buckets missing for good.
                    names = list(self._capacity)
                    await conn.execute(_SEED, names, [self._capacity[n] for n in names])
                    rows = await conn.fetch(_LOCK, list(wanted))
                steps = {
                    row["name"]: bucket_state(row["tokens"], row["updated"],
                                              self._capacity[row["name"]],
                                              self._rates[row["name"]], row["now"],
                                              wanted[row["name"]])
                    for row in rows
                }
                wait = max(step[1] for step in steps.values())
                if wait > 0:
                    return wait
                now = rows[0]["now"]
                for name, (level, _wait) in steps.items():
                    await conn.execute(_STORE, name, level, now)
                return 0.0
        except QUERY_ERRORS as exc:
            raise query_error("AI budget", exc) from exc

    async def settle(self, reserved: int, used: int) -> None:
        """Give back tokens reserved but not used (or charge an overrun)."""
        if used == reserved:
            return
        try:
            await self._pool.execute(
                "UPDATE ai_budget SET tokens = least($2, tokens + $3) WHERE name = $1",
                "tokens", self._capacity["tokens"], float(reserved - used))
        except QUERY_ERRORS as exc:
            raise query_error("AI budget", exc) from exc


_SPENT = "SELECT coalesce(sum(usd), 0) FROM ai_spend WHERE day = (now() AT TIME ZONE 'UTC')::date"
_SPEND = """
INSERT INTO ai_spend (day, usd) VALUES ((now() AT TIME ZONE 'UTC')::date, $1)
ON CONFLICT (day) DO UPDATE SET usd = ai_spend.usd + EXCLUDED.usd
"""


class DailySpend:
    """What the deployment has spent on AI today (UTC), against a daily limit."""

    def __init__(self, pool: asyncpg.Pool, limit_usd: float | None) -> None:
        self._pool = pool
        self.limit_usd = limit_usd

    async def exhausted(self) -> bool:
        if self.limit_usd is None:
            return False
        try:
            spent = float(await self._pool.fetchval(_SPENT))
        except QUERY_ERRORS as exc:
            raise query_error("AI spend", exc) from exc
        return spent >= self.limit_usd

    async def add(self, usd: float) -> None:
        if usd <= 0:
            return
        try:
            await self._pool.execute(_SPEND, usd)
        except QUERY_ERRORS as exc:
            raise query_error("AI spend", exc) from exc
