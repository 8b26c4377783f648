"""`streamsight demo` end to end: embedded broker, real PostgreSQL, a worker subprocess.

Runs the command the way a user (or CI) does, bounded by --duration, and checks that its
output shows sealed batches, an insight for each of them (built-in analyzer: no
OPENAI_API_KEY reaches the demo) and a summary whose numbers add up.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.embedded import drop_database

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


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in the demo output:\n{text}"
    return int(match.group(1).replace(",", ""))


@pytest.fixture
def demo_database(postgres_admin_dsn: str) -> Iterator[str]:
    name = f"streamsight_demo_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        drop_database(postgres_admin_dsn, name)


def test_demo_seals_batches_and_accounts_for_every_event(
    tmp_path: Path, demo_database: str
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
    # The worker's logs go to the run directory, not the terminal.
    assert (tmp_path / "run" / "worker.log").exists()
    assert not (REPO / "demo-data").exists()
