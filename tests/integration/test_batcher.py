"""The batcher's answers to odd input, end to end: dead-letter headers, repeated ids,
characters PostgreSQL refuses (dead-lettered: the whole gauntlet is in test_poison.py)."""

from __future__ import annotations

import asyncio

import orjson
from confluent_kafka import Producer

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Broker,
    batch_rows,
    events_batched,
    read_topic,
    worker_env,
)


def event(event_id: str, **extra: object) -> bytes:
    return orjson.dumps({"event_id": event_id, "event_type": "http_request", "source": "svc",
                         "timestamp": "2026-11-25T10:00:00Z", **extra})


async def test_odd_input_is_batched_once_or_dead_lettered_with_its_origin(
    fresh_broker: Broker, migrated_database: str, workers: WorkerFactory
) -> None:
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap, "acks": "all"})
    sent = [
        (b"svc", event("a")),
        (b"svc", event("a")),  # the same event again: dropped, not batched twice
        (b"svc", event("nul", error={"type": "E", "message": "bad\u0000byte"})),
        (b"svc", b'{"event_id": "broken"'),
        (None, event("keyless")),
        (b"svc", event("b", http={"status_code": "500"})),
    ]
    for key, value in sent:
        producer.produce("events", value, key, partition=0)
    producer.flush(10)

    worker = workers("odd", worker_env(fresh_broker, migrated_database,
                                       BATCH_MAX_AGE_SECONDS="2"))
    for _ in range(150):
        if await events_batched(migrated_database) >= 1:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    assert worker.stop() == 0

    [row] = await batch_rows(migrated_database)
    assert row["event_count"] == 1
    assert row["first_offset"] == 0

    [(_, value, _)] = read_topic(fresh_broker.bootstrap, "analysis-requests", idle=2.0)
    assert orjson.loads(value or b"")["event_ids"] == ["a"]

    dead = {int(h["dlq.origin.offset"]): (key, value, h)
            for key, value, h in read_topic(fresh_broker.bootstrap, "dead-letter", idle=2.0)}
    assert sorted(dead) == [2, 3, 4, 5]
    assert dead[2][2]["dlq.reason"] == b"nul_character"
    assert dead[2][2]["dlq.field"] == b"error.message"
    assert dead[3][2]["dlq.reason"] == b"malformed_json"
    assert dead[3][1] == b'{"event_id": "broken"'  # the original bytes, unchanged
    assert dead[4][2]["dlq.reason"] == b"missing_key"
    assert dead[5][2]["dlq.reason"] == b"wrong_type"
    assert dead[5][2]["dlq.field"] == b"http.status_code"
    assert all(h["dlq.origin.partition"] == b"0" and h["dlq.origin.topic"] == b"events"
               and int(h["dlq.origin.timestamp"]) > 0 and h["dlq.error"]
               for _, _, h in dead.values())
