"""`streamsight dlq list | show | redrive` against a real broker and a running batcher:
counts, origins, dry run, redrive counts that travel through a second failure, and a
message that is valid after a fix ending up in a batch."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    ROOT,
    Broker,
    batch_rows,
    produce,
    read_topic,
    worker_env,
)

Message = tuple[bytes | None, bytes | None, dict[str, bytes]]


def dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "dlq", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=120, stdin=subprocess.DEVNULL, cwd=ROOT,
    )


def dlq_json(env: dict[str, str], *args: str) -> Any:
    result = dlq(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def wait_for(bootstrap: str, topic: str, count: int, within: float = 60) -> list[Message]:
    """The messages of ``topic`` once there are at least ``count``."""
    deadline = time.monotonic() + within
    while True:
        messages = read_topic(bootstrap, topic, idle=1.0)
        if len(messages) >= count:
            return messages
        assert time.monotonic() < deadline, f"{topic}: {len(messages)} of {count} messages"
        await asyncio.sleep(0.5)


@pytest.mark.kafka
async def test_list_show_and_redrive_invalid_events_twice(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    bootstrap = fresh_broker.bootstrap
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="2")
    # Every 7th event invalid: the five invalid samples in turn, five reasons.
    traffic = produce(bootstrap, 210, invalid_every=7)
    invalid = len(traffic.invalid)
    assert invalid == 30 and traffic.failed == 0
    worker = workers("batcher", env)

    dead = await wait_for(bootstrap, "dead-letter", invalid)
    assert len(dead) == invalid
    by_reason = Counter(h["dlq.reason"].decode() for _, _, h in dead)
    assert len(by_reason) == 5

    # list: counts by reason and by origin topic, as JSON and as tables.
    listed = dlq_json(env, "list")
    assert listed == {"total": invalid, "by_reason": dict(by_reason.most_common()),
                      "by_origin_topic": {"events": invalid}}
    table = dlq(env, "list")
    assert table.returncode == 0, table.stderr
    assert "malformed_json" in table.stdout and "events" in table.stdout
    assert dlq_json(env, "list", "--since", "1h")["total"] == invalid
    assert dlq_json(env, "list", "--until", "1h")["total"] == 0

    # show: the malformed ones with where they came from.
    shown = dlq_json(env, "show", "--reason", "malformed_json")
    malformed = by_reason["malformed_json"]
    assert len(shown) == malformed
    for message in shown:
        origin = message["origin"]
        assert origin["topic"] == "events"
        assert (origin["partition"], origin["offset"]) in traffic.invalid
        assert origin["timestamp"] is not None and message["dead_lettered_at"] is not None
        assert message["value"] == "{not json" and message["key"]
        assert message["error"] and message["redrive"] == 0
    assert len(dlq_json(env, "show", "--limit", "3")) == 3
    assert dlq_json(env, "show", "--origin-topic", "analysis-requests") == []
    assert "malformed_json" in dlq(env, "show", "--reason", "malformed_json").stdout

    # Dry run: lists what would go, sends nothing.
    dry = dlq_json(env, "redrive", "--reason", "malformed_json")
    assert (dry["dry_run"], dry["matched"], dry["would_send"], dry["sent"]) == (
        True, malformed, malformed, 0)
    assert all(m["send_to"]["topic"] == "events" and m["send_to"]["redrive"] == 1
               for m in dry["messages"])
    text = dlq(env, "redrive", "--reason", "malformed_json")
    assert text.returncode == 0 and "dry run" in text.stdout
    assert len(read_topic(bootstrap, "events", idle=1.0)) == 210

    # Redrive: back to events with dlq.redrive=1; still invalid, so dead-lettered again,
    # and the new dead-letter copies keep the count.
    sent = dlq_json(env, "redrive", "--reason", "malformed_json", "--execute")
    assert (sent["matched"], sent["sent"], sent["failed"]) == (malformed, malformed, 0)
    events = await wait_for(bootstrap, "events", 210 + malformed)
    redriven = [(k, v, h) for k, v, h in events if "dlq.redrive" in h]
    assert len(redriven) == malformed
    assert all(h["dlq.redrive"] == b"1" and v == b"{not json" for _, v, h in redriven)
    original_keys = Counter(m["key"] for m in shown)
    assert Counter((k or b"").decode() for k, _, _ in redriven) == original_keys

    dead = await wait_for(bootstrap, "dead-letter", invalid + malformed)
    again = [h for _, _, h in dead if "dlq.redrive" in h]
    assert len(again) == malformed
    assert all(h["dlq.redrive"] == b"1" and h["dlq.reason"] == b"malformed_json"
               for h in again)
    assert dlq_json(env, "list")["total"] == invalid + malformed

    # Second redrive of those copies only: dlq.redrive=2 on the way out and on the way back.
    second = dlq_json(env, "redrive", "--reason", "malformed_json", "--redriven", "1",
                      "--execute")
    assert (second["matched"], second["sent"], second["failed"]) == (malformed, malformed, 0)
    events = await wait_for(bootstrap, "events", 210 + 2 * malformed)
    assert Counter(h.get("dlq.redrive") for _, _, h in events) == {
        None: 210, b"1": malformed, b"2": malformed}
    dead = await wait_for(bootstrap, "dead-letter", invalid + 2 * malformed)
    assert Counter(h.get("dlq.redrive") for _, _, h in dead) == {
        None: invalid, b"1": malformed, b"2": malformed}
    assert len(dlq_json(env, "show", "--redriven", "2")) == malformed
    # Nothing was deleted: every first dead-letter message is still there.
    firsts = {(m["origin"]["partition"], m["origin"]["offset"])
              for m in dlq_json(env, "show", "--redriven", "0")}
    assert firsts == traffic.invalid
    assert worker.stop() == 0


@pytest.mark.kafka
async def test_a_message_valid_after_a_fix_is_batched_when_redriven(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    bootstrap = fresh_broker.bootstrap
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="1")
    # As if a bug had refused a good event: it sits on dead-letter with its origin.
    good = orjson.dumps({"event_id": "fixed-1", "event_type": "http_request",
                         "source": "checkout",
                         "timestamp": datetime.now(UTC) - timedelta(minutes=5)})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for origin_offset, value in ((17, good), (18, b"{still broken")):
        producer.produce("dead-letter", value, b"checkout", partition=2, headers=[
            ("dlq.reason", b"future_timestamp"), ("dlq.error", b"timestamp in the future"),
            ("dlq.field", b"timestamp"), ("dlq.origin.topic", b"events"),
            ("dlq.origin.partition", b"1"), ("dlq.origin.offset", str(origin_offset).encode()),
            ("dlq.origin.timestamp", b"1764064800000"),
        ])
    # Without an origin topic it cannot be sent anywhere.
    producer.produce("dead-letter", b"{}", b"x", partition=3, headers=[("dlq.reason", b"empty")])
    producer.flush(10)

    # Redrive wants a choice: no filter at all is refused, in one line.
    refused = dlq(env, "redrive", "--execute")
    assert refused.returncode == 1
    assert refused.stderr.startswith("streamsight: say which messages to redrive")
    bad = dlq(env, "redrive", "--offset", "two:seventeen")
    assert bad.returncode == 1 and "partition:offset" in bad.stderr

    [shown] = dlq_json(env, "show", "--reason", "future_timestamp", "--limit", "1")
    assert shown["position"] == "2:0" and shown["field"] == "timestamp"

    workers("batcher", env)
    result = dlq_json(env, "redrive", "--offset", "2:0", "--offset", "2:9", "--execute")
    assert (result["matched"], result["sent"], result["failed"]) == (1, 1, 0)
    assert result["not_found"] == ["2:9"]

    deadline = time.monotonic() + 60
    while not (rows := await batch_rows(migrated_database)):
        assert time.monotonic() < deadline, "the redriven event was never batched"
        await asyncio.sleep(0.3)
    [row] = rows
    assert (row["topic"], row["partition"], row["event_count"]) == ("events", 1, 1)
    [(_, request, _)] = await wait_for(bootstrap, "analysis-requests", 1)
    assert orjson.loads(request or b"")["event_ids"] == ["fixed-1"]

    # --all includes the one without an origin topic: it is counted as failed, exit 1.
    everything = dlq(env, "redrive", "--all", "--reason", "empty", "--execute", "--json")
    assert everything.returncode == 1
    report = json.loads(everything.stdout)
    assert (report["matched"], report["sent"], report["failed"]) == (1, 0, 1)
    assert "no dlq.origin.topic" in report["errors"][0]
    assert len(read_topic(bootstrap, "dead-letter", idle=1.0)) == 3
