"""Whatever a topic can carry, the agents survive it: property-based tests (hypothesis).

Every handler an agent runs (batcher, analyst, the three sinks) is driven with generated
records: arbitrary bytes, arbitrary JSON, and records of the topic's own shape with any
field replaced by a hostile value (NUL and lone surrogates in text, integers beyond 64
bits, timestamps PostgreSQL cannot hold, wrong types). It writes to a real PostgreSQL and
produces to a real broker. Each example checks that nothing escapes a handler and that
every offset is settled; at the end, every record is accounted for: written (its rows are
in their tables, its events in a batch, its insight on ``insights``) or on ``dead-letter``
under its origin, each element of a row array on its own.

Records are confluent-kafka-shaped stand-ins: the handlers are the subject here, not the
consumer. Each example reads a partition number of its own, which the dead-letter
headers carry back.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.adapters.batch_store import BatchHistory, BatchStatus, BatchStore
from streams.adapters.db import migrate
from streams.adapters.publish import Publisher
from streams.core.breaker import CircuitBreaker
from streams.core.models import AnalysisRequest, ErrorRecord, Insight, PerformanceRow
from streams.core.retry import RetryPolicy
from streams.local.embedded import create_database, drop_database
from streams.pipeline.analyst import Analyst, AnalystHandler
from streams.pipeline.batcher import BatcherHandler
from streams.pipeline.sinks import (
    SinkHandler,
    array_items,
    error_rows,
    insight_rows,
    one_record,
    performance_rows,
)
from tests.integration.harness import Broker, own_broker, read_topic
from tests.support.batches import make_analysis_request, sample_events
from tests.support.records import Record

T = TypeVar("T")
EXAMPLES = 100
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies -------------------------------------------------------------------------

TEXT = st.integers(min_value=0, max_value=1).flatmap(lambda n: (
    st.text(st.characters(blacklist_categories=()), max_size=12) if n else
    st.sampled_from(["\x00", "a\x00b", "\ud800", "", "x" * 300, "é☃𝄞", "2026-11-25T10:00:00Z",
                     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-11-25T10:00:00"])))
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


def hostile_like(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same JSON type that a table may not hold."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return (st.sampled_from([2**31, -(2**31) - 1, 2**63, 2**64, 10**30, -1, 0])
                | st.integers(min_value=-(2**70), max_value=2**70))
    if isinstance(value, float):
        return (st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from([1e308, -0.0, 5e-324, 1e-300]))
    if isinstance(value, str) and value.startswith("2026-"):
        return st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
                                "2026-11-25T10:00:00+14:00", "1970-01-01T00:00:00-12:00",
                                "2026-11-25T10:00:00.123456789Z"]) | TEXT
    if isinstance(value, str):
        return TEXT
    return JSON


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [leaf for name, child in node.items() for leaf in _leaves(child, (*path, name))]
    if isinstance(node, list):
        return [leaf for i, child in enumerate(node) for leaf in _leaves(child, (*path, i))]
    return [path]


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with up to two fields, at any depth, replaced: mostly by a value of the
    same type that a table may not hold, else by anything at all."""
    doc = copy.deepcopy(base)
    paths = _leaves(doc)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        *parents, last = draw(st.sampled_from(paths))
        node = doc
        for step in parents:
            node = node[step]
        try:
            old = node[last]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement took this path away
        node[last] = draw(mostly(hostile_like(old), JSON))
    return doc


