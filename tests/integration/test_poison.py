"""No record on any topic stops the pipeline (issue 12).

An outside producer (confluent-kafka, not streamsight's code) writes, among valid traffic,
records that PostgreSQL cannot store or that are otherwise hostile, to every topic an
agent reads. The worker runs every agent and must never exit: every valid event reaches
its batch and its rows, each bad record is on dead-letter exactly once with its reason,
and a restart adds nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from confluent_kafka import Producer

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    Worker,
    events_batched,
    expected_rows,
    produce,
    read_topic,
    stored_rows,
    worker_env,
)

AGENTS = "batcher,analyst,sink-insights,sink-performance,sink-errors"
# A day back: the rows it leads to stay inside retention whenever the test runs.
TS = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(**changes: Any) -> bytes:
    doc: dict[str, Any] = {"event_id": str(uuid.uuid4()), "event_type": "http_request",
                           "source": "svc", "timestamp": TS,
                           "http": {"method": "GET", "route": "/r", "status_code": 500,
                                    "duration_ms": 3.5},
                           "error": {"type": "E", "message": "m"}, "user_id": "u",
                           "session_id": "s", "attributes": {"a": "b"}}
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = doc
        for name in parents:
            node = node[name]
        node[leaf] = value
    return orjson.dumps(doc)


# (key, value, reason) on ``events``: a NUL in each string field that reaches a table (or
# the batches digest), numbers out of range, timestamps PostgreSQL cannot hold or that
# are not plausible, a repeated member name.
BAD_EVENTS: list[tuple[bytes, bytes, str]] = [
    (b"svc", event(source="bad\u0000source"), "nul_character"),
    (b"svc", event(event_id="id\u0000"), "nul_character"),
    (b"svc", event(event_type="t\u0000"), "nul_character"),
    (b"svc", event(**{"http.route": "/r\u0000"}), "nul_character"),
    (b"svc", event(**{"http.method": "G\u0000"}), "nul_character"),
    (b"svc", event(**{"error.type": "\u0000"}), "nul_character"),
    (b"svc", event(**{"error.message": "bad\u0000byte"}), "nul_character"),
    (b"svc", event(user_id="\u0000"), "nul_character"),
    (b"svc", event(session_id="\u0000"), "nul_character"),
    (b"svc", event(**{"attributes.a": "\u0000"}), "nul_character"),
    (b"s\x00vc", event(), "nul_character"),
    (b"svc", event(**{"http.status_code": 99999999999}), "invalid_value"),
    (b"svc", event(**{"http.status_code": 2**31}), "invalid_value"),
    (b"svc", event(**{"http.duration_ms": -1}), "invalid_value"),
    (b"svc", event().replace(b'"duration_ms":3.5', b'"duration_ms":1e400'), "invalid_value"),
    (b"svc", event(timestamp="0001-01-01T00:00:00Z"), "bad_timestamp"),
    (b"svc", event(timestamp="9999-12-31T23:59:59Z"), "future_timestamp"),
    (b"svc", event(timestamp="2026-13-45T99:00:00Z"), "bad_timestamp"),
    (b"svc", event().replace(b"{", b'{"source":"other",', 1), "duplicate_key"),
]


def perf_row(event_id: str, **changes: Any) -> list[Any]:
    row = {"time": TS, "source": "svc", "route": "/r", "method": "GET", "status_code": 200,
           "duration_ms": 1.0, "success": True, "event_id": event_id, **changes}
    return list(row.values())


def error_record(event_id: str, **changes: Any) -> dict[str, Any]:
    return {"time": TS, "source": "svc", "type": "E", "message": "m", "event_id": event_id,
            "batch_id": None, "usage": [], **changes}


async def table_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
                for table in ("batches", "insights", "ai_usage", "api_performance",
                              "error_events")}
    finally:
        await conn.close()


async def asyncpg_fetchval(dsn: str, query: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def wait_for(check: Any, within: float, what: str, worker: Worker) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert worker.alive(), f"worker exited:\n{worker.log_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{what}:\n{worker.log_text()[-4000:]}"
        await asyncio.sleep(0.5)


def dead_letters(bootstrap: str) -> list[dict[str, bytes]]:
    return [headers for _, _, headers in read_topic(bootstrap, "dead-letter", idle=2.0)]


@pytest.mark.kafka
async def test_no_record_on_any_topic_stops_the_pipeline(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    bootstrap = fresh_broker.bootstrap
    env = worker_env(fresh_broker, migrated_database, BATCH_MAX_AGE_SECONDS="2")
    worker = workers("poison", env, AGENTS)
    outside = Producer({"bootstrap.servers": bootstrap, "acks": "all"})

    # Valid traffic with every bad event in its midst, and one valid event after each.
    first = await asyncio.to_thread(produce, bootstrap, 200, sources=4, seed=3)
    for key, value, _reason in BAD_EVENTS:
        outside.produce("events", value, key)
        outside.produce("events", event(), b"svc")
    outside.flush(10)
    traffic = await asyncio.to_thread(produce, bootstrap, 200, sources=4, seed=4,
                                      traffic=first)
    valid_after = len(BAD_EVENTS)  # the outside producer's valid events

    # Row topics: arrays in which one row is bad among good ones.
    good_perf, good_errors = [f"p-good-{i}" for i in range(3)], [f"e-good-{i}" for i in range(3)]
    outside.produce("performance", orjson.dumps([
        perf_row(good_perf[0]), perf_row("p-bad-int", status_code=99999999999),
        perf_row(good_perf[1]), perf_row("p-bad-nul", source="bad\u0000source"),
        perf_row(good_perf[2])]))
    outside.produce("performance", b'[["not", "a row"]]')
    outside.produce("errors", orjson.dumps([
        error_record(good_errors[0]), error_record("e-bad-nul", message="bad\u0000"),
        error_record(good_errors[1]), error_record(good_errors[2])]))
    outside.flush(10)

    async def all_batched() -> bool:
        return await events_batched(migrated_database) == len(traffic.valid) + valid_after

    await wait_for(all_batched, 120, "not every valid event batched", worker)

    # Downstream topics get bad records made from real ones.
    [(_, request_value, _), *_] = read_topic(bootstrap, "analysis-requests", idle=2.0)
    request = orjson.loads(request_value or b"")
    bad_requests = [
        ({**request, "batch_id": "not-a-uuid"}, "invalid_value"),
        ({**request, "key": "s\u0000vc"}, "nul_character"),
        ({**request, "partition": 2**40}, "invalid_value"),
        ({**request, "digest": {**request["digest"], "routes": {"/\u0000": 1}}},
         "nul_character"),
    ]
    for bad, _reason in bad_requests:
        outside.produce("analysis-requests", orjson.dumps(bad), b"svc")
    outside.produce("analysis-requests", b"\x00\xff not json", b"svc")

    async def some_insight() -> bool:
        return (await table_counts(migrated_database))["insights"] > 0

    await wait_for(some_insight, 60, "no insight", worker)
    [(_, insight_value, _), *_] = read_topic(bootstrap, "insights", idle=2.0)
    insight = orjson.loads(insight_value or b"")
    outside.produce("insights", orjson.dumps({
        **insight, "insight_id": str(uuid.uuid4()),
        "analysis": {**insight["analysis"], "summary": "bad\u0000summary"}}), b"svc")
    outside.produce("insights", orjson.dumps({
        **insight, "insight_id": str(uuid.uuid4()), "prompt_tokens": 2**40}), b"svc")
    outside.produce("insights", b"[]", b"svc")
    outside.flush(10)

    expected = Counter(reason for _, _, reason in BAD_EVENTS)
    expected.update(reason for _, reason in bad_requests)
    expected.update({"db_rejected": 2 + 1 + 2, "malformed_json": 3})

    async def all_dead_lettered() -> bool:
        reasons = Counter(h["dlq.reason"].decode() for h in dead_letters(bootstrap))
        return reasons == expected

    await wait_for(all_dead_lettered, 120, f"dead-letter is not {expected}", worker)
    timed, failed = await asyncio.to_thread(expected_rows, bootstrap)

    async def rows_landed() -> bool:
        perf_ids, error_ids = await stored_rows(migrated_database)
        return (set(perf_ids) == timed | set(good_perf)
                and set(error_ids) == failed | set(good_errors))

    await wait_for(rows_landed, 60, "rows missing", worker)
    perf_ids, error_ids = await stored_rows(migrated_database)
    assert len(perf_ids) == len(set(perf_ids))
    assert len(error_ids) == len(set(error_ids))

    refused = [h for h in dead_letters(bootstrap) if h["dlq.reason"] == b"db_rejected"]
    assert sorted(h["dlq.origin.topic"].decode() for h in refused) == [
        "errors", "insights", "insights", "performance", "performance"]
    assert {h["dlq.table"] for h in refused} == {
        b"api_performance", b"error_events", b"insights"}
    assert all(h["dlq.error"] and h["dlq.origin.offset"] for h in refused)
    assert "agent.failed" not in worker.log_text()

    # A restart reads nothing again: no row, batch or dead-letter more.
    before = await table_counts(migrated_database)
    assert await asyncio.to_thread(worker.stop) == 0
    again = worker.start()
    await asyncio.sleep(0)
    for _ in range(5):
        outside.produce("events", event(), b"svc")
    outside.flush(10)

    async def restarted_and_idle() -> bool:
        return await events_batched(migrated_database) == (
            len(traffic.valid) + valid_after + 5)

    await wait_for(restarted_and_idle, 90, "the restarted worker batched nothing", again)

    async def new_rows_landed() -> bool:
        # The five events' rows reach their tables through the sinks, after the batch.
        now = await table_counts(migrated_database)
        return now["api_performance"] >= before["api_performance"] + 5 and (
            now["error_events"] >= before["error_events"] + 5)

    await wait_for(new_rows_landed, 60, "the five new events' rows", again)
    after = await table_counts(migrated_database)
    assert after["batches"] == before["batches"] + 1
    assert (after["api_performance"], after["error_events"]) == (
        before["api_performance"] + 5, before["error_events"] + 5)
    assert Counter(h["dlq.reason"].decode() for h in dead_letters(bootstrap)) == expected
    assert again.alive()

    # What one bad record costs: from its arrival to the sealed batch of the 100 valid
    # events behind it (a count seal, so no age wait is in the figure), beside the same
    # for 100 valid events with nothing bad in front.
    async def seal_time(source: str, bad_first: bool) -> float:
        started = time.monotonic()
        if bad_first:
            outside.produce("events", event(source="x\u0000"), source.encode())
        for _ in range(100):
            outside.produce("events", event(source=source), source.encode())
        outside.flush(10)

        async def sealed() -> bool:
            return bool(await asyncpg_fetchval(
                migrated_database, f"SELECT count(*) FROM batches WHERE source = '{source}' "
                "AND event_count = 100 AND seal_reason = 'count'"))

        await wait_for(sealed, 60, f"no batch of {source}", again)
        return time.monotonic() - started

    clean = await seal_time("clean", bad_first=False)
    behind = await seal_time("behind", bad_first=True)
    print(f"100 valid events sealed {clean:.2f}s after they were sent; behind one bad "
          f"record, {behind:.2f}s after it was sent")
