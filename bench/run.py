"""Throughput benchmark: the streamsight batcher against its baselines, in one run.

On each broker chosen (embedded Tansu, Apache Kafka or both, one after the other): starts
it, produces the events once, then runs every contender in its own process, each reading
all of the data from its own consumer group. Prints events/s, peak RSS and ratios against
raw aiokafka, writes bench/results/<UTC time>-<broker>.json, and ends with one line
``batcher/raw-aiokafka on <broker> = <ratio>`` per broker. See bench/README.md.

    .venv/bin/python bench/run.py [--broker tansu|kafka|both] [--events 300000]
        [--only aiokafka,confluent,faust,batcher] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import asyncpg
import orjson
from baselines import peak_rss_mib
from brokers import BROKERS
from confluent_kafka import Producer

# Public names that confluent_kafka.admin re-exports without __all__.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.commands.synthetic import TrafficGenerator
from streams.local.embedded import (
    create_database,
    drop_database,
    ensure_postgres,
    start_local_broker,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
TOPIC = "events"
PARTITIONS = 4
KEYS = 20
BATCH_SIZE = 100
SEED = 20_250_301
# Idiomatic Faust runs at ~1% of the raw clients: a tenth of the data keeps the bench short.
FAUST_EVENTS = 30_000
FAUST_CAP_S = 120.0
# Start-up, group join and shutdown on top of the processing time.
OVERHEAD_S = 60.0
BATCHER_TIMEOUT_S = 240.0
TOPIC_CONFIGS = {"retention.ms": "604800000", "cleanup.policy": "delete"}

LABELS = {
    "aiokafka": "raw-aiokafka",
    "confluent": "raw-confluent",
    "faust": "faust-idiomatic",
    "batcher": "batcher",
}


@dataclass
class Result:
    name: str
    events: int = 0
    elapsed_s: float = 0.0
    summaries: int = 0
    peak_rss_mib: float = 0.0
    error: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 and not self.error else 0.0


class _Drain:
    """Reads a child's pipe on a thread so it never blocks on a full pipe."""

    def __init__(self, pipe: IO[bytes], on_line: Callable[[bytes], None] | None = None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._on_line = on_line
        self._thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self._thread.start()

    def _run(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            self.lines.append(raw.decode(errors="replace").rstrip())
            if self._on_line is not None:
                self._on_line(raw)

    def finished(self) -> list[str]:
        """All lines kept, once the child has closed the pipe (it has exited)."""
        self._thread.join(timeout=5)
        return list(self.lines)

    def tail(self, n: int = 8) -> str:
        return " | ".join(self.finished()[-n:])


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait up to ``timeout`` for ``proc``; its exit code, or None if it still runs."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = _reap(proc, grace)
    if code is None:
        proc.kill()
        code = _reap(proc, 10)
    return code


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, PARTITIONS, 1, config=TOPIC_CONFIGS) for n in names], operation_timeout=30
    )
    for future in futures.values():
        future.result()


