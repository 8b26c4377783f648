"""Real processes and real topics for the end-to-end tests: workers, traffic, readers."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    Producer,
    TopicPartition,
)

from streams.adapters.kafka import Cluster, make_admin
from streams.adapters.topics import apply_plan, load_topics, plan_topics
from streams.commands.synthetic import TrafficGenerator
from streams.local.embedded import start_local_broker

ROOT = Path(__file__).resolve().parents[2]


class Broker(Protocol):
    """What the tests need of a broker, Tansu or Apache Kafka."""

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...


def own_broker(kind: str = "tansu") -> Iterator[Broker]:
    """A broker for one test, with every topic of topics.yaml: tests that kill workers
    must not share consumer groups or topics with other tests. ``kind`` is ``tansu`` or
    ``kafka`` (Apache Kafka 4.4, one KRaft node)."""
    broker = start_local_broker(kind)
    try:
        admin = make_admin(broker.bootstrap)
        declared = load_topics(ROOT / "topics.yaml")
        # As `streamsight topics apply` does: Kafka creates no topic on first use.
        apply_plan(admin, plan_topics(admin, declared))
        yield broker
    finally:
        broker.close()


class Worker:
    """``streamsight worker`` as a child process with its own log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, agents: str = "batcher"):
        self.name = name
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.agents = agents
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Worker:
        self.starts += 1
        with (self.log_dir / f"{self.name}-{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--agents", self.agents],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        return self

    def close(self) -> None:
        """Kill the process if a failed test left it running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the worker seals what is open and commits."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.log_dir.glob(f"{self.name}-*.log")))


def worker_env(broker: Broker, dsn: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "DATABASE_URL": dsn,
        "APP_ID": "it",
        "CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "WEB_ENABLED": "false",
        **extra,
    }


INVALID_SAMPLES = [
    b"{not json",
    b'{"event_id": "x", "event_type": "http_request"}',
    b'{"event_id": 5, "event_type": "t", "source": "s", "timestamp": "2026-01-01T00:00:00Z"}',
    b"",
    b'{"event_id": "y", "event_type": "t", "source": "s", "timestamp": "yesterday"}',
]


@dataclass
class Traffic:
    """What was acknowledged by the broker, by kind."""

    valid: dict[str, tuple[int, int]] = field(default_factory=dict)  # event_id -> (p, o)
    invalid: set[tuple[int, int]] = field(default_factory=set)
    failed: int = 0


def produce(
    bootstrap: str, count: int, *, sources: int = 20, rate: float = 0.0,
    invalid_every: int = 0, seed: int = 7, traffic: Traffic | None = None,
    topic: str = "events",
) -> Traffic:
    """Send ``count`` events (every ``invalid_every``-th one invalid), paced at ``rate``."""
    traffic = traffic or Traffic()
    generator = TrafficGenerator(sources=sources, seed=seed)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": True})

    def delivered(err: object, msg: object, event_id: str | None) -> None:
        if err is not None:
            traffic.failed += 1
            return
        where = (msg.partition(), msg.offset())  # type: ignore[attr-defined]
        if event_id is None:
            traffic.invalid.add(where)
        else:
            traffic.valid[event_id] = where

    started = time.monotonic()
    for n in range(count):
        key, value = generator.next()
        assert key is not None
        event_id: str | None = orjson.loads(value)["event_id"]
        if invalid_every and n % invalid_every == invalid_every - 1:
            value, event_id = INVALID_SAMPLES[n % len(INVALID_SAMPLES)], None
        producer.produce(topic, value, key, on_delivery=(
            lambda err, msg, eid=event_id: delivered(err, msg, eid)))
        producer.poll(0)
        if rate:
            ahead = (n + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(30)
    return traffic


def read_topic(bootstrap: str, topic: str, *, idle: float = 3.0, within: float = 120,
               ) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    """Every message of ``topic`` from the beginning: read at least up to each partition's
    end as it was when called, then until ``idle`` seconds pass without one (for messages
    still on their way). Assigned, not subscribed: no consumer-group join to wait for."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{random.random()}",
                         "enable.auto.commit": False})
    out: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    try:
        with Cluster(bootstrap, "it-read") as cluster:
            bounds = cluster.bounds(topic, cluster.partitions(topic))
        partitions = list(bounds)
        ends = {p: end for p, (low, end) in bounds.items() if end > low}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + within
        last = time.monotonic()
        while ends or time.monotonic() - last < idle:
            assert time.monotonic() < deadline, f"{topic}: not read up to {ends}"
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    headers = {k: v for k, v in (message.headers() or []) if v is not None}
                    out.append((message.key(), message.value(), headers))
                    last = time.monotonic()
            if ends:
                reached = consumer.position([TopicPartition(topic, p) for p in ends])
                ends = {tp.partition: ends[tp.partition] for tp in reached
                        if tp.offset < ends[tp.partition]}
    finally:
        consumer.close()
    return out


