"""Re-analysis: send stored batches back to ``analysis-requests`` for the running analysts.

The analyzer that will answer is the one the analyst workers run with: the built-in one,
or ``openai:<OPENAI_MODEL>/<PROMPT_VERSION>`` when OPENAI_API_KEY is set. The insight id
is uuid5(batch_id, analyzer), so a new model or prompt version lands beside the old
insights, and the same version twice adds nothing. ``plan`` works out which batches lack an
insight from that analyzer and what sending them may cost; ``send`` rebuilds their
requests from the ``batches`` rows and publishes them (key = source).

Cost estimate, per request sent: the average prompt and completion tokens of the model's
successful calls in ``ai_usage`` over the last 30 days, priced with the same table as the
analyst (``OPENAI_PRICES`` over the built-in one). With no such calls yet it falls back to
the digest size: prompt tokens = (system prompt + digest JSON characters) / 4, at most the
prompt cap, plus ``DEFAULT_COMPLETION_TOKENS`` for the answer. Retries are not included.
The built-in analyzer costs nothing.

The ``batches`` table does not keep event ids, so rebuilt requests carry none (nothing
downstream of the batcher reads them).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams import config
from streams.adapters import db
from streams.adapters.db import QUERY_ERRORS, query_error
from streams.core import times
from streams.core.analysis import ANALYZER_VERSION
from streams.core.models import AnalysisRequest, Digest, SealReason, insight_id_for
from streams.core.pricing import cost_usd
from streams.core.prompt import MAX_PROMPT_TOKENS, SYSTEM_PROMPT, analyzer_name
from streams.errors import PermanentError, RetryableError, StreamsightError

# Tokens assumed for one answer when ai_usage has no successful call of the model yet:
# the six-key analysis is usually a few hundred tokens; the cap is MAX_COMPLETION_TOKENS.
DEFAULT_COMPLETION_TOKENS = 500
# ai_usage rows that inform the estimate.
USAGE_WINDOW_DAYS = 30
# Batches read per query while sending.
PAGE = 500

_decode_digest = msgspec.json.Decoder(Digest).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Target:
    """The analyzer that will answer: its name, and its model (None: the built-in one)."""

    analyzer: str
    model: str | None


def target(settings: config.Settings) -> Target:
    """The analyzer an analyst worker with these settings runs (see agents/analyst.py)."""
    if settings.openai_api_key is not None:
        return Target(analyzer_name(settings.openai_model), settings.openai_model)
    return Target(ANALYZER_VERSION, None)


@dataclass(frozen=True)
class Estimate:
    calls: int
    prompt_tokens: int  # in total
    completion_tokens: int  # in total
    cost_usd: float
    basis: str
    priced: bool = True

    def line(self) -> str:
        if not self.calls:
            return f"estimated cost: $0.00 (nothing to send; {self.basis})"
        price = f"${self.cost_usd:.6f}" if self.priced else "unknown (model not in the price table)"
        calls = f"{self.calls} call" + ("s" if self.calls != 1 else "")
        return (f"estimated cost: {price} for {calls}, "
                f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens "
                f"({self.basis})")


@dataclass(frozen=True)
class Plan:
    target: Target
    selected: int
    already: int
    # (batch_id, first_event_at) of the batches to send, oldest first.
    keys: list[tuple[uuid.UUID, datetime]]
    statuses: dict[str, int]
    estimate: Estimate
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def to_send(self) -> int:
        return len(self.keys)


_SELECT = """
SELECT b.batch_id, b.first_event_at, b.source, b.status, length(b.digest::text) AS chars,
       EXISTS (SELECT 1 FROM insights i
               WHERE i.batch_id = b.batch_id AND i.analyzer = $4) AS analysed
FROM batches b
WHERE b.first_event_at >= $1
  AND ($2::timestamptz IS NULL OR b.first_event_at < $2)
  AND ($3::text IS NULL OR b.source = $3)
ORDER BY b.first_event_at, b.batch_id
"""

_SELECT_ONE = """
SELECT b.batch_id, b.first_event_at, b.source, b.status, length(b.digest::text) AS chars,
       EXISTS (SELECT 1 FROM insights i
               WHERE i.batch_id = b.batch_id AND i.analyzer = $2) AS analysed
FROM batches b
WHERE b.batch_id = $1
"""

_USAGE = f"""
SELECT count(*) AS calls, coalesce(avg(prompt_tokens), 0) AS prompt,
       coalesce(avg(completion_tokens), 0) AS completion
FROM ai_usage
WHERE model = $1 AND outcome = 'ok' AND at > now() - interval '{USAGE_WINDOW_DAYS} days'
"""

_ROWS = """
SELECT b.batch_id, b.source, b.topic, b.partition, b.first_offset, b.last_offset,
       b.event_count, b.seal_reason, b.opened_at, b.sealed_at, b.first_event_at,
       b.last_event_at, b.digest::text AS digest
