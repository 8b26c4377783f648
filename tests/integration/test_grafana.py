"""Every query of the Grafana dashboards works on real data and real tools.

- SQL: each panel query and query variable, expanded as Grafana expands it (template
  variables, then the PostgreSQL macros), runs against a migrated database filled with
  seeded synthetic traffic and returns rows. The traffic goes through the project's own
  code: ``streams.commands.synthetic`` events, parsed by ``streams.core.schema``, batched and
  digested, analysed by the built-in analyzer, turned into rows by ``streams.core.rows``
  and ``streams.pipeline.sinks`` and written with ``CopyWriter``; no worker runs.
- PromQL: each expression (and each ``label_values`` selector) parses with promtool.

Variants per SQL query: the plain-PostgreSQL ``$__timeGroup`` form and the TimescaleDB
form (``time_bucket``; the datasource sets ``timescaledb: true``; a ``time_bucket``
function of the same signature stands in for TimescaleDB's on plain PostgreSQL), the
dashboards' default range (6 h, ``$__interval`` 1m, the per-minute aggregates) and a
7-day range (``$__interval`` 1h, the hourly aggregate); every variable on All (must show
rows), then each variable on one value at a time (Grafana's quoting of a single value),
tried in order until one shows rows. Multi-value and All variables are formatted as
Grafana formats them for SQL: quoted and comma-separated, for ``column IN ($var)``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio
import yaml

from streams.adapters.batch_store import BatchStore
from streams.adapters.copy import CopyWriter
from streams.adapters.db import migrate
from streams.commands.synthetic import TrafficGenerator
from streams.core import rows as core_rows
from streams.core.analysis import ANALYZER_VERSION, analyze, estimate_tokens
from streams.core.digest import summarize
from streams.core.models import (
    AIUsage,
    AnalysisRequest,
    Digest,
    ErrorRecord,
    Event,
    Insight,
    SealReason,
    UsageOutcome,
    batch_id_for,
    insight_id_for,
    usage_id_for,
)
from streams.core.pricing import cost_usd
from streams.core.prompt import analyzer_name
from streams.core.schema import parse
from streams.local.embedded import create_database, drop_database
from streams.pipeline.sinks import WRITERS, error_rows, insight_rows, performance_rows
from tests.unit.test_dashboards import (
    Query,
    all_queries,
    dashboard_files,
    expand_macros,
    expand_variables,
    label_values_selector,
    load_dashboard,
    prom_format,
    source,
    sql_format,
)

pytestmark = pytest.mark.integration

EVENTS = 4000
SOURCES = 6
SPAN = timedelta(hours=3)            # of traffic, ending two minutes before "now"
OUTAGE = (timedelta(minutes=100), timedelta(minutes=80))  # before now: every source fails
BATCH_MAX_EVENTS = 100
BATCH_MAX_AGE = timedelta(minutes=10)
PARTITIONS = 4
MODELS = ("gpt-4o-mini", "gpt-4o")

# The range and $__interval pairs the queries run with: the default, and a long one.
RANGES = {"6h": (timedelta(hours=6), "1m"), "7d": (timedelta(days=7), "1h")}

# On plain PostgreSQL, a stand-in for TimescaleDB's time_bucket(interval, timestamptz),
# which the macro engine's TimescaleDB form calls (buckets aligned on the epoch: the same
# as TimescaleDB's for minutes and hours). A TimescaleDB server has its own.
TIME_BUCKET = """
DO $do$
BEGIN
    IF to_regprocedure('time_bucket(interval, timestamptz)') IS NULL THEN
        CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz)
        RETURNS timestamptz LANGUAGE sql IMMUTABLE STRICT AS $fn$
            SELECT to_timestamp(floor(extract(epoch FROM ts) / extract(epoch FROM bucket_width))
                                * extract(epoch FROM bucket_width))
        $fn$;
    END IF;
