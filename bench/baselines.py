"""Baseline contenders for ``bench/run.py``: the same job written three ways.

Each contender consumes ``--events`` events from its own consumer group, parses them,
keeps one open batch per key, and produces one summary per 100 events of a key. It prints
one JSON line on stdout (events, elapsed_s, summaries, peak_rss_mib), where the clock
runs from the first record consumed to the last summary produced and flushed, so group
join and process start are left out. run.py starts each in its own process so that peak
RSS is the contender's own.

    python bench/baselines.py {aiokafka,confluent,faust} --bootstrap HOST:PORT ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

BATCH_SIZE = 100
FETCH_RECORDS = 1000
# Tansu holds a new group's join for about half the session timeout; keep it short.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 1_000


def summarize(key: bytes, events: Sequence[Mapping[str, Any]]) -> bytes:
    """The one summary every contender computes, so they do equal work per batch."""
    stamps = [e["timestamp"] for e in events]
    durations = [e["http"]["duration_ms"] for e in events if e.get("http")]
    return orjson.dumps(
        {
            "key": key.decode(),
            "count": len(events),
            # Same-format RFC 3339 UTC strings order like the instants they name.
            "first_event_at": min(stamps),
            "last_event_at": max(stamps),
            "errors": sum(1 for e in events if e["event_type"] == "error"),
            "mean_duration_ms": sum(durations) / len(durations) if durations else None,
        }
    )


def peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM: the peak RSS of this process image only.

    Not getrusage: a child's ru_maxrss also counts the parent's pages from before exec.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def report(events: int, elapsed_s: float, summaries: int) -> None:
    line = {
        "events": events,
        "elapsed_s": elapsed_s,
        "summaries": summaries,
        "peak_rss_mib": peak_rss_mib(),
    }
    # Straight to fd 1: Faust's worker redirects sys.stdout into its logger.
    os.write(1, orjson.dumps(line) + b"\n")


async def run_aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", linger_ms=5, max_batch_size=262_144
    )
    await producer.start()
    await consumer.start()
    open_batches: defaultdict[bytes, list[dict[str, Any]]] = defaultdict(list)
    seen = summaries = 0
    started: float | None = None
    try:
        while seen < args.events:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=FETCH_RECORDS)
            if not fetched:
                continue
            if started is None:
                started = time.perf_counter()
            for records in fetched.values():
                for record in records:
                    key = record.key or b""
                    batch = open_batches[key]
                    batch.append(orjson.loads(record.value or b""))
                    if len(batch) == BATCH_SIZE:
                        await producer.send(args.out_topic, summarize(key, batch), key=key)
                        summaries += 1
                        del open_batches[key]
                seen += len(records)
            await consumer.commit()
        await producer.flush()
        assert started is not None
        report(seen, time.perf_counter() - started, summaries)
    finally:
        await consumer.stop()
        await producer.stop()


def run_confluent(args: argparse.Namespace) -> None:
    from confluent_kafka import Consumer, KafkaException, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            # The default (1 s) idles the fetcher between small fetches from Tansu.
            "fetch.queue.backoff.ms": 5,
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5})
    consumer.subscribe([args.topic])
    open_batches: defaultdict[bytes, list[dict[str, Any]]] = defaultdict(list)
    seen = summaries = 0
    started: float | None = None
    try:
        while seen < args.events:
            messages = consumer.consume(FETCH_RECORDS, timeout=1.0)
            if not messages:
                continue
            if started is None:
                started = time.perf_counter()
            for message in messages:
                if message.error():
                    raise KafkaException(message.error())
                key = message.key() or b""
                batch = open_batches[key]
                batch.append(orjson.loads(message.value() or b""))
                if len(batch) == BATCH_SIZE:
                    producer.produce(args.out_topic, summarize(key, batch), key=key)
                    summaries += 1
                    del open_batches[key]
            seen += len(messages)
            producer.poll(0)
            consumer.commit(asynchronous=True)
        producer.flush()
        assert started is not None
        report(seen, time.perf_counter() - started, summaries)
    finally:
        consumer.close()


def run_faust(args: argparse.Namespace) -> None:
    # Imported here: Faust's import alone would inflate the raw contenders' RSS.
    from faust_baseline import run

    run(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=["aiokafka", "confluent", "faust"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="events")
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--cap", type=float, default=120.0, help="seconds of processing")
    args = parser.parse_args()
    if args.name == "aiokafka":
        asyncio.run(run_aiokafka(args))
    elif args.name == "confluent":
        run_confluent(args)
    else:
        run_faust(args)


if __name__ == "__main__":
    main()
