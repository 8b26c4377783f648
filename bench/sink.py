"""Sink benchmark: performance rows from Kafka into api_performance, against raw COPY.

300,000 ``PerformanceRow`` rows on ``performance`` (4 partitions, Tansu or Kafka), in
messages of up to 1000 rows per source as the batcher sends them;
``streamsight worker --agents sink-performance`` writes them (decode, COPY, staging and
INSERT ... ON CONFLICT DO NOTHING only on conflict, commit after the write): rows/s from
its first fetch until the table holds them all. In the same run, the limit: asyncpg
``copy_records_to_table`` of the same rows into an identical table. Prints both and the
ratio, writes bench/results/sink-<UTC stamp>-<broker>.json; the last line is
``sink/raw-copy on <broker> = <ratio>``.

    .venv/bin/python bench/sink.py [--broker tansu|kafka] [--rows 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import orjson
from brokers import BROKERS
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.core.models import PerformanceRow
from streams.core.rows import chunks
from streams.local.embedded import (
    create_database,
    drop_database,
    ensure_postgres,
    start_local_broker,
)

RESULTS = Path(__file__).parent / "results"
COLUMNS = ("time", "source", "route", "method", "status_code", "duration_ms", "success",
           "event_id")
COPY_CHUNK = 20_000


def make_rows(count: int) -> list[PerformanceRow]:
    base = datetime(2026, 11, 25, tzinfo=UTC)
    return [PerformanceRow(time=base + timedelta(milliseconds=n), source=f"svc-{n % 20}",
                           event_id=f"evt-{n:09d}", duration_ms=float(n % 997) / 3,
                           success=n % 50 != 0, route=f"/api/r{n % 40}", method="GET",
                           status_code=500 if n % 50 == 0 else 200)
            for n in range(count)]


def cli(args: list[str], env: dict[str, str]) -> None:
    binary = Path(sys.executable).parent / "streamsight"
    subprocess.run([str(binary), *args], env=env, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=120)


async def raw_copy(dsn: str, rows: list[PerformanceRow]) -> float:
    """rows/s of plain COPY into a table like api_performance (same keys and indexes)."""
    records = [(r.time, r.source, r.route, r.method, r.status_code, r.duration_ms,
                r.success, r.event_id) for r in rows]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE raw_performance (LIKE api_performance INCLUDING ALL)")
        started = time.perf_counter()
        for i in range(0, len(records), COPY_CHUNK):
            await conn.copy_records_to_table("raw_performance", records=records[i:i + COPY_CHUNK],
                                             columns=COLUMNS)
        return len(records) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def wait_for_rows(dsn: str, count: int, worker: subprocess.Popen[bytes]) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and worker.poll() is None:
            if await conn.fetchval("SELECT count(*) FROM api_performance") >= count:
                return time.time()
            await asyncio.sleep(0.05)
        raise SystemExit("sink did not write every row")
    finally:
        await conn.close()


def run_sink(env: dict[str, str], dsn: str, count: int) -> float:
    binary = Path(sys.executable).parent / "streamsight"
    log = Path(env["RUN_DIR"]) / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([str(binary), "worker", "--agents", "sink-performance"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    try:
        ended = asyncio.run(wait_for_rows(dsn, count, worker))
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(30)
    first = next(orjson.loads(line)["ts"] for line in log.read_bytes().splitlines()
                 if b'"fetch.first"' in line)
    return count / (ended - float(first))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", choices=BROKERS, default="tansu")
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    token = secrets.token_hex(4)
    admin = ensure_postgres()
    database = f"bench_sink_{token}"
    dsn = create_database(admin, database)
    broker = start_local_broker(args.broker)
    run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamsight-bench-sink-{token}"
    run_dir.mkdir(parents=True)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "DATABASE_URL": dsn,
           "APP_ID": f"bench-sink-{token}", "CONSUMER_SESSION_TIMEOUT_MS": "10000",
           "LOG_FORMAT": "json", "WEB_ENABLED": "false", "RUN_DIR": str(run_dir)}
    try:
        cli(["db", "migrate"], env)
        cli(["topics", "apply"], env)
        rows = make_rows(args.rows)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20,
                             "compression.type": "lz4"})
        encode = msgspec.json.Encoder().encode
        # As the batcher sends them: a message per source and fetch, up to 1000 rows each.
        by_source: dict[str, list[PerformanceRow]] = {}
        for row in rows:
            by_source.setdefault(row.source, []).append(row)
        for source, source_rows in by_source.items():
            for chunk in chunks(source_rows):
                producer.produce("performance", encode(chunk), source.encode())
                producer.poll(0)
        producer.flush(60)
        raw = asyncio.run(raw_copy(dsn, rows))
        sink = run_sink(env, dsn, args.rows)
    finally:
        broker.close()
        drop_database(admin, database)
    ratio = sink / raw
    print(f"{'writer':<22}{'rows/s':>12}  on {BROKERS[args.broker]}")
    print(f"{'raw copy_records':<22}{raw:>12,.0f}")
    print(f"{'sink-performance':<22}{sink:>12,.0f}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"sink-{stamp}-{args.broker}.json"
    path.write_text(json.dumps({"timestamp": stamp, "broker": args.broker, "rows": args.rows,
                                "raw_rows_per_s": raw, "sink_rows_per_s": sink, "ratio": ratio,
                                "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print(f"results: {path.relative_to(RESULTS.parent.parent)}")
    print(f"sink/raw-copy on {args.broker} = {ratio:.3f}")


if __name__ == "__main__":
    main()
