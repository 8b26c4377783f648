"""Replay a day of synthetic traffic and compare every table before and after.

Produces 24 hours of events (``--per-hour`` an hour, 1% invalid, Kafka timestamps = event
times), runs ``streamsight worker`` (every agent, built-in analyzer) until everything is
written, counts the rows of every table and the dead-letter messages, then stops the
worker, moves the batcher's group back with ``streamsight replay reset --to-datetime``
(``--hours-back`` before the last event) and runs the worker again until lag is zero.
Prints both counts side by side; they must be equal. Exits 1 when they are not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.registry import topics_read
from streams import config
from streams.adapters.dlq import read
from streams.adapters.lag import LagReader, agent_groups
from streams.commands.synthetic import TrafficGenerator
from streams.core.dlq import count
from streams.local.embedded import create_database, drop_database, ensure_postgres, start_broker

TABLES = ("batches", "insights", "ai_usage", "api_performance", "error_events")
BIN = Path(sys.executable).parent / "streamsight"


def produce_day(bootstrap: str, per_hour: int, end: datetime) -> int:
    total = per_hour * 24
    start = end - timedelta(hours=24)
    step = timedelta(hours=24) / total
    clock = {"n": 0}

    def now() -> datetime:
        return start + step * clock["n"]

    generator = TrafficGenerator(sources=12, seed=2026, invalid_ratio=0.01, now=now)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "enable.idempotence": True})
    for n in range(total):
        clock["n"] = n
        key, value = generator.next()
        producer.produce(config.DEFAULT_TOPICS.events, value, key,
                         timestamp=int(now().timestamp() * 1000))
        producer.poll(0)
    assert producer.flush(60) == 0
    return total


async def counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        found = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
        found["events in batches"] = int(
            await conn.fetchval("SELECT coalesce(sum(event_count), 0) FROM batches"))
        return found
    finally:
        await conn.close()


def run_until_caught_up(env: dict[str, str], log: Path, dsn: str) -> dict[str, int]:
    """Run the worker until every group's lag is zero and the tables stop changing."""
    with log.open("ab") as out:
        worker = subprocess.Popen([str(BIN), "worker"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    reader = LagReader(env["KAFKA_BOOTSTRAP_SERVERS"],
                       agent_groups(env["APP_ID"], topics_read(config.DEFAULT_TOPICS)),
                       client_id="replay-day")
    try:
        last: dict[str, int] = {}
        steady = 0
        deadline = time.monotonic() + 600
        while steady < 3:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"worker did not catch up; see {log}")
            time.sleep(2)
            lag = sum(g.messages for g in reader.read())
            now = asyncio.run(counts(dsn))
            now["dead-letter messages"] = count(
                read(env["KAFKA_BOOTSTRAP_SERVERS"], config.DEFAULT_TOPICS.dead_letter)).total
            steady = steady + 1 if (lag == 0 and now == last) else 0
            last = now
        return last
    finally:
        reader.close()
        worker.terminate()
        worker.wait(60)


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([str(BIN), *args], env={**env, "COLUMNS": "120"}, text=True,
                            capture_output=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"streamsight {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-hour", type=int, default=1000)
    parser.add_argument("--hours-back", type=float, default=12)
    args = parser.parse_args()
    token = secrets.token_hex(4)
    admin = ensure_postgres()
    database = f"replay_day_{token}"
    dsn = create_database(admin, database)
    broker = start_broker()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamsight-replay-day-{token}.log"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "DATABASE_URL": dsn,
           "APP_ID": f"day-{token}", "CONSUMER_SESSION_TIMEOUT_MS": "6000",
           "CONSUMER_HEARTBEAT_INTERVAL_MS": "1000", "BATCH_MAX_AGE_SECONDS": "5",
           "LOG_FORMAT": "json", "WEB_ENABLED": "false"}
    try:
        cli(env, "topics", "apply")
        cli(env, "db", "migrate")
        end = datetime.now(UTC).replace(microsecond=0)
        produced = produce_day(broker.bootstrap, args.per_hour, end)
        print(f"produced {produced:,} events stamped over the 24 h before {end:%H:%M} UTC")
        before = run_until_caught_up(env, log, dsn)
        to = (end - timedelta(hours=args.hours_back)).isoformat()
        print(cli(env, "replay", "reset", "--group", "batcher", "--to-datetime", to,
                  "--execute").rstrip())
        after = run_until_caught_up(env, log, dsn)
    finally:
        broker.stop()
        drop_database(admin, database)
    print(f"\n{'table':<20}{'before':>10}{'after replay':>14}")
    for name in before:
        print(f"{name:<20}{before[name]:>10,}{after[name]:>14,}")
    # Topics are at-least-once: the refused events of the replayed range are refused
    # again, and dead-letter gets a second copy of each (same origin headers).
    tables = [name for name in before if name != "dead-letter messages"]
    if any(before[name] != after[name] for name in tables):
        raise SystemExit("the replay changed the tables")
    print(f"replay of the last {args.hours_back:g} h added no row to any table; dead-letter "
          f"got {after['dead-letter messages'] - before['dead-letter messages']:,} copies "
          "of the refused events it re-read (at-least-once, same origin headers)")


if __name__ == "__main__":
    main()