END
$do$
"""


@dataclass(frozen=True)
class Seeded:
    dsn: str
    now: datetime


# -- sample traffic ---------------------------------------------------------------------

def _events(now: datetime) -> list[Event]:
    """Seeded synthetic traffic over SPAN, with an outage (503s, slow) on every source."""
    start = now - timedelta(minutes=2) - SPAN
    step = SPAN / EVENTS
    tick = iter(range(EVENTS))
    generator = TrafficGenerator(SOURCES, seed=20261125, now=lambda: start + step * next(tick))
    outage_from, outage_to = now - OUTAGE[0], now - OUTAGE[1]
    events = []
    for key, value in generator.batch(EVENTS):
        event = parse(key, value, None, now=now)
        assert isinstance(event, Event), event
        http = event.http
        if outage_from <= event.timestamp < outage_to and http is not None \
                and http.duration_ms is not None:
            event = msgspec.structs.replace(
                event, severity="error",
                http=msgspec.structs.replace(http, status_code=503,
                                             duration_ms=http.duration_ms * 15 + 2000))
        events.append(event)
    return events


def _batches(events: Sequence[Event]) -> list[tuple[AnalysisRequest, list[Event]]]:
    """Per-source batches sealed at BATCH_MAX_EVENTS or BATCH_MAX_AGE of event time, on
    partitions chosen by key (sources share partitions, so their offsets interleave)."""
    open_: dict[str, tuple[int, list[int], list[Event]]] = {}
    next_offset = [0] * PARTITIONS
    sealed = []

    def seal(key: str, reason: SealReason) -> None:
        partition, offsets, batch = open_.pop(key)
        stamps = [e.timestamp for e in batch]
        sealed.append((AnalysisRequest(
            batch_id=batch_id_for("events", partition, offsets[0], key), key=key,
            topic="events", partition=partition, first_offset=offsets[0],
            last_offset=offsets[-1], event_count=len(batch), seal_reason=reason,
            opened_at=min(stamps), sealed_at=max(stamps) + timedelta(seconds=1),
            first_event_at=min(stamps), last_event_at=max(stamps), digest=summarize(batch),
            event_ids=[e.event_id for e in batch]), batch))

    for event in events:
        key = event.source
        if key in open_ and event.timestamp - open_[key][2][0].timestamp >= BATCH_MAX_AGE:
            seal(key, SealReason.AGE)
        partition = sum(key.encode()) % PARTITIONS
        _, offsets, batch = open_.setdefault(key, (partition, [], []))
        offsets.append(next_offset[partition])
        next_offset[partition] += 1
        batch.append(event)
        if len(batch) >= BATCH_MAX_EVENTS:
            seal(key, SealReason.COUNT)
    for key in list(open_):
        seal(key, SealReason.SHUTDOWN)
    sealed.sort(key=lambda item: item[0].sealed_at)
    return sealed


def _usage(request: AnalysisRequest, model: str, attempt: int, outcome: UsageOutcome,
           error: str | None = None) -> AIUsage:
    ok = outcome is UsageOutcome.OK
    prompt = estimate_tokens(msgspec.json.encode(request.digest).decode()) + 400 if ok else 0
    completion = 120 + request.event_count if ok else 0
    return AIUsage(
        request_id=usage_id_for(request.batch_id, analyzer_name(model), attempt),
        batch_id=request.batch_id, analyzer=analyzer_name(model), model=model,
        attempt=attempt, outcome=outcome, prompt_tokens=prompt, completion_tokens=completion,
        cost_usd=cost_usd(model, prompt, completion),
        latency_ms=800.0 + 37 * request.event_count + 400 * attempt,
        at=request.sealed_at + timedelta(seconds=2 * attempt), error=error)


def _analysed(batches: Sequence[tuple[AnalysisRequest, list[Event]]]) -> tuple[
        list[bytes], list[ErrorRecord], list[str]]:
    """Insights (as the ``insights`` topic carries them), the give-ups as error records,
    and the ids of the batches given up. Every third batch is the built-in analyzer's;
    the others are 'AI' calls with retries and the odd failure, priced as the analyst
    prices them (the analysis itself is the built-in one)."""
    history: dict[str, list[Digest]] = {}
    insights: list[bytes] = []
    give_ups: list[ErrorRecord] = []
    dead: list[str] = []
    for n, (request, _) in enumerate(batches):
        analysis = analyze(request, history.get(request.key, []))
        history.setdefault(request.key, []).append(request.digest)
        usage: list[AIUsage] = []
        analyzer = ANALYZER_VERSION
        if n % 3:
            model = MODELS[n % 2]
            analyzer = analyzer_name(model)
            if n % 17 == 1:
                usage = [_usage(request, model, a, UsageOutcome.SERVER_ERROR, "HTTP 500")
                         for a in (1, 2, 3)]
                give_ups.append(ErrorRecord(
                    time=request.sealed_at, source=request.key, type="ai_failed",
                    message="analysis failed after 3 attempts: HTTP 500",
                    batch_id=request.batch_id, usage=usage))
                dead.append(request.batch_id)
                continue
            if n % 5 == 0:
                usage.append(_usage(request, model, 1, UsageOutcome.RATE_LIMITED, "HTTP 429"))
            elif n % 7 == 0:
                usage.append(_usage(request, model, 1, UsageOutcome.TIMEOUT, "timed out"))
            usage.append(_usage(request, model, len(usage) + 1, UsageOutcome.OK))
        last = usage[-1] if usage else None
        insights.append(msgspec.json.encode(Insight(
            insight_id=insight_id_for(request.batch_id, analyzer), batch_id=request.batch_id,
            source=request.key, window_start=request.first_event_at,
            window_end=request.last_event_at, analysis=analysis, analyzer=analyzer,
            prompt_tokens=last.prompt_tokens if last else 0,
            completion_tokens=last.completion_tokens if last else 0,
            cost_usd=sum(u.cost_usd for u in usage),
            latency_ms=last.latency_ms if last else 2.0,
            created_at=(last.at if last else request.sealed_at) + timedelta(seconds=1),
            usage=usage)))
    return insights, give_ups, dead


def _table_rows(messages: Iterable[bytes], rows_of: Any) -> dict[str, list[tuple[Any, ...]]]:
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for value in messages:
        for table, row in rows_of(value):
            tables.setdefault(table, []).append(row)
    return tables


async def _fill(dsn: str, now: datetime) -> None:
    events = _events(now)
    batches = _batches(events)
    batch_of = {e.event_id: r.batch_id for r, batch in batches for e in batch}
    insights, give_ups, dead = _analysed(batches)
    # As the batcher sends them: JSON arrays of rows on ``performance`` and ``errors``.
    performance = [core_rows.performance_row(e, not core_rows.is_error(e)) for e in events
                   if e.http is not None and e.http.duration_ms is not None]
    errors = [core_rows.error_record(e, batch_of[e.event_id]) for e in events
              if core_rows.is_error(e)]
    encode = msgspec.json.encode
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for part in (
        _table_rows((encode(c) for c in core_rows.chunks(performance)), performance_rows),
        _table_rows((encode(c) for c in core_rows.chunks([*errors, *give_ups])), error_rows),
        _table_rows(insights, insight_rows),
    ):
        for table, rows in part.items():
            tables.setdefault(table, []).extend(rows)

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await BatchStore(pool).record([request for request, _ in batches])
        async with pool.acquire() as conn, conn.transaction():
            for table, rows in tables.items():
                # A writer of our own: WRITERS' instances keep state between writes.
                writer = CopyWriter(table, WRITERS[table].columns)
                assert (await writer.write(conn, rows)).added == len(rows), table
            await conn.execute(
                "UPDATE batches SET status = CASE WHEN batch_id = ANY($1::uuid[]) "
                "THEN 'DEAD' ELSE 'ANALYZED' END", dead)
            await conn.execute(TIME_BUCKET)
    finally:
        await pool.close()


@pytest_asyncio.fixture(scope="module")
async def seeded(postgres_admin_dsn: str) -> AsyncIterator[Seeded]:
    """One migrated database with three hours of traffic for the whole module."""
    name = f"streamsight_test_{uuid.uuid4().hex[:12]}"
    dsn = create_database(postgres_admin_dsn, name)
    try:
        await migrate(dsn)
        now = datetime.now(UTC).replace(microsecond=0)
        await _fill(dsn, now)
        yield Seeded(dsn, now)
    finally:
        drop_database(postgres_admin_dsn, name)


# -- running the dashboards' SQL --------------------------------------------------------

@dataclass(frozen=True)
class Expansion:
    time_from: datetime
    time_to: datetime
    interval: str
    timescaledb: bool

    def sql(self, text: str, values: Mapping[str, Sequence[str]]) -> str:
        formatted = {name: sql_format(v) for name, v in values.items()}
        formatted.update(__interval=self.interval, __rate_interval=self.interval)
        return expand_macros(expand_variables(text, formatted), self.time_from, self.time_to,
                             timescaledb=self.timescaledb)


# Variable values per (dashboard, expansion, fixed values): the same for every query of a
# dashboard, and the data does not change within the module.
_OPTIONS: dict[tuple[str, Expansion, tuple[tuple[str, str], ...]], dict[str, list[str]]] = {}


async def _variable_options(conn: asyncpg.Connection, dashboard_name: str,
                            expansion: Expansion,
                            fixed: Mapping[str, str]) -> dict[str, list[str]]:
    """Each variable's values in dashboard order, as Grafana resolves them (a variable's
    query sees the variables before it): ``fixed`` ones take that single value, the
    others All (every value of their query)."""
    key = (dashboard_name, expansion, tuple(sorted(fixed.items())))
    if key in _OPTIONS:
        return _OPTIONS[key]
    dashboard = load_dashboard(_dashboard_path(dashboard_name))
    values: dict[str, list[str]] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable["type"] == "datasource":
            continue
        if variable["type"] == "custom":
            options = [v.strip() for v in variable["query"].split(",")]
        else:
            assert source(variable["datasource"]) == "timescaledb", name
            rows = await conn.fetch(expansion.sql(variable["query"], values))
            options = [str(row[0]) for row in rows]
        assert options, f"variable ${name} has no values"
        values[name] = [fixed[name]] if name in fixed else options
    _OPTIONS[key] = values
    return values


def _expansions(now: datetime) -> dict[str, Expansion]:
    return {f"{span}/{'timescaledb' if tsdb else 'postgres'}":
            Expansion(now - length, now, interval, tsdb)
            for span, (length, interval) in RANGES.items() for tsdb in (False, True)}


def _check_columns(query: Query, record: asyncpg.Record) -> None:
    if query.fmt != "time_series":
        return
    columns = list(record.keys())
    assert "time" in columns, f"{query.id}: a time series needs a time column: {columns}"
    numeric = [c for c in columns if c not in ("time", "metric")
               and isinstance(record[c], int | float | Decimal | None)]
    assert numeric, f"{query.id}: no value column in {columns}"


SQL_QUERIES = all_queries("timescaledb")


@pytest.mark.parametrize("query", SQL_QUERIES, ids=lambda q: q.id)
async def test_sql_query_returns_rows(seeded: Seeded, query: Query) -> None:
    conn = await asyncpg.connect(seeded.dsn)
    try:
        for label, expansion in _expansions(seeded.now).items():
            every = await _variable_options(conn, query.dashboard, expansion, {})
            # Every variable on All.
            rows = await _run(conn, query, expansion, every, label)
            assert rows, f"{query.id} [{label}, All]: no rows\n{expansion.sql(query.text, every)}"
            _check_columns(query, rows[0])
            # Each variable on a single value (in the order Grafana lists them) that shows
            # rows, the others on All.
            for name, options in every.items():
                if query.where == f"variable ${name}":
                    continue
                for option in options:
                    values = await _variable_options(conn, query.dashboard, expansion,
                                                     {name: option})
                    if await _run(conn, query, expansion, values, label):
                        break
                else:
                    raise AssertionError(f"{query.id} [{label}]: no rows for any one ${name}")
    finally:
        await conn.close()


def _dashboard_path(name: str) -> Path:
    [path] = [p for p in dashboard_files() if p.name == name]
    return path


# Results by expanded SQL: the plain and TimescaleDB forms of a query without $__timeGroup
# are the same statement.
_RESULTS: dict[str, list[asyncpg.Record]] = {}


async def _run(conn: asyncpg.Connection, query: Query, expansion: Expansion,
               values: Mapping[str, Sequence[str]], label: str) -> list[asyncpg.Record]:
    sql = expansion.sql(query.text, values)
    if sql not in _RESULTS:
        try:
            _RESULTS[sql] = list(await conn.fetch(sql))
        except asyncpg.PostgresError as exc:
            raise AssertionError(f"{query.id} [{label}]: {exc}\n{sql}") from exc
    return _RESULTS[sql]


async def test_the_sample_data_covers_every_table(seeded: Seeded) -> None:
    conn = await asyncpg.connect(seeded.dsn)
    try:
        counts = {table: await conn.fetchval(f"SELECT count(*) FROM {table}")
                  for table in ("batches", "api_performance", "error_events", "insights",
                                "ai_usage", "api_performance_1m", "api_performance_1h",
                                "error_events_1m")}
        severities = {r[0] for r in await conn.fetch("SELECT DISTINCT severity FROM insights")}
        outcomes = {r[0] for r in await conn.fetch("SELECT DISTINCT outcome FROM ai_usage")}
    finally:
        await conn.close()
    assert all(counts.values()), counts
    assert severities == {"info", "warning", "critical"}
    assert {"ok", "rate_limited", "server_error"} <= outcomes


# -- PromQL -----------------------------------------------------------------------------

# Grafana's interval variables for the parse, and a sample for each template variable.
PROM_GLOBALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h",
                "__range_s": "3600", "__interval_ms": "60000"}


def _prom_variants(query: Query) -> list[str]:
    text = query.text
    if query.fmt == "variable":
        selector = label_values_selector(text)
        assert selector, query.id
        text = selector
    names = {v["name"]: v for v in
             load_dashboard(_dashboard_path(query.dashboard))["templating"]["list"]}
    single = {name: prom_format([f"sample-{name}"]) for name in names}
    every = {name: (names[name].get("allValue")
                    or prom_format([f"sample-{name}", f"other.{name}"])) for name in names}
    return [expand_variables(text, {**PROM_GLOBALS, **values}) for values in (single, every)]


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, ("promtool is not installed: apt-get install prometheus "
                      "(the Debian package ships it)")
    exprs = [(query, expr) for query in all_queries("prometheus")
             for expr in _prom_variants(query)]
    assert len(exprs) > 60
    rules = {"groups": [{"name": "grafana-dashboards", "rules": [
        {"record": f"dashboard:expr_{n}", "expr": expr} for n, (_, expr) in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        # Name the dashboard queries behind the rules promtool refused.
        refused = {int(n) for n in re.findall(r'"dashboard:expr_(\d+)"', output)}
        culprits = [f"{q.id}: {e}" for n, (q, e) in enumerate(exprs) if n in refused]
        raise AssertionError(output + "\n" + "\n".join(culprits))
    assert f"SUCCESS: {len(exprs)} rules found" in output, output
