"""Rebalance bench: what a restart or a new worker costs under each consumer group protocol.

For each protocol (``range``, ``cooperative-sticky``, ``consumer`` where the broker offers
it), with and without static membership (WORKER_ID), under steady traffic from an outside
producer, two ``streamsight worker --agents batcher`` processes A and B:

1. B joins A;
2. B is stopped (SIGTERM) and started again at once;
3. B is killed (SIGKILL) and started again at once.

For each step it reports B's restart-to-first-fetch (process start to its first fetch),
the longest time any ``events`` partition had no owner (revoked, or its owner gone, until
assigned again) and how many of A's partitions were taken from it (0: A never stopped).
Ownership comes from the workers' own ``fetch.assigned`` / ``fetch.revoked`` log lines.

    .venv/bin/python bench/rebalance.py [--broker kafka|tansu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from brokers import BROKERS
from confluent_kafka import Producer

# Public names that confluent_kafka.admin re-exports without __all__.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from streams.adapters.group_protocol import broker_has_consumer_protocol
from streams.commands.synthetic import TrafficGenerator
from streams.local.embedded import (
    create_database,
    drop_database,
    ensure_postgres,
    start_local_broker,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CLI = Path(sys.executable).parent / "streamsight"
RATE = 2000  # events/s from the outside producer
SESSION_TIMEOUT_MS = 30_000  # the worker's default, on every protocol
HEARTBEAT_MS = 3_000
STEP_TIMEOUT_S = 120.0


@dataclass
class Step:
    step: str
    restart_to_first_fetch_s: float | None
    longest_unowned_s: float
    taken_from_a: int


@dataclass
class Run:
    protocol: str
    static: bool
    steps: list[Step] = field(default_factory=list)
    error: str | None = None


@dataclass
class Worker:
    name: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> None:
        self.started = time.time()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(CLI), "worker", "--agents", "batcher"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def stop(self, sig: signal.Signals) -> float:
        """Send ``sig``, wait for the exit; when the process was signalled."""
        assert self.proc is not None
        at = time.time()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        return at

    def entries(self) -> list[dict[str, object]]:
        out = []
        for raw in self.log.read_bytes().splitlines():
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def first_fetch_after(self, since: float) -> float | None:
        for entry in self.entries():
            if entry.get("message") == "fetch.first" and float(str(entry["ts"])) >= since:
                return float(str(entry["ts"]))
        return None


def _when(entry: dict[str, object]) -> float:
    return datetime.fromisoformat(str(entry["timestamp"])).timestamp()


def ownership(workers: list[Worker], gone: list[tuple[float, str]],
              ) -> list[tuple[float, str, str, list[int]]]:
    """(time, worker, assigned|revoked, partitions), in time order; a stopped process's
    partitions count as revoked when it was signalled (a killed one logs nothing)."""
    changes = []
    for worker in workers:
        for entry in worker.entries():
            name = entry.get("message")
            if name in ("fetch.assigned", "fetch.revoked"):
                parts = [int(p) for p in entry.get("partitions", [])]  # type: ignore[attr-defined]
                changes.append((_when(entry), worker.name, str(name)[6:], parts))
    changes += [(at, name, "gone", []) for at, name in gone]
    changes.sort(key=lambda c: c[0])
    return changes


def measure(changes: list[tuple[float, str, str, list[int]]], start: float, end: float,
            ) -> tuple[float, int]:
    """Longest time a partition had no owner within [start, end], and how many of A's
    partitions were revoked in it."""
    owner: dict[int, str] = {}
    unowned_since: dict[int, float] = {}
    longest = 0.0
    taken = 0
    for at, who, what, parts in changes:
        if at > end:
            break
        if what == "gone":
            parts = [p for p, o in owner.items() if o == who]
        for p in parts:
            if what == "assigned":
                owner[p] = who
                since = unowned_since.pop(p, None)
                if since is not None and at >= start:
                    longest = max(longest, at - max(since, start))
            elif owner.get(p) == who:
                del owner[p]
                unowned_since[p] = at
                if at >= start and who == "A" and what == "revoked":
                    taken += 1
    for since in unowned_since.values():
        longest = max(longest, end - max(since, start))
    return round(longest, 2), taken


class Traffic(threading.Thread):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.done = threading.Event()

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20})
        generator = TrafficGenerator(sources=20, seed=3)
        started, n = time.monotonic(), 0
        while not self.done.is_set():
            key, value = generator.next()
            producer.produce(self.topic, value, key)
            producer.poll(0)
            n += 1
            ahead = n / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(10)


def _wait(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _cli(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True,
                            timeout=120, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"streamsight {' '.join(args)}: {result.stderr.strip()[-300:]}")


def _group_session(bootstrap: str, group: str) -> None:
    """The consumer protocol's session timeout is the broker's: give the group the same
    timeout and heartbeat the classic runs ask for (a Kafka 4 group config)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[
        ConfigEntry("consumer.session.timeout.ms", str(SESSION_TIMEOUT_MS),
                    incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("consumer.heartbeat.interval.ms", str(HEARTBEAT_MS),
                    incremental_operation=AlterConfigOpType.SET),
    ])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def run_one(bootstrap: str, protocol: str, static: bool, work: Path) -> Run:
    run = Run(protocol, static)
    token = secrets.token_hex(3)
    admin_dsn = ensure_postgres()
    database = f"rebalance_{token}"
    dsn = create_database(admin_dsn, database)
    app_id = f"rb-{token}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": dsn,
           "APP_ID": app_id, "TOPIC_PREFIX": f"{app_id}.", "LOG_FORMAT": "json",
           "WEB_ENABLED": "false", "CONSUMER_GROUP_PROTOCOL": protocol,
           "TOPICS_FILE": str(BENCH_DIR.parent / "topics.yaml"),
           "CONSUMER_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
           "CONSUMER_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS)}
    workers = [Worker(name, {**env, **({"WORKER_ID": name.lower()} if static else {})},
                      work / f"{app_id}-{name}.log") for name in ("A", "B")]
    a, b = workers
    traffic = Traffic(bootstrap, f"{app_id}.events")
    gone: list[tuple[float, str]] = []
    try:
        _cli(env, "db", "migrate")
        _cli(env, "topics", "apply")
        if protocol == "consumer":
            _group_session(bootstrap, f"{app_id}-batcher")
        traffic.start()
        a.start()
        _wait("A's first fetch", lambda: a.first_fetch_after(0) is not None)

        def step(name: str, begin: float) -> None:
            _wait(f"{name}: B's first fetch",
                  lambda: b.first_fetch_after(b.started) is not None)
            first = b.first_fetch_after(b.started)
            # Until every partition has an owner again (and a little after, to see the
            # last move): the step's end.
            time.sleep(3)
            longest, taken = measure(ownership(workers, gone), begin, time.time())
            assert first is not None
            run.steps.append(Step(name, round(first - b.started, 2), longest, taken))
            print(f"  {protocol:<18} static={static!s:<5} {name:<22} "
                  f"restart-to-first-fetch {first - b.started:5.2f}s  "
                  f"longest unowned {longest:5.2f}s  taken from A {taken}", flush=True)

        begin = time.time()
        b.start()
        step("B joins", begin)
        gone.append((b.stop(signal.SIGTERM), "B"))
        b.start()
        step("B restarts (SIGTERM)", gone[-1][0])
        gone.append((b.stop(signal.SIGKILL), "B"))
        b.start()
        step("B restarts (SIGKILL)", gone[-1][0])
    except (TimeoutError, RuntimeError) as exc:
        run.error = str(exc)
        print(f"  {protocol} static={static}: {exc}", flush=True)
    finally:
        traffic.done.set()
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.stop(signal.SIGKILL)
        if traffic.is_alive():
            traffic.join(15)
        drop_database(admin_dsn, database)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=sorted(BROKERS), default="kafka")
    args = parser.parse_args()
    broker = start_local_broker(args.broker)
    work = Path(tempfile.mkdtemp(prefix="streamsight-rebalance-"))
    runs: list[Run] = []
    try:
        protocols = ["range", "cooperative-sticky"]
        if asyncio.run(broker_has_consumer_protocol(broker.bootstrap)):
            protocols.append("consumer")
        print(f"{BROKERS[args.broker]} on {broker.bootstrap}: {RATE} events/s, "
              f"session timeout {SESSION_TIMEOUT_MS} ms", flush=True)
        for protocol in protocols:
            for static in (False, True):
                runs.append(run_one(broker.bootstrap, protocol, static, work))
    finally:
        broker.close()
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"{stamp}-rebalance-{args.broker}.json"
    out.write_text(json.dumps({"broker": args.broker, "rate": RATE,
                               "session_timeout_ms": SESSION_TIMEOUT_MS,
                               "runs": [asdict(r) for r in runs]}, indent=2))
    print(f"wrote {out.relative_to(BENCH_DIR.parent)}; worker logs in {work}")
    if any(r.error for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
