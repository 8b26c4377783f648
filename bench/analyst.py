"""Analyst benchmark: insights/s and seal-to-insight latency with the built-in analyzer.

Starts the broker (embedded Tansu or Apache Kafka), the topics of topics.yaml and a
freshly migrated database, then ``streamsight worker`` (every agent) without
OPENAI_API_KEY. Once both FetchLoops logged ``fetch.assigned`` it produces the events
(every key a multiple of 100, so every batch seals by count) and reads ``insights`` from
the beginning until there is one insight per batch. Prints a short table, writes
bench/results/analyst-<UTC time>-<broker>.json and exits 1 if the run failed. See
bench/README.md.

    .venv/bin/python bench/analyst.py [--broker tansu|kafka] [--events 30000] [--timeout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
import orjson
from baselines import peak_rss_mib
from brokers import BROKERS
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from run import (
    BATCH_SIZE,
    KEYS,
    SEED,
    _Drain,
    _stop,
    _tail,
    produce_events,
    shaped_events,
)

from streams import config
from streams.core.analysis import ANALYZER_VERSION
from streams.core.models import Insight
from streams.local.embedded import (
    create_database,
    drop_database,
    ensure_postgres,
    start_local_broker,
)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PARTITIONS = 4  # of `insights` in topics.yaml
LOOPS = ("batcher", "analyst")
ASSIGN_TIMEOUT_S = 90.0
CLI_TIMEOUT_S = 120.0


class BenchError(Exception):
    """The run cannot give figures; the message says why."""


@dataclass
class Figures:
    events: int
    batches: int
    insights: int = 0
    analyzer: str = ""
    produce_s: float = 0.0
    created_span_s: float = 0.0
    wall_span_s: float = 0.0
    insights_per_s_created: float = 0.0
    insights_per_s_wall: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    worker_peak_rss_mib: float = 0.0
    error: str | None = None


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest rank on an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _streamsight(args: list[str], env: dict[str, str]) -> None:
    cli = Path(sys.executable).parent / "streamsight"
    done = subprocess.run(
        [str(cli), *args], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"streamsight {' '.join(args)} failed: {_tail(done.stderr)}")


def _start_worker(env: dict[str, str], cwd: str) -> tuple[subprocess.Popen[bytes], _Drain]:
    """The worker, and the drain of its log; returns once both FetchLoops are assigned."""
    assigned: set[str] = set()
    ready = threading.Event()

    def on_line(raw: bytes) -> None:
        with contextlib.suppress(ValueError):
            entry = orjson.loads(raw)
            if isinstance(entry, dict) and entry.get("message") == "fetch.assigned":
                assigned.add(str(entry.get("loop")))
                if assigned.issuperset(LOOPS):
                    ready.set()

    cli = Path(sys.executable).parent / "streamsight"
    # A scratch directory as cwd: no .env is read (it could hold OPENAI_API_KEY) and
    # Faust's data directory goes away with it.
    proc = subprocess.Popen(
        [str(cli), "worker"], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    drain = _Drain(proc.stderr, on_line)
    deadline = time.monotonic() + ASSIGN_TIMEOUT_S
    while not ready.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise BenchError(f"worker never had both loops assigned: {drain.tail()}")
    return proc, drain


def _read_insights(bootstrap: str, wanted: int, timeout: float,
                   alive: Callable[[], bool]) -> dict[str, Insight]:
    """Distinct insights by insight_id, read until ``wanted`` or ``timeout`` seconds."""
    # confluent-kafka insists on a group.id; with assign() and no commits it never joins.
    consumer = Consumer({"bootstrap.servers": bootstrap, "enable.auto.commit": False,
                         "group.id": f"bench-analyst-reader-{secrets.token_hex(4)}"})
    consumer.assign([TopicPartition(config.DEFAULT_TOPICS.insights, p, OFFSET_BEGINNING)
                     for p in range(PARTITIONS)])
    decoder = msgspec.json.Decoder(Insight)
    seen: dict[str, Insight] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < wanted and time.monotonic() < deadline and alive():
            for message in consumer.consume(1000, 0.2):
                value = message.value()
                if message.error() is None and value is not None:
                    insight = decoder.decode(value)
                    seen.setdefault(insight.insight_id, insight)
    finally:
        consumer.close()
    return seen


async def _sealed_at(dsn: str, batch_ids: list[str]) -> tuple[dict[str, datetime], datetime]:
    """sealed_at of the given batches, and the first seal of all."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT batch_id::text AS id, sealed_at FROM batches WHERE batch_id = ANY($1::uuid[])",
            batch_ids,
        )
        first = await conn.fetchval("SELECT min(sealed_at) FROM batches")
    finally:
        await conn.close()
    return {r["id"]: r["sealed_at"] for r in rows}, first


