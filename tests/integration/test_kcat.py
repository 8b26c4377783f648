"""kcat works with us (Debian's kcat, on Apache Kafka): it produces an event the batcher
takes, and reads insights and dead-letter, headers included. The README shows the same
one-line commands."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from typing import Any

import pytest

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import Broker, worker_env


def kcat(*args: str, stdin: bytes | None = None) -> str:
    binary = shutil.which("kcat")
    assert binary, "kcat is not installed: make tools installs it (Debian's kcat)"
    proc = subprocess.run([binary, *args], input=stdin, capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode()


def read(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """``kcat -C -J``: one JSON envelope per message, headers included."""
    out = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-J")
    messages = [json.loads(line) for line in out.splitlines() if line.strip()]
    for message in messages:
        # Debian's kcat 1.7 gives headers as a flat [name, value, ...] list.
        headers = message.get("headers") or []
        message["headers"] = dict(zip(headers[::2], headers[1::2], strict=True))
    return messages


@pytest.mark.kafka(only=True)
async def test_kcat_produces_an_event_and_reads_insights_and_dead_letter(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    bootstrap = fresh_broker.bootstrap
    workers("kcat", worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="2"),
            "batcher,analyst")
    event_id = str(uuid.uuid4())
    event = json.dumps({"event_id": event_id, "event_type": "http_request",
                        "source": "checkout", "timestamp": "2026-11-25T10:00:00Z",
                        "http": {"route": "/pay", "status_code": 200, "duration_ms": 12}})
    kcat("-P", "-b", bootstrap, "-t", "events", "-k", "checkout", stdin=event.encode())
    kcat("-P", "-b", bootstrap, "-t", "events", "-k", "checkout",
         stdin=b'{"event_id": "broken"\n')

    deadline = time.monotonic() + 90
    while not (insights := read(bootstrap, "insights")):
        assert time.monotonic() < deadline, "no insight read by kcat"
        await asyncio.sleep(0.5)
    [insight] = insights
    assert insight["key"] == "checkout"
    assert json.loads(insight["payload"])["source"] == "checkout"

    [dead] = read(bootstrap, "dead-letter")
    assert dead["payload"] == '{"event_id": "broken"'
    assert dead["headers"]["dlq.reason"] == "malformed_json"
    assert dead["headers"]["dlq.origin.topic"] == "events"
    [request] = read(bootstrap, "analysis-requests")
    assert json.loads(request["payload"])["event_ids"] == [event_id]
