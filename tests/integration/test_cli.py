"""The CLI answers failures with one line and a non-zero exit, and has --help everywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = [
    [], ["worker"], ["produce"], ["demo"], ["topics", "apply"], ["db", "migrate"], ["status"],
    ["seal"], ["lag-exporter"], ["reanalyze"], ["analyze"], ["replay", "reset"],
    ["replay", "copy"], ["dlq", "list"], ["dlq", "show"], ["dlq", "redrive"],
]


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=120, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "streamsight")
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["worker"], {"BATCH_MAX_EVENTS": "lots"}, "invalid setting BATCH_MAX_EVENTS:"),
    (["worker", "--agents", "nope"], {}, "unknown agent(s) nope"),
    (["db", "migrate"], {"DB_RETENTION_DAYS": "thirty"}, "invalid setting DB_RETENTION_DAYS:"),
    (["db", "migrate"], {"DB_RETENTION_DAYS": '{"nope": 3}'}, "retention for 'nope'"),
    (["db", "migrate"], {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
     "cannot reach PostgreSQL"),
    (["worker"], {"DATABASE_URL": "postgresql://postgres:hunter2@127.0.0.1:1/none"},
     "cannot reach PostgreSQL"),
])
def test_failures_are_one_line(args: list[str], env: dict[str, str], expected: str) -> None:
    result = run(*args, **env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streamsight: ") and expected in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