async def batch_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM batches ORDER BY topic, partition, first_offset")
    finally:
        await conn.close()


async def table_count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def events_batched(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(event_count), 0) FROM batches"))
    finally:
        await conn.close()


async def wait_for_log(worker: Worker, text: str, times: int = 1, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while worker.log_text().count(text) < times:
        assert time.monotonic() < deadline, f"no {text!r} x{times}:\n{worker.log_text()[-3000:]}"
        await asyncio.sleep(0.2)


def expected_rows(bootstrap: str) -> tuple[set[str], set[str]]:
    """The event ids that must have an api_performance row (timed events) and an
    error_events row (error events), from what is on the events topic."""
    from datetime import UTC, datetime

    from streams.core.models import Event
    from streams.core.rows import is_error
    from streams.core.schema import parse

    timed: set[str] = set()
    failed: set[str] = set()
    for key, value, headers in read_topic(bootstrap, "events", idle=2.0):
        event = parse(key, value, list(headers.items()), now=datetime.now(UTC))
        if isinstance(event, Event):
            if event.http is not None and event.http.duration_ms is not None:
                timed.add(event.event_id)
            if is_error(event):
                failed.add(event.event_id)
    return timed, failed


async def stored_rows(dsn: str) -> tuple[list[str], list[str]]:
    """Event ids in api_performance and in error_events (event rows), duplicates kept."""
    conn = await asyncpg.connect(dsn)
    try:
        return ([r[0] for r in await conn.fetch("SELECT event_id FROM api_performance")],
                [r[0] for r in await conn.fetch(
                    "SELECT event_id FROM error_events WHERE event_id IS NOT NULL")])
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``streamsight <args>`` as a user runs it, with a wide terminal for its tables."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200", **env}, capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)


async def wait_for(check: Any, within: float, what: str, workers: list[Worker]) -> None:
    """Until ``check()`` is true; it may return (done, what it saw) for the failure."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        done, seen = result if isinstance(result, tuple) else (result, "")
        if done:
            return
        if time.monotonic() > deadline:
            logs = "\n".join(w.log_text()[-3000:] for w in workers)
            raise AssertionError(f"{what} not within {within}s: {seen}\n{logs}")
        await asyncio.sleep(0.5)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p)
                                                   for p in range(partitions)])
    admin = make_admin(bootstrap)  # kept referenced until the answer is in
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return [tp.offset for tp in sorted(result.topic_partitions, key=lambda tp: tp.partition)]


def exact_ends(bootstrap: str, topic: str) -> dict[int, int]:
    with Cluster(bootstrap, "it-ends") as cluster:
        return {p: end for p, (_, end) in cluster.bounds(topic, cluster.partitions(topic)).items()}


def caught_up(bootstrap: str, group: str, topic: str) -> Any:
    async def check() -> tuple[bool, str]:
        ends = [end for _, end in sorted(exact_ends(bootstrap, topic).items())]
        # No commit on an empty partition is as good as one at its end (0 here).
        now = [max(0, o) for o in committed(bootstrap, group, topic, len(ends))]
        return now == ends, f"committed {now}, ends {ends}"
    return check