def shaped_events(total: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``total`` valid events in which every key has a multiple of 100.

    Every batch then seals by count, so "all events are in sealed batches" is an end
    condition that each contender reaches without waiting for the age limit.
    """
    gen = TrafficGenerator(sources=KEYS, seed=seed)
    first = gen.batch(total)
    counts = collections.Counter(k for k, _ in first)
    quota = {k: c // BATCH_SIZE * BATCH_SIZE for k, c in counts.items()}
    missing = (total - sum(quota.values())) // BATCH_SIZE
    for key in sorted(counts, key=lambda k: counts[k] % BATCH_SIZE, reverse=True)[:missing]:
        quota[key] += BATCH_SIZE
    taken: collections.Counter[bytes | None] = collections.Counter()
    kept: list[tuple[bytes, bytes]] = []

    def keep(key: bytes | None, value: bytes) -> None:
        if key is not None and taken[key] < quota.get(key, 0):
            taken[key] += 1
            kept.append((key, value))

    for key, value in first:
        keep(key, value)
    while len(kept) < total:
        keep(*gen.next())
    return kept


def produce_events(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
        }
    )
    started = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(TOPIC, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("events were not all acknowledged by the broker")
    return time.perf_counter() - started


def run_baseline(name: str, bootstrap: str, events: int, token: str) -> Result:
    out_topic = f"bench-summaries-{name}-{token}"
    create_topics(bootstrap, [out_topic])
    cap = FAUST_CAP_S if name == "faust" else BATCHER_TIMEOUT_S
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "baselines.py"),
            name,
            f"--bootstrap={bootstrap}",
            f"--topic={TOPIC}",
            f"--out-topic={out_topic}",
            f"--group=bench-{name}-{token}",
            f"--events={events}",
            f"--cap={cap}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Drain(proc.stdout), _Drain(proc.stderr)
    code = _reap(proc, cap + OVERHEAD_S)
    if code is None:
        _stop(proc)
        return Result(name, error=f"no result within {cap + OVERHEAD_S:.0f}s: {err.tail()}")
    # Faust's worker writes terminal control codes on stdout ahead of our line.
    marker = '{"events"'
    figures = next(
        (json.loads(line[line.index(marker) :]) for line in out.finished() if marker in line),
        None,
    )
    if figures is None:
        return Result(name, error=f"exit {code}: {err.tail()}")
    return Result(
        name,
        events=figures["events"],
        elapsed_s=figures["elapsed_s"],
        summaries=figures["summaries"],
        peak_rss_mib=figures["peak_rss_mib"],
    )


def _streamsight(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "streamsight"
    return subprocess.run(
        [str(cli), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tail(text: str, n: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-n:])


async def _sealed_events(dsn: str, target: int, exited: Callable[[], bool]) -> float | None:
    """Poll the batches table until it holds ``target`` events; the wall time then."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + BATCHER_TIMEOUT_S
        while time.monotonic() < deadline and not exited():
            total = await conn.fetchval("SELECT coalesce(sum(event_count), 0) FROM batches")
            if total >= target:
                return time.time()
            await asyncio.sleep(0.05)
        return None
    finally:
        await conn.close()


def run_batcher(bootstrap: str, events: int, token: str) -> Result:
    """The streamsight worker, run exactly as a user would, timed through its own logs."""
    admin_dsn = ensure_postgres()
    database = f"bench_{token}"
    dsn = create_database(admin_dsn, database)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": dsn,
        "APP_ID": f"bench-{token}",
        "BATCH_MAX_EVENTS": str(BATCH_SIZE),
        "CONSUMER_SESSION_TIMEOUT_MS": "10000",
        "LOG_FORMAT": "json",
    }
    try:
        migrate = _streamsight(["db", "migrate"], env)
        if migrate.returncode != 0:
            return Result("batcher", error=f"db migrate failed: {_tail(migrate.stderr)}")
        # Declared topics the batcher writes to; `events` already exists and is left as is.
        topics = _streamsight(["topics", "apply"], env)
        if topics.returncode != 0:
            return Result("batcher", error=f"topics apply failed: {_tail(topics.stderr)}")
        return _time_worker(env, dsn, events)
    finally:
        drop_database(admin_dsn, database)