def mostly(usual: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` three times in four. (``one_of(a, a, a, b)`` would not do: hypothesis
    folds repeated branches into one.)"""
    return st.integers(min_value=0, max_value=3).flatmap(lambda n: rare if n == 3 else usual)


@st.composite
def encoded(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    """A document as a producer might write it, or bytes that are no document at all."""
    doc = draw(docs)
    style = draw(st.sampled_from(["ascii", "ascii", "ascii", "orjson", "orjson", "utf8",
                                  "raw", "truncated", "repeated"]))
    if style == "raw":
        return draw(st.binary(max_size=64))
    if style == "orjson":
        try:
            return orjson.dumps(doc)
        except (TypeError, orjson.JSONEncodeError):  # lone surrogates, huge integers
            return json.dumps(doc).encode()
    # Not ASCII-escaped, a lone surrogate becomes bytes that are not UTF-8.
    text = json.dumps(doc, ensure_ascii=style != "utf8").encode("utf-8", "surrogatepass")
    if style == "truncated":
        return text[:draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))]
    if style == "repeated" and isinstance(doc, dict) and doc:
        # JSON encoders never repeat a name; a hand-written producer can.
        name = draw(st.sampled_from(sorted(doc)))
        return b"{" + json.dumps(name).encode() + b": null, " + text[1:]
    return text


EVENT = {"event_id": "e", "event_type": "http_request", "source": "svc",
         "timestamp": "2026-11-25T10:00:00Z",
         "http": {"method": "GET", "route": "/r", "status_code": 503, "duration_ms": 1.5},
         "error": {"type": "E", "message": "m"}, "user_id": "u", "severity": "error",
         "attributes": {"a": 1}}
KEYS = mostly(st.sampled_from([b"svc", b"other"]), st.binary(max_size=8) | st.none())
CE_HEADERS = st.lists(st.tuples(
    st.sampled_from(["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "x"]),
    st.binary(max_size=24) | st.sampled_from([b"1.0", b"2026-11-25T10:00:00Z", b"a\x00"])),
    max_size=6)


@st.composite
def events(draw: st.DrawFn) -> tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]:
    doc = draw(mostly(mutated(EVENT), JSON))
    if isinstance(doc, dict) and draw(st.booleans()):
        doc["event_id"] = str(uuid.uuid4())  # mostly distinct, so most are batched
    headers = draw(mostly(st.none(), CE_HEADERS))
    return draw(KEYS), draw(encoded(st.just(doc))), headers


REQUEST = msgspec.to_builtins(make_analysis_request(sample_events(4)))
INSIGHT_BASE = {
    "insight_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "batch_id": "5f0c4b7e-2a51-4c3e-9d0b-6f1e8a2b3c4d", "source": "svc",
    "window_start": "2026-11-25T10:00:00Z", "window_end": "2026-11-25T10:01:00Z",
    "analysis": {"summary": "s", "severity": "info", "confidence": 0.5, "patterns": ["p"],
                 "anomalies": [], "recommendations": []},
    "analyzer": "builtin", "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0,
    "latency_ms": 1.0, "created_at": "2026-11-25T10:02:00Z",
    "usage": [{"request_id": "9f8fad5b-d9cb-469f-a165-70867728950e",
               "batch_id": "5f0c4b7e-2a51-4c3e-9d0b-6f1e8a2b3c4d", "analyzer": "a",
               "model": "m", "attempt": 1, "outcome": "ok", "prompt_tokens": 1,
               "completion_tokens": 1, "cost_usd": 0.0, "latency_ms": 1.0,
               "at": "2026-11-25T10:02:00Z"}],
}
# Rows a day back: inside retention whenever the test runs.
DAY_BACK = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
PERF_ROW = [DAY_BACK, "svc", "/r", "GET", 200, 1.5, True, "p"]
ERROR_BASE = {"time": DAY_BACK, "source": "svc", "type": "E", "message": "m",
              "event_id": "e", "batch_id": None, "usage": []}


@st.composite
def fresh_ids(draw: st.DrawFn, docs: st.SearchStrategy[Any], *names: str) -> Any:
    """``docs`` with id fields made unique where they are still strings, so that
    examples do not land on each other's rows."""
    doc = draw(docs)
    if isinstance(doc, dict):
        for name in names:
            if isinstance(doc.get(name), str) and draw(st.booleans()):
                doc[name] = str(uuid.uuid4())
    return doc


PERF_ROWS = st.lists(mostly(mutated(PERF_ROW).map(
    lambda row: [*row[:7], str(uuid.uuid4())] if row[7:] == ["p"] else row), JSON),
    max_size=3)
ERROR_ROWS = st.lists(mostly(fresh_ids(mutated(ERROR_BASE), "event_id"), JSON), max_size=3)
MESSAGES = {
    "analysis-requests": encoded(mostly(fresh_ids(mutated(REQUEST), "batch_id"), JSON)),
    "insights": encoded(mostly(fresh_ids(mutated(INSIGHT_BASE), "insight_id"), JSON)),
    "performance": encoded(mostly(PERF_ROWS, JSON)),
    "errors": encoded(mostly(ERROR_ROWS, JSON)),
}


# -- the rig: a broker, a database, a producer and a pool on one loop --------------------


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    broker: Broker
    dsn: str
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    partitions: Iterator[int] = field(default_factory=lambda: itertools.count(100))
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)

    def reached(self, topic: str, *reasons: str) -> None:
        """The generators reached what the test is about: records refused for these
        reasons (a test that only ever saw valid input would prove nothing)."""
        missing = [r for r in reasons if not self.reasons[topic, r]]
        assert not missing, f"no {missing} on {topic}: {self.reasons}"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def dead_letters(self) -> dict[tuple[str, int, int], list[bytes | None]]:
        """Dead-letter values by origin (topic, partition, offset); ``reasons`` counts
        them by topic and reason."""
        out: dict[tuple[str, int, int], list[bytes | None]] = {}
        self.reasons.clear()
        for _key, value, headers in read_topic(self.broker.bootstrap, "dead-letter",
                                               idle=2.0):
            topic = headers["dlq.origin.topic"].decode()
            origin = (topic, int(headers["dlq.origin.partition"]),
                      int(headers["dlq.origin.offset"]))
            out.setdefault(origin, []).append(value)
            self.reasons[topic, headers["dlq.reason"].decode()] += 1
        return out


@pytest.fixture(scope="module")
def rig(postgres_admin_dsn: str) -> Iterator[Rig]:
    """Everything on a loop of its own in a thread, apart from pytest-asyncio's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-loop", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def producer_for(bootstrap: str) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await producer.start()
        return producer

    async def pool_for(dsn: str) -> asyncpg.Pool:
        return await asyncpg.create_pool(dsn, min_size=1, max_size=4)

    name = f"streamsight_fuzz_{uuid.uuid4().hex[:12]}"
    dsn = create_database(postgres_admin_dsn, name)
    brokers = own_broker()
    broker = next(brokers)
    try:
        run(migrate(dsn))
        pool = run(pool_for(dsn))
        producer = run(producer_for(broker.bootstrap))
        yield Rig(loop, broker, dsn, pool, producer)
        run(producer.stop())
        run(pool.close())
    finally:
        brokers.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        drop_database(postgres_admin_dsn, name)


def stubs(partition: int, drawn: list[Any]) -> list[Record]:
    out = []
    for offset, item in enumerate(drawn):
        key, value, headers = item if isinstance(item, tuple) else (b"svc", item, None)
        out.append(Record(offset, key, value, headers, partition, 1_700_000_000_000))
    return out


# -- the batcher -------------------------------------------------------------------------


def test_the_batcher_batches_or_dead_letters_whatever_arrives(rig: Rig) -> None:
    handler = BatcherHandler(store=BatchStore(rig.pool), publisher=Publisher(rig.producer),
                             max_events=5, max_age_seconds=600, max_event_bytes=4096)
    seen: list[tuple[int, int, int]] = []  # (partition, records, batched + duplicates)

    @SETTINGS
    @given(st.lists(events(), min_size=1, max_size=12))
    def example(drawn: list[Any]) -> None:
        partition = next(rig.partitions)
        records = stubs(partition, drawn)
        duplicates = handler.batcher.duplicates

        async def run() -> dict[int, int]:
            await handler.assigned({partition: 0})
            now = time.time()
            handler.records(partition, records, now)  # type: ignore[arg-type]
            handler.tick(now)
            handler.drain(now)
            offsets = await handler.settle()
            handler.revoked([partition])
            return offsets

        assert rig.run(run())[partition] == len(records)
        batched = rig.run(rig.pool.fetchval(
            "SELECT coalesce(sum(event_count), 0) FROM batches WHERE partition = $1",
            partition))
        seen.append((partition, len(records),
                     batched + handler.batcher.duplicates - duplicates))

    example()
    dead = rig.dead_letters()
    for partition, count, kept in seen:
        lettered = sum(1 for topic, p, _ in dead if topic == "events" and p == partition)
        assert kept + lettered == count, (partition, kept, lettered, count)
    rig.reached("events", "nul_character", "duplicate_key", "malformed_json", "not_utf8",
                "invalid_value", "wrong_type", "missing_key")
    assert sum(kept for _, _, kept in seen) > EXAMPLES / 3


# -- the analyst -------------------------------------------------------------------------


def test_the_analyst_answers_or_dead_letters_whatever_arrives(rig: Rig) -> None:
    analyst = Analyst(publisher=Publisher(rig.producer), history=BatchHistory(rig.pool),
                      statuses=BatchStatus(rig.pool), ai=None, budget=None, spend=None,
                      breaker=CircuitBreaker(5, 600), policy=RetryPolicy(5))
    handler = AnalystHandler(analyst, analyst.publisher, 4)
    sent: list[Record] = []

    @SETTINGS
    @given(st.lists(MESSAGES["analysis-requests"], min_size=1, max_size=8))
    def example(drawn: list[bytes]) -> None:
        partition = next(rig.partitions)
        records = stubs(partition, drawn)

        async def run() -> None:
            await handler.assigned({partition: 0})
            handler.records(partition, records, time.time())  # type: ignore[arg-type]
            deadline = time.monotonic() + 30
            while (await handler.settle())[partition] < len(records):
                assert time.monotonic() < deadline, "requests never settled"
                await asyncio.sleep(0.01)
            handler.revoked([partition])

        rig.run(run())
        sent.extend(records)

    example()
    dead = rig.dead_letters()
    answered = {orjson.loads(value or b"")["batch_id"]
                for _, value, _ in read_topic(rig.broker.bootstrap, "insights", idle=2.0)}
    analysed = 0
    for record in sent:
        if ("analysis-requests", record.partition_, record.offset_) in dead:
            continue
        request = msgspec.json.decode(record.value_ or b"", type=AnalysisRequest)
        assert request.batch_id in answered, record
        analysed += 1
    rig.reached("analysis-requests", "nul_character", "invalid_value", "malformed_json")
    assert analysed > EXAMPLES / 4


# -- the sinks ---------------------------------------------------------------------------

_KEYS = {
    "api_performance": ("SELECT count(*) FROM api_performance WHERE event_id = $1 "
                        "AND time = $2", lambda r: (r[7], r[0])),
    # By the table's key: a later record with the same key is dropped, by design.
    "error_events": ("SELECT count(*) FROM error_events WHERE time = $6 AND error_id = CASE"
                     " WHEN $1::text IS NOT NULL THEN 'event/' || $1 ELSE 'derived/' || md5("
                     "coalesce($2::text, '') || chr(31) || $3 || chr(31) || $4 || chr(31)"
                     " || $5) END", lambda r: (r[4], r[5], r[1], r[2], r[3], r[0])),
    "insights": ("SELECT count(*) FROM insights WHERE insight_id = $1 AND window_start = $2",
                 lambda r: (r[0], r[3])),
    "ai_usage": ("SELECT count(*) FROM ai_usage WHERE request_id = $1 AND at = $2",
                 lambda r: (r[0], r[10])),
}


async def stored(pool: asyncpg.Pool, rows_of: Callable[[bytes], Any], value: bytes) -> bool:
    """Whether every row of ``value`` is in its table."""
    try:
        rows = list(rows_of(value))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return False
    for table, row in rows:
        query, key = _KEYS[table]
        try:
            if not await pool.fetchval(query, *key(row)):
                return False
        except (asyncpg.PostgresError, OverflowError, UnicodeEncodeError):
            return False
    return True


@pytest.mark.parametrize(("topic", "rows_of", "split"), [
    ("insights", insight_rows, one_record),
    ("performance", performance_rows, array_items),
    ("errors", error_rows, array_items),
], ids=["insights", "performance", "errors"])
def test_a_sink_writes_or_dead_letters_whatever_arrives(
        rig: Rig, topic: str, rows_of: Callable[[bytes], Any],
        split: Callable[[bytes], list[bytes]]) -> None:
    handler = SinkHandler(topic, rows_of, split, rig.pool, Publisher(rig.producer))
    sent: list[Record] = []

    @SETTINGS
    @given(st.lists(MESSAGES[topic], min_size=1, max_size=6))
    def example(drawn: list[bytes]) -> None:
        partition = next(rig.partitions)
        records = stubs(partition, drawn)

        async def run() -> dict[int, int]:
            await handler.assigned({partition: 0})
            handler.records(partition, records, time.time())  # type: ignore[arg-type]
            offsets = await handler.settle()
            handler.revoked([partition])
            return offsets

        assert rig.run(run())[partition] == len(records)
        sent.extend(records)

    example()
    dead = rig.dead_letters()

    async def account() -> int:
        written = 0
        for record in sent:
            value = record.value_ or b""
            lettered = dead.get((topic, record.partition_, record.offset_), [])
            if value in lettered:
                continue
            if await stored(rig.pool, rows_of, value):
                written += 1
                continue
            # A row array: each element written, or on dead-letter as ``[element]``.
            for element in split(value):
                assert element in lettered or await stored(rig.pool, rows_of, element), (
                    record, element)
        return written

    assert rig.run(account()) > EXAMPLES / 4
    rig.reached(topic, "db_rejected", "malformed_json")


def test_the_shapes_match_the_contract() -> None:
    """The generators' bases are valid records, so hostile ones differ by what is drawn."""
    msgspec.convert(INSIGHT_BASE, Insight, strict=False)
    msgspec.convert(ERROR_BASE, ErrorRecord, strict=False)
    msgspec.convert(PERF_ROW, PerformanceRow, strict=False)
    msgspec.convert(REQUEST, AnalysisRequest, strict=False)
    assert datetime.fromisoformat(EVENT["timestamp"]).tzinfo == UTC
