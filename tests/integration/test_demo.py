"""`streamsight demo` end to end: embedded broker, real PostgreSQL, a worker subprocess.

Runs the command the way a user (or CI) does, bounded by --duration, and checks that its
output shows sealed batches, an insight for each of them (built-in analyzer: no
OPENAI_API_KEY reaches the demo) and a summary whose numbers add up and agree with the
tables the demo's worker filled (batches, insights, api_performance, error_events,
ai_usage), read again here after the demo has finished.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agents.registry import BUILT_IN
from streams.local.embedded import drop_database, dsn_for_database

pytestmark = pytest.mark.integration

STREAMSIGHT = Path(sys.executable).parent / "streamsight"
REPO = Path(__file__).resolve().parents[2]

BATCH_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\s+(?P<source>\S+)\s+(?P<events>\d+)\s+(?P<reason>count|age|shutdown|manual)"
    r"\s+\d+\s+(?:[\d.]+|-)\s+[0-9a-f]{8}$",
    re.MULTILINE,
)
INSIGHT_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\s+(?P<source>\S+)\s+(?P<severity>info|warning|critical)\s+(?P<summary>\S.*)$",
    re.MULTILINE,
)
SOURCE_LINE = re.compile(
    r"^    (?P<source>\S+)\s+(?P<requests>[\d,]+)\s+(?P<error_pct>[\d.]+)%"
    r"\s+(?P<p50>[\d.]+)\s+(?P<p95>[\d.]+)$",
    re.MULTILINE,
)


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in the demo output:\n{text}"
    return int(match.group(1).replace(",", ""))


def counts(text: str) -> dict[str, int]:
    """``"a 1, b 2"`` as {"a": 1, "b": 2}."""
    pairs = (item.rsplit(" ", 1) for item in text.split(", ") if item)
    return {name: int(n.replace(",", "")) for name, n in pairs}


async def read_tables(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "statuses": {
                r["status"]: r["n"]
                for r in await conn.fetch("SELECT status, count(*) AS n FROM batches GROUP BY 1")
            },
            "reasons": {
                r["seal_reason"]: r["n"]
                for r in await conn.fetch(
                    "SELECT seal_reason, count(*) AS n FROM batches GROUP BY 1"
                )
            },
            "severities": {
                r["severity"]: r["n"]
                for r in await conn.fetch("SELECT severity, count(*) AS n FROM insights GROUP BY 1")
            },
            "analyzers": await conn.fetch("SELECT DISTINCT analyzer FROM insights"),
            "performance": await conn.fetchval("SELECT count(*) FROM api_performance"),
            "by_source": {
                r["source"]: r
                for r in await conn.fetch(
                    "SELECT source, count(*) AS requests,"
                    " count(*) FILTER (WHERE NOT success) AS errors,"
                    " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,"
                    " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95"
                    " FROM api_performance GROUP BY source"
                )
            },
            "error_rows": await conn.fetchval("SELECT count(*) FROM error_events"),
            "error_types": [
                (r["type"], r["n"])
                for r in await conn.fetch(
                    "SELECT type, count(*) AS n FROM error_events GROUP BY type"
                    " ORDER BY n DESC, type"
                )
            ],
            "ai_usage": await conn.fetchval("SELECT count(*) FROM ai_usage"),
        }
    finally:
        await conn.close()


@pytest.fixture
def demo_database(postgres_admin_dsn: str) -> Iterator[str]:
    name = f"streamsight_demo_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        drop_database(postgres_admin_dsn, name)


@pytest.mark.parametrize("broker", ["tansu", "kafka"])
def test_demo_seals_batches_and_accounts_for_every_event(
    tmp_path: Path, demo_database: str, postgres_admin_dsn: str, broker: str
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("KAFKA_", "DATABASE_", "BATCH_", "APP_", "LOG_", "CONSUMER_", "OPENAI_", "AI_")
        )
    }
    env.update(CI="true", TERM="dumb", COLUMNS="120", NO_COLOR="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [
            str(STREAMSIGHT),
            "demo",
            "--events",
            "600",
            "--sources",
            "4",
            "--batch-age",
            "3",
            "--seed",
            "7",
            "--invalid-ratio",
            "0.05",
            "--duration",
            "40",
            "--database",
            demo_database,
            "--run-dir",
            str(tmp_path / "run"),
            # The server the suite was given, TimescaleDB say; not the demo's default.
            "--admin-dsn",
            postgres_admin_dsn,
            "--broker",
            broker,
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"

    batches = [m.groupdict() for m in BATCH_LINE.finditer(out)]
    assert batches, f"no sealed batch lines:\n{out}"
    assert 1 <= len({b["source"] for b in batches}) <= 4, out
    assert any(b["reason"] == "count" for b in batches), out
    assert all(int(b["events"]) <= 100 for b in batches), out

    produced = number(r"^produced ([\d,]+)/[\d,]+ events", out)
    assert produced == 600
    batched = number(r"^\s+events batched\s+([\d,]+)", out)
    dead = number(r"^\s+dead-lettered\s+([\d,]+)", out)
    total_batches = number(r"^\s+batches\s+([\d,]+)", out)
    assert batched + dead == produced, out
    assert dead > 0, "5% invalid traffic must reach dead-letter"
    # The summary reads the batches table; the lines come from analysis-requests.
    assert total_batches == len(batches), out
    assert sum(int(b["events"]) for b in batches) == batched, out
    assert re.search(
        rf"{batched:,} batched \+ {dead:,} dead-lettered = {produced:,} of {produced:,} "
        r"produced: all accounted for",
        out,
    ), out

    # The built-in analyzer writes one insight per sealed batch, printed as it arrives.
    assert "analyst: built-in statistical analyzer builtin/1" in out, out
    insights = [m.groupdict() for m in INSIGHT_LINE.finditer(out)]
    assert len(insights) == len(batches), out
    assert {i["source"] for i in insights} == {b["source"] for b in batches}, out
    # Summaries are cut to the terminal width (COLUMNS=120).
    assert all(len(m.group(0)) <= 120 for m in INSIGHT_LINE.finditer(out)), out
    insight_total = number(r"^\s+insights\s+([\d,]+)", out)
    assert insight_total == total_batches, out
    severities = re.search(
        r"^\s+insights\s+[\d,]+\s+\(info (\d+), warning (\d+), critical (\d+)\) by builtin/1$",
        out,
        re.MULTILINE,
    )
    assert severities, out
    assert sum(int(n) for n in severities.groups()) == insight_total, out
    assert f"{total_batches:,} sealed batches seen: every one has its insight" in out, out
    assert "worker stopped (exit code 0" in out, out
    assert "broker stopped" in out, out
    # The worker's logs go to the run directory, not the terminal, and say what it did.
    worker_log = (tmp_path / "run" / "worker.log").read_text()
    assert "fetch.assigned" in worker_log, worker_log[-2000:]
    assert not (REPO / "demo-data").exists()

    # The worker runs every agent, the sinks included.
    assert f"worker ({', '.join(a.name for a in BUILT_IN)})" in out, out

    # The summary reads the tables once the sinks caught up, while the worker still runs
    # (the hint follows it), and never had to give up waiting for them.
    assert "have not caught up" not in out, out
    summary = out[out.index("summary (tables of ") : out.index("the worker keeps running")]
    tables = asyncio.run(read_tables(dsn_for_database(postgres_admin_dsn, demo_database)))

    batches_line = re.search(
        r"^\s+batches\s+[\d,]+\s+\((?P<reasons>[^;]*); (?P<statuses>[^)]*)\)$", summary, re.M
    )
    assert batches_line, summary
    assert counts(batches_line["reasons"]) == tables["reasons"], summary
    # The built-in analyzer has analysed every batch by then.
    assert counts(batches_line["statuses"]) == tables["statuses"] == {"ANALYZED": total_batches}
    by_severity = dict(
        zip(("info", "warning", "critical"), map(int, severities.groups()), strict=True)
    )
    assert by_severity == {s: tables["severities"].get(s, 0) for s in by_severity}, summary
    assert [r["analyzer"] for r in tables["analyzers"]] == ["builtin/1"]

    # api_performance: one row per timed event of the sealed batches, per source as printed.
    performance = re.search(
        r"^\s+api_performance\s+([\d,]+)\s+rows \(([\d,]+) timed events in the sealed batches\)$",
        summary,
        re.M,
    )
    assert performance, summary
    rows, timed = (int(g.replace(",", "")) for g in performance.groups())
    assert rows == timed == tables["performance"] > 0, summary
    printed = {m["source"]: m for m in SOURCE_LINE.finditer(summary)}
    # Four sources: all of them fit in the top five.
    assert printed.keys() == tables["by_source"].keys(), summary
    assert sum(int(m["requests"].replace(",", "")) for m in printed.values()) == rows
    requests = [int(m["requests"].replace(",", "")) for m in printed.values()]
    assert requests == sorted(requests, reverse=True), summary
    for source, m in printed.items():
        row = tables["by_source"][source]
        assert int(m["requests"].replace(",", "")) == row["requests"], (source, summary)
        assert m["error_pct"] == f"{100 * row['errors'] / row['requests']:.1f}", (source, summary)
        assert m["p50"] == f"{row['p50']:.1f}" and m["p95"] == f"{row['p95']:.1f}", summary

    # error_events: one row per error event; the five most frequent types are listed.
    errors = re.search(
        r"^\s+error_events\s+([\d,]+)\s+rows \((?P<types>.*?)(?:; (?P<more>\d+) more types?)?; "
        r"([\d,]+) error events in the sealed batches\)$",
        summary,
        re.M,
    )
    assert errors, summary
    error_rows = int(errors.group(1).replace(",", ""))
    assert error_rows == int(errors.group(4).replace(",", "")) == tables["error_rows"] > 0
    assert list(counts(errors["types"]).items()) == tables["error_types"][:5], summary
    assert int(errors["more"] or 0) == len(tables["error_types"]) - min(
        5, len(tables["error_types"])
    ), summary

    # ai_usage: the built-in analyzer calls no model.
    assert re.search(
        r"^\s+ai_usage\s+0\s+calls, 0 tokens \(0 prompt, 0 completion\), \$0\.0000 "
        r"\(the built-in analyzer calls no model\)$",
        summary,
        re.M,
    ), summary
    assert tables["ai_usage"] == 0