def _time_worker(env: dict[str, str], dsn: str, events: int) -> Result:
    first_fetch: list[float] = []

    def on_line(raw: bytes) -> None:
        with contextlib.suppress(ValueError):
            entry = orjson.loads(raw)
            # structlog's JSON renderer here names the event "message" (EventRenamer).
            name = entry.get("message", entry.get("event")) if isinstance(entry, dict) else None
            if name == "fetch.first" and not first_fetch:
                first_fetch.append(float(entry["ts"]))

    cli = Path(sys.executable).parent / "streamsight"
    proc = subprocess.Popen(
        [str(cli), "worker", "--agents", "batcher"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = _Drain(proc.stderr, on_line)
    rss = 0.0
    try:
        ended = asyncio.run(_sealed_events(dsn, events, lambda: proc.poll() is not None))
        if proc.poll() is None:
            rss = peak_rss_mib(proc.pid)
    finally:
        code = _stop(proc)
    if ended is None:
        return Result("batcher", peak_rss_mib=rss, error=f"exit {code}: {err.tail()}")
    if not first_fetch:
        return Result(
            "batcher", peak_rss_mib=rss, error=f"worker never logged fetch.first: {err.tail()}"
        )
    return Result("batcher", events=events, elapsed_s=ended - first_fetch[0], peak_rss_mib=rss)


def _median(name: str, runs: list[Result]) -> Result:
    """The median successful run of a contender (or its first failure)."""
    mine = [r for r in runs if r.name == name]
    ok = sorted((r for r in mine if not r.error), key=lambda r: r.events_per_s)
    return ok[(len(ok) - 1) // 2] if ok else mine[0]


def _ratio(result: Result, base: Result | None) -> float | None:
    if base is None or result.error or base.error or not base.events_per_s:
        return None
    return result.events_per_s / base.events_per_s


def run_on(kind: str, args: argparse.Namespace, chosen: list[str]) -> tuple[list[Result], float]:
    """Every run of every chosen contender on a fresh broker of ``kind``, and the average
    event size in bytes."""
    token = secrets.token_hex(4)
    broker = start_local_broker(kind)
    runs: list[Result] = []
    try:
        create_topics(broker.bootstrap, [TOPIC])
        messages = shaped_events(args.events, SEED)
        size = sum(len(v) for _, v in messages) / len(messages)
        produce_s = produce_events(broker.bootstrap, messages)
        del messages
        print(
            f"\n{BROKERS[kind]}: produced {args.events:,} events "
            f"({size:.0f} B avg, {KEYS} keys, {PARTITIONS} partitions) "
            f"in {produce_s:.1f}s on {broker.bootstrap}",
            flush=True,
        )
        # Interleaved rounds: a noisy neighbour slows every contender, not just one.
        for round_ in range(1, args.rounds + 1):
            for name in chosen:
                if name == "faust" and round_ > 1:
                    continue
                print(f"round {round_}: running {LABELS[name]} on {kind} ...", flush=True)
                if name == "batcher":
                    result = run_batcher(broker.bootstrap, args.events, f"{token}{round_}")
                else:
                    target = min(args.events, FAUST_EVENTS) if name == "faust" else args.events
                    result = run_baseline(name, broker.bootstrap, target, f"{token}{round_}")
                runs.append(result)
    finally:
        broker.close()
    return runs, size


def report(
    kind: str, args: argparse.Namespace, chosen: list[str], runs: list[Result], size: float
) -> str:
    """Print the table and write the JSON of one broker's runs; its batcher ratio line."""
    results = [_median(name, runs) for name in chosen]
    base = next((r for r in results if r.name == "aiokafka"), None)
    header = f"{'contender':<16}{'events':>9}{'seconds':>9}{'events/s':>11}{'RSS MiB':>9}"
    print(f"\n{BROKERS[kind]}\n{header}  vs aiokafka")
    for r in results:
        if r.error:
            print(f"{LABELS[r.name]:<16} FAILED: {r.error}")
            continue
        ratio = _ratio(r, base)
        print(
            f"{LABELS[r.name]:<16}{r.events:>9,}{r.elapsed_s:>9.2f}{r.events_per_s:>11,.0f}"
            f"{r.peak_rss_mib:>9.0f}  {'-' if ratio is None else f'{ratio:.3f}'}"
        )

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{stamp}-{kind}.json"
    path.write_text(
        json.dumps(
            {
                "timestamp": stamp,
                "broker": kind,
                "broker_label": BROKERS[kind],
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "setup": {
                    "events": args.events,
                    "faust_events": min(args.events, FAUST_EVENTS),
                    "keys": KEYS,
                    "partitions": PARTITIONS,
                    "batch_size": BATCH_SIZE,
                    "avg_event_bytes": round(size, 1),
                },
                "rounds": args.rounds,
                "runs": [{**asdict(r), "events_per_s": r.events_per_s} for r in runs],
                "results": [
                    {
                        **asdict(r),
                        "label": LABELS[r.name],
                        "events_per_s": r.events_per_s,
                        "vs_aiokafka": _ratio(r, base),
                    }
                    for r in results
                ],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {path.relative_to(BENCH_DIR.parent)}")
    batcher = next((r for r in results if r.name == "batcher"), None)
    ratio = _ratio(batcher, base) if batcher else None
    figure = "not run" if batcher is None else "failed" if ratio is None else f"{ratio:.3f}"
    return f"batcher/raw-aiokafka on {kind} = {figure}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--broker", choices=[*BROKERS, "both"], default="both",
        help="the broker to run on; both: Tansu, then Apache Kafka",
    )
    parser.add_argument("--events", type=int, default=300_000, help="multiple of 100")
    parser.add_argument("--only", default=",".join(LABELS), help="comma-separated contenders")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="runs per contender, interleaved; the median run is reported (faust runs once)",
    )
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(chosen) - set(LABELS)
    if unknown or args.events % BATCH_SIZE or args.events < BATCH_SIZE:
        parser.error(f"--events must be a multiple of {BATCH_SIZE}; known: {', '.join(LABELS)}")

    kinds = list(BROKERS) if args.broker == "both" else [args.broker]
    lines = [report(kind, args, chosen, *run_on(kind, args, chosen)) for kind in kinds]
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