def _measure(fig: Figures, insights: dict[str, Insight], dsn: str) -> None:
    fig.insights = len(insights)
    analyzers = sorted({i.analyzer for i in insights.values()})
    fig.analyzer = ",".join(analyzers)
    if analyzers != [ANALYZER_VERSION]:
        raise BenchError(f"expected the built-in analyzer {ANALYZER_VERSION}, got {analyzers}")
    sealed, first_seal = asyncio.run(
        _sealed_at(dsn, sorted({i.batch_id for i in insights.values()}))
    )
    created = sorted(i.created_at for i in insights.values())
    fig.created_span_s = (created[-1] - created[0]).total_seconds()
    fig.wall_span_s = (created[-1] - first_seal).total_seconds()
    if fig.created_span_s > 0:
        fig.insights_per_s_created = fig.insights / fig.created_span_s
    if fig.wall_span_s > 0:
        fig.insights_per_s_wall = fig.insights / fig.wall_span_s
    missing = [i.batch_id for i in insights.values() if i.batch_id not in sealed]
    if missing:
        raise BenchError(f"{len(missing)} insights name batches not in `batches`: {missing[:3]}")
    lat = sorted((i.created_at - sealed[i.batch_id]).total_seconds() * 1000
                 for i in insights.values())
    fig.latency_ms = {
        "p50": round(_percentile(lat, 0.50), 2),
        "p95": round(_percentile(lat, 0.95), 2),
        "max": round(lat[-1], 2),
        "mean": round(sum(lat) / len(lat), 2),
    }


def run(kind: str, events: int, timeout: float) -> Figures:
    fig = Figures(events=events, batches=events // BATCH_SIZE)
    token = secrets.token_hex(4)
    broker = start_local_broker(kind)
    admin_dsn: str | None = None
    database = f"bench_analyst_{token}"
    try:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "TOPICS_FILE": str(ROOT / "topics.yaml"),
        }
        env.pop("OPENAI_API_KEY", None)
        _streamsight(["topics", "apply"], env)
        admin_dsn = ensure_postgres()
        env["DATABASE_URL"] = dsn = create_database(admin_dsn, database)
        _streamsight(["db", "migrate"], env)
        env.update({
            "APP_ID": f"bench-analyst-{token}",
            "BATCH_MAX_EVENTS": str(BATCH_SIZE),
            "BATCH_MAX_AGE_SECONDS": "600",
            "CONSUMER_SESSION_TIMEOUT_MS": "10000",
            "LOG_FORMAT": "json",
            "WEB_ENABLED": "false",
        })
        messages = shaped_events(events, SEED)
        with tempfile.TemporaryDirectory(prefix="bench-analyst-") as scratch:
            proc, drain = _start_worker(env, scratch)
            try:
                fig.produce_s = produce_events(broker.bootstrap, messages)
                del messages
                insights = _read_insights(broker.bootstrap, fig.batches, timeout,
                                          lambda: proc.poll() is None)
                if proc.poll() is None:
                    fig.worker_peak_rss_mib = round(peak_rss_mib(proc.pid), 1)
            finally:
                code = _stop(proc)
            if len(insights) < fig.batches:
                raise BenchError(
                    f"{len(insights)}/{fig.batches} insights within {timeout:.0f}s "
                    f"(worker exit {code}): {drain.tail()}"
                )
            _measure(fig, insights, dsn)
    except BenchError as exc:
        fig.error = str(exc)
    finally:
        broker.close()
        if admin_dsn is not None:
            drop_database(admin_dsn, database)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", choices=BROKERS, default="tansu")
    parser.add_argument("--events", type=int, default=30_000, help="multiple of 100")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for all insights after producing")
    args = parser.parse_args()
    if args.events % BATCH_SIZE or args.events < BATCH_SIZE:
        parser.error(f"--events must be a positive multiple of {BATCH_SIZE}")

    print(f"analyst bench on {BROKERS[args.broker]}: {args.events:,} events, {KEYS} keys, "
          f"{args.events // BATCH_SIZE} batches ...", flush=True)
    fig = run(args.broker, args.events, args.timeout)
    if fig.error:
        print(f"analyst FAILED: {fig.error}")
    else:
        lat = fig.latency_ms
        print(f"\n{'analyzer':<11}{'insights':>9}{'ins/s':>9}{'ins/s wall':>12}"
              f"{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'RSS MiB':>9}")
        print(f"{fig.analyzer:<11}{fig.insights:>9,}{fig.insights_per_s_created:>9,.0f}"
              f"{fig.insights_per_s_wall:>12,.0f}{lat['p50']:>9.1f}{lat['p95']:>9.1f}"
              f"{lat['max']:>9.1f}{fig.worker_peak_rss_mib:>9.0f}")
        print(f"(ins/s over {fig.created_span_s:.2f}s first->last insight; wall "
              f"{fig.wall_span_s:.2f}s first seal->last insight; events produced in "
              f"{fig.produce_s:.1f}s; latency = insight created_at - batch sealed_at)")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"analyst-{stamp}-{args.broker}.json"
    path.write_text(json.dumps({
        "timestamp": stamp,
        "broker": args.broker,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "setup": {"events": args.events, "keys": KEYS, "batch_size": BATCH_SIZE,
                  "timeout_s": args.timeout},
        "result": asdict(fig),
    }, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT)}", flush=True)
    if fig.error:
        sys.exit(1)


if __name__ == "__main__":
    main()