FROM batches b
JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(batch_id, first_event_at)
  ON b.batch_id = k.batch_id AND b.first_event_at = k.first_event_at
ORDER BY b.first_event_at, b.batch_id
"""

async def _usage_average(conn: asyncpg.Connection, model: str) -> tuple[int, float, float]:
    row = await conn.fetchrow(_USAGE, model)
    assert row is not None
    return int(row["calls"]), float(row["prompt"]), float(row["completion"])


def _digest_prompt_tokens(chars: int) -> int:
    return min(MAX_PROMPT_TOKENS, (len(SYSTEM_PROMPT) + chars) // 4 + 8)


async def _estimate(
    conn: asyncpg.Connection, tgt: Target, chars: Sequence[int],
    prices: Mapping[str, tuple[float, float]],
) -> Estimate:
    calls = len(chars)
    if tgt.model is None:
        return Estimate(calls, 0, 0, 0.0, "built-in analyzer: free")
    seen, prompt_avg, completion_avg = await _usage_average(conn, tgt.model)
    if seen:
        prompt = round(prompt_avg * calls)
        completion = round(completion_avg * calls)
        basis = (f"average {prompt_avg:.0f} + {completion_avg:.0f} tokens of {seen} successful "
                 f"{tgt.model} calls in ai_usage, last {USAGE_WINDOW_DAYS} days")
    else:
        prompt = sum(_digest_prompt_tokens(c) for c in chars)
        completion = DEFAULT_COMPLETION_TOKENS * calls
        basis = (f"no {tgt.model} calls in ai_usage yet: prompt from the digest size, "
                 f"{DEFAULT_COMPLETION_TOKENS} completion tokens a call")
    priced = tgt.model in prices or cost_usd(tgt.model, 1_000_000, 0, prices) > 0
    return Estimate(calls, prompt, completion, cost_usd(tgt.model, prompt, completion, prices),
                    basis, priced)


async def _build_plan(conn: asyncpg.Connection, tgt: Target, rows: Sequence[asyncpg.Record],
                      prices: Mapping[str, tuple[float, float]]) -> Plan:
    todo = [r for r in rows if not r["analysed"]]
    statuses: dict[str, int] = {}
    sources: dict[str, int] = {}
    for r in todo:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    estimate = await _estimate(conn, tgt, [int(r["chars"]) for r in todo], prices)
    keys = [(r["batch_id"], r["first_event_at"]) for r in todo]
    return Plan(tgt, len(rows), len(rows) - len(todo), keys, statuses, estimate, sources)


async def plan(
    dsn: str, tgt: Target, since: datetime, until: datetime | None, source: str | None,
    prices: Mapping[str, tuple[float, float]],
) -> Plan:
    """The stored batches with first_event_at in [since, until) (and of ``source``) that
    have no insight from ``tgt`` yet, and what analysing them may cost."""
    if until is not None and until <= since:
        raise PermanentError("--until must be after --since")
    pool = await db.connect(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            try:
                rows = await conn.fetch(_SELECT, since, until, source, tgt.analyzer)
                return await _build_plan(conn, tgt, rows, prices)
            except QUERY_ERRORS as exc:
                raise query_error("batches table", exc) from exc
    finally:
        await pool.close()


async def plan_one(dsn: str, tgt: Target, batch_id: str,
                   prices: Mapping[str, tuple[float, float]]) -> tuple[Plan, str]:
    """The plan for one batch (empty if it has an insight from ``tgt``), and its source."""
    try:
        key = uuid.UUID(batch_id)
    except ValueError:
        raise PermanentError(f"--batch-id: not a UUID: {batch_id!r}") from None
    pool = await db.connect(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            try:
                rows = await conn.fetch(_SELECT_ONE, key, tgt.analyzer)
                if not rows:
                    raise PermanentError(f"no batch {key} in the batches table")
                return await _build_plan(conn, tgt, rows, prices), str(rows[0]["source"])
            except QUERY_ERRORS as exc:
                raise query_error("batches table", exc) from exc
    finally:
        await pool.close()


def request_from_row(row: Mapping[str, Any]) -> AnalysisRequest:
    """The AnalysisRequest the batcher published for this ``batches`` row (no event ids)."""
    return AnalysisRequest(
        batch_id=str(row["batch_id"]),
        key=str(row["source"]),
        topic=str(row["topic"]),
        partition=int(row["partition"]),
        first_offset=int(row["first_offset"]),
        last_offset=int(row["last_offset"]),
        event_count=int(row["event_count"]),
        seal_reason=SealReason(row["seal_reason"]),
        opened_at=row["opened_at"],
        sealed_at=row["sealed_at"],
        first_event_at=row["first_event_at"],
        last_event_at=row["last_event_at"],
        digest=_decode_digest(str(row["digest"])),
        event_ids=[],
    )


async def send(dsn: str, bootstrap: str, topic: str,
               keys: Sequence[tuple[uuid.UUID, datetime]]) -> int:
    """Publish the requests of these batches to ``topic`` (acks=all); returns
    how many the broker acknowledged (batches deleted since the plan are not sent)."""
    if not keys:
        return 0
    pool = await db.connect(dsn, min_size=1, max_size=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id="streamsight-reanalyze",
                                acks="all", linger_ms=5)
    sent = 0
    try:
        try:
            await producer.start()
        except KafkaError as exc:
            raise RetryableError(f"cannot start a Kafka producer at {bootstrap}: {exc}") from None
        for start in range(0, len(keys), PAGE):
            page = keys[start:start + PAGE]
            try:
                rows = await pool.fetch(_ROWS, [k[0] for k in page], [k[1] for k in page])
            except QUERY_ERRORS as exc:
                raise query_error("batches table", exc) from exc
            try:
                futures = [
                    await producer.send(topic,
                                        _encode(request_from_row(row)),
                                        key=str(row["source"]).encode())
                    for row in rows
                ]
                await asyncio.gather(*futures)
            except KafkaError as exc:
                raise StreamsightError(
                    f"sending to {topic} failed after {sent} "
                    f"requests: {exc}") from None
            sent += len(rows)
    finally:
        await producer.stop()
        await pool.close()
    return sent


def _describe(plan_: Plan) -> list[str]:
    tgt = plan_.target
    model = f"model {tgt.model}" if tgt.model else "no AI calls"
    lines = [f"analyzer: {tgt.analyzer} ({model}; from this shell's settings: the analyst "
             "workers must run with the same OPENAI_API_KEY / OPENAI_MODEL)"]
    if plan_.keys:
        sources = ", ".join(f"{s} {n}" for s, n in sorted(plan_.sources.items()))
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(plan_.statuses.items()))
        lines.append(f"by source: {sources}; by status: {statuses}")
    lines.append(plan_.estimate.line())
    return lines


def run_reanalyze(
    settings: config.Settings, since: str, until: str | None, source: str | None,
    yes: bool, dry_run: bool,
) -> None:
    """``streamsight reanalyze``: plan, show, confirm, send, count."""
    import typer

    from streams.adapters.openai import load_prices

    now = datetime.now(UTC)
    start = times.moment(since, "--since", now)
    end = times.moment(until, "--until", now) if until else None
    tgt = target(settings)
    plan_ = asyncio.run(plan(settings.database_url, tgt, start, end, source,
                             load_prices(settings.openai_prices)))
    print(f"batches selected: {plan_.selected}, already analysed by {tgt.analyzer}: "
          f"{plan_.already}, to send: {plan_.to_send}")
    for line in _describe(plan_):
        print(line)
    if dry_run:
        print("dry run: nothing sent")
        return
    if not plan_.keys:
        print(f"sent 0 analysis requests to {settings.topics.analysis_requests}")
        return
    if not yes:
        typer.confirm(f"send {plan_.to_send} analysis requests to "
                      f"{settings.topics.analysis_requests}?", abort=True)
    sent = asyncio.run(send(settings.database_url, settings.kafka_bootstrap_servers,
                           settings.topics.analysis_requests, plan_.keys))
    print(f"sent {sent} analysis requests to {settings.topics.analysis_requests} "
          f"({plan_.to_send - sent} no longer stored), skipped {plan_.already} already "
          f"analysed by {tgt.analyzer}")


def run_analyze(settings: config.Settings, batch_id: str) -> None:
    """``streamsight analyze --batch-id``: this batch's request to the analysts, now."""
    from streams.adapters.openai import load_prices

    tgt = target(settings)
    plan_, source = asyncio.run(plan_one(settings.database_url, tgt, batch_id,
                                         load_prices(settings.openai_prices)))
    insight_id = insight_id_for(str(uuid.UUID(batch_id)), tgt.analyzer)
    if not plan_.keys:
        print(f"batch {batch_id} already has an insight from {tgt.analyzer} "
              f"(insight {insight_id}): nothing sent")
        return
    for line in _describe(plan_):
        print(line)
    sent = asyncio.run(send(settings.database_url, settings.kafka_bootstrap_servers,
                           settings.topics.analysis_requests, plan_.keys))
    if not sent:
        raise PermanentError(f"batch {batch_id} is no longer stored: nothing sent")
    print(f"sent the analysis request of batch {batch_id} (source {source}) to "
          f"{settings.topics.analysis_requests}: insight {insight_id} will follow")
