"""``streamsight demo``: the whole pipeline on one machine, with nothing to install by hand.

It starts the embedded broker (Tansu) and a PostgreSQL database of its own, applies
topics.yaml and the migrations, runs a real worker as a subprocess, sends synthetic
traffic and prints every sealed batch as it appears on ``analysis-requests``, plus the
dead-letter counts by reason. Once all traffic is accounted for (or the age deadline has
passed) it prints a summary read from the ``batches`` table, then keeps running until
Ctrl-C (or ``--duration``). Stopping sends SIGTERM to the worker and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from streams import config
from streams.core.models import AnalysisRequest
from streams.embedded import (
    DEFAULT_ADMIN_DSN,
    EmbeddedBroker,
    create_database,
    drop_database,
    ensure_postgres,
    start_broker,
)
from streams.errors import RetryableError, StreamsightError
from streams.produce import ProduceReport
from streams.produce import produce as send_traffic

# After the last event is produced, open batches seal by age; this margin covers the
# worker's start-up and group join on top of BATCH_MAX_AGE_SECONDS.
_SUMMARY_GRACE_S = 30.0
_WORKER_STOP_TIMEOUT_S = 45.0
_REPO_TOPICS = Path(__file__).resolve().parents[1] / "topics.yaml"
_REASON_STYLE = {"count": "green", "age": "yellow", "shutdown": "magenta", "manual": "cyan"}


@dataclass(frozen=True)
class DemoOptions:
    events: int = 3000
    sources: int = 6
    rate: float = 500.0
    batch_age: float = 10.0
    batch_events: int = 100
    invalid_ratio: float = 0.02
    seed: int | None = None
    duration: float | None = None
    database: str = "streamsight_demo"
    admin_dsn: str = DEFAULT_ADMIN_DSN
    run_dir: Path = Path(".run/demo")
    topics_file: Path | None = None


@dataclass
class _Tally:
    """What the demo has seen on analysis-requests and dead-letter."""

    batch_ids: set[str] = field(default_factory=set)
    events_batched: int = 0
    dead_letter: Counter[str] = field(default_factory=Counter)

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letter.values())

    @property
    def accounted(self) -> int:
        return self.events_batched + self.dead_lettered


@dataclass(frozen=True)
class _Summary:
    batches: dict[str, int]
    events_batched: int
    sources: int


class _Producer(threading.Thread):
    def __init__(self, bootstrap: str, opts: DemoOptions) -> None:
        super().__init__(name="streamsight-demo-produce", daemon=True)
        self.bootstrap = bootstrap
        self.opts = opts
        self.report: ProduceReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = send_traffic(
                bootstrap=self.bootstrap,
                topic=config.EVENTS_TOPIC,
                count=self.opts.events,
                rate=self.opts.rate,
                sources=self.opts.sources,
                invalid_ratio=self.opts.invalid_ratio,
                seed=self.opts.seed,
                # The demo draws its own progress: two live displays would fight.
                progress=False,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


class _Stop(Exception):
    """SIGTERM reached the demo: stop like Ctrl-C."""


def run_demo(opts: DemoOptions, console: Console | None = None) -> None:
    """Run the demo until Ctrl-C or ``opts.duration``; StreamsightError on failure."""
    Demo(opts, console or Console(highlight=False, soft_wrap=True)).run()


class Demo:
    def __init__(self, opts: DemoOptions, console: Console) -> None:
        self.opts = opts
        self.console = console
        self.started = time.monotonic()
        self.run_dir = opts.run_dir.resolve()
        self.broker: EmbeddedBroker | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = self.run_dir / "worker.log"
        self.consumer: Consumer | None = None
        self.database_url = ""
        self.tally = _Tally()
        self.producer: _Producer | None = None
        self.produced_at: float | None = None
        self.summary_shown = False
        self.summary_balanced = False
        self.header_shown = False
        self.progress: Progress | None = None
        self.accounted_task: TaskID | None = None
        self.produce_task: TaskID | None = None
        self._last_dlq_line: tuple[int, float] = (0, 0.0)

    # --- lifecycle --------------------------------------------------------------------

    def run(self) -> None:
        # SIGTERM, and SIGHUP when the terminal goes away, stop the demo like Ctrl-C: the
        # broker and the worker run in sessions of their own and would outlive it.
        stop_signals = (signal.SIGTERM, signal.SIGHUP)
        previous = {signum: signal.getsignal(signum) for signum in stop_signals}
        for signum in stop_signals:
            signal.signal(signum, _raise_stop)
        try:
            try:
                self.start()
                self.loop()
            except (KeyboardInterrupt, _Stop):
                self.stop_progress()
                self.console.print("\nstopping ...")
            finally:
                self.shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def start(self) -> None:
        opts = self.opts
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Only what the demo itself put there: the logs are overwritten below.
        shutil.rmtree(self.run_dir / "worker-data", ignore_errors=True)

        with self.step("embedded Kafka broker (Tansu)"):
            self.broker = start_broker(log_path=self.run_dir / "tansu.log")
        with self.step(f"PostgreSQL database {opts.database}"):
            admin_dsn = ensure_postgres(opts.admin_dsn)
            drop_database(admin_dsn, opts.database)
            self.database_url = create_database(admin_dsn, opts.database)
        with self.step("topics from topics.yaml"):
            self.apply_topics()
        with self.step("migrations from sql/"):
            from streams.adapters import db

            asyncio.run(db.migrate(self.database_url))
        with self.step("worker (batcher)"):
            self.start_worker()
        self.consumer = self.watch()
        self.console.print(
            f"  broker [bold]{self.broker.bootstrap}[/]  database "
            f"[bold]{self.database_url}[/]\n  worker log {_relative(self.worker_log)}"
        )
        self.console.print(
            f"\nproducing {opts.events:,} events from {opts.sources} sources "
            f"at {_rate(opts.rate)} ({opts.invalid_ratio:.0%} invalid); batches seal at "
            f"{opts.batch_events} events or {opts.batch_age:g} s\n"
        )
        self.progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self.progress.start()
        self.produce_task = self.progress.add_task("producing", total=None)
        self.accounted_task = self.progress.add_task("batched/dead-lettered", total=opts.events)
        self.producer = _Producer(self.broker.bootstrap, opts)
        self.producer.start()

    @contextlib.contextmanager
    def step(self, what: str) -> Any:
        started = time.monotonic()
        with self.console.status(f"starting {what} ..."):
            yield
        self.console.print(f"[green]✓[/] {what} [dim]({time.monotonic() - started:.1f}s)[/]")

    def apply_topics(self) -> None:
        from streams.adapters import kafka

        assert self.broker is not None
        path = self.opts.topics_file or Path(config.load().topics_file)
        if not path.exists() and self.opts.topics_file is None:
            path = _REPO_TOPICS
        specs = kafka.load_topics(path)
        admin = kafka.make_admin(self.broker.bootstrap)
        kafka.apply_plan(admin, kafka.plan_topics(admin, specs))

    def start_worker(self) -> None:
        assert self.broker is not None
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.broker.bootstrap,
            DATABASE_URL=self.database_url,
            APP_ID="demo",
            BATCH_MAX_AGE_SECONDS=str(self.opts.batch_age),
            BATCH_MAX_EVENTS=str(self.opts.batch_events),
            # Tansu makes a new group's join wait about half the session timeout.
            CONSUMER_SESSION_TIMEOUT_MS="6000",
            CONSUMER_HEARTBEAT_INTERVAL_MS="1000",
            LOG_FORMAT="json",
            LOG_LEVEL="WARNING",
            # A free port: Faust refuses WEB_PORT=0.
            WEB_PORT=str(_free_port()),
            # Faust's data directory, which would otherwise land in the current directory.
            F_DATADIR=str(self.run_dir / "worker-data"),
        )
        with self.worker_log.open("wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C reaches the demo only, which then stops the worker
                # with one SIGTERM instead of racing a second signal.
                start_new_session=True,
            )
        time.sleep(0.5)
        self.check_worker()

    def watch(self) -> Consumer:
        """Read analysis-requests and dead-letter from the beginning, without a group."""
        assert self.broker is not None
        consumer = Consumer(
            {
                "bootstrap.servers": self.broker.bootstrap,
                "group.id": "streamsight-demo-watch",
                "enable.auto.commit": False,
                "log_level": 2,
            }
        )
        try:
            metadata = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            consumer.close()
            raise RetryableError(f"cannot read topics from the broker: {exc.args[0]}") from None
        assignment = [
            TopicPartition(topic, partition, -2)  # -2: OFFSET_BEGINNING
            for topic in (config.ANALYSIS_REQUESTS_TOPIC, config.DEAD_LETTER_TOPIC)
            for partition in metadata.topics[topic].partitions
        ]
        consumer.assign(assignment)
        return consumer

    def check_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            code = self.worker.returncode
            self.worker = None
            raise StreamsightError(
                f"the worker exited with code {code}: {_last_line(self.worker_log)} "
                f"(log: {_relative(self.worker_log)})"
            )

    # --- the main loop ----------------------------------------------------------------

    def loop(self) -> None:
        assert self.consumer is not None and self.producer is not None
        opts = self.opts
        while True:
            if opts.duration is not None and time.monotonic() - self.started >= opts.duration:
                self.stop_progress()
                self.console.print(f"\n--duration {opts.duration:g}s reached, stopping ...")
                return
            for message in self.consumer.consume(500, timeout=0.25):
                self.handle(message)
            self.show_dead_letter()
            self.check_worker()
            self.check_producer()
            if self.progress is not None and self.accounted_task is not None:
                self.progress.update(self.accounted_task, completed=self.tally.accounted)
            if not self.summary_shown and self.produced_at is not None:
                report = self.producer.report
                assert report is not None
                done = self.tally.accounted >= report.delivered
                late = time.monotonic() - self.produced_at > opts.batch_age + _SUMMARY_GRACE_S
                if done or late:
                    self.stop_progress()
                    self.show_dead_letter(force=True)
                    self.summary()
                    hint = (
                        "the worker keeps running: send more with\n"
                        f"  KAFKA_BOOTSTRAP_SERVERS={self.bootstrap} streamsight produce "
                        "--count 500 --rate 100\n"
                    )
                    if opts.duration is None:
                        hint += "Ctrl-C stops the demo"
                    else:
                        left = opts.duration - (time.monotonic() - self.started)
                        hint += f"the demo stops in {max(left, 0):.0f}s (--duration)"
                    self.console.print(hint)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap if self.broker is not None else "?"

    def check_producer(self) -> None:
        producer = self.producer
        if producer is None or self.produced_at is not None or producer.is_alive():
            return
        if producer.error is not None:
            error = producer.error
            if isinstance(error, StreamsightError):
                raise error
            raise StreamsightError(f"producing failed: {error}")
        report = producer.report
        assert report is not None
        self.produced_at = time.monotonic()
        if self.progress is not None and self.produce_task is not None:
            self.progress.update(
                self.produce_task,
                description="produced",
                total=report.sent,
                completed=report.delivered,
            )
        self.console.print(
            f"[bold]produced[/] {report.delivered:,}/{report.sent:,} events "
            f"({report.invalid} invalid) in {report.elapsed_s:.1f}s, {report.rate:,.0f} ev/s"
            + (f", [red]{report.failed} failed[/]" if report.failed else "")
        )
        if report.failed:
            raise StreamsightError(f"{report.failed} deliveries failed: {report.first_error}")

    def handle(self, message: Message) -> None:
        if message.error() is not None:
            return
        if message.topic() == config.DEAD_LETTER_TOPIC:
            headers = dict(message.headers() or [])
            reason = headers.get("dlq.reason") or b"?"
            if isinstance(reason, bytes):
                reason = reason.decode(errors="replace")
            self.tally.dead_letter[reason] += 1
            return
        try:
            request = msgspec.json.decode(message.value() or b"", type=AnalysisRequest)
        except msgspec.DecodeError:
            self.console.print("[red]unreadable message on analysis-requests[/]")
            return
        if request.batch_id in self.tally.batch_ids:
            return  # re-published after a restart: the same batch, not a new one
        self.tally.batch_ids.add(request.batch_id)
        self.tally.events_batched += request.event_count
        self.show_batch(request)

    # --- output -----------------------------------------------------------------------

    def show_batch(self, request: AnalysisRequest) -> None:
        if not self.header_shown:
            self.header_shown = True
            self.console.print(
                f"[bold]{'sealed':<8}  {'source':<16} {'events':>6}  {'reason':<8} "
                f"{'errors':>6} {'p95 ms':>8}  batch[/]"
            )
        reason = request.seal_reason.value
        style = _REASON_STYLE.get(reason, "white")
        latency = request.digest.latency
        p95 = f"{latency.p95_ms:8.1f}" if latency is not None else f"{'-':>8}"
        errors = request.digest.error_count
        self.console.print(
            f"{request.sealed_at.astimezone():%H:%M:%S}  {request.key:<16.16} "
            f"{request.event_count:>6}  [{style}]{reason:<8}[/] "
            f"{'[red]' if errors else ''}{errors:>6}{'[/]' if errors else ''} {p95}  "
            f"[dim]{request.batch_id[:8]}[/]",
            soft_wrap=True,
        )

    def show_dead_letter(self, force: bool = False) -> None:
        count = self.tally.dead_lettered
        shown, at = self._last_dlq_line
        if count == shown or (not force and time.monotonic() - at < 2.0):
            return
        self._last_dlq_line = (count, time.monotonic())
        self.console.print(
            f"[red]dead-letter[/] {count} so far: {_reasons(self.tally.dead_letter)}",
            soft_wrap=True,
        )

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def summary(self) -> None:
        """Print the summary from the batches table; True when everything adds up."""
        self.summary_shown = True
        stats = self.read_batches()
        report = self.producer.report if self.producer is not None else None
        dead = self.tally.dead_lettered
        total = sum(stats.batches.values())
        by_reason = ", ".join(f"{k} {v}" for k, v in sorted(stats.batches.items()))
        lines = [
            "",
            f"[bold]summary[/] [dim](batches table of {self.opts.database})[/]",
            f"  batches          {total:>7,}  ({by_reason or 'none'})",
            f"  events batched   {stats.events_batched:>7,}  from {stats.sources} sources",
            f"  dead-lettered    {dead:>7,}  ({_reasons(self.tally.dead_letter) or 'none'})",
        ]
        if report is not None:
            produced = report.delivered
            self.summary_balanced = stats.events_batched + dead == produced
            verdict = (
                "[green]all accounted for[/]"
                if self.summary_balanced
                else f"[red]{produced - stats.events_batched - dead:+,} not yet accounted for[/]"
            )
            lines.append(f"  produced         {produced:>7,}  ({report.invalid} invalid)")
            lines.append(
                f"  {stats.events_batched:,} batched + {dead:,} dead-lettered = "
                f"{stats.events_batched + dead:,} of {produced:,} produced: {verdict}"
            )
        self.console.print("\n".join(lines) + "\n", soft_wrap=True)

    def read_batches(self) -> _Summary:
        import asyncpg

        async def query() -> _Summary:
            conn = await asyncpg.connect(self.database_url, timeout=10)
            try:
                rows = await conn.fetch(
                    "SELECT seal_reason, count(*) AS n, sum(event_count) AS events "
                    "FROM batches GROUP BY seal_reason"
                )
                sources = await conn.fetchval("SELECT count(DISTINCT source) FROM batches")
            finally:
                await conn.close()
            return _Summary(
                batches={row["seal_reason"]: int(row["n"]) for row in rows},
                events_batched=sum(int(row["events"]) for row in rows),
                sources=int(sources or 0),
            )

        try:
            return asyncio.run(query())
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise RetryableError(f"cannot read the batches table: {exc}") from None

    # --- stopping ---------------------------------------------------------------------

    def shutdown(self) -> None:
        self.stop_progress()
        clean = self.stop_worker()
        try:
            if self.consumer is not None:
                self.drain()
                finished = self.producer is not None and self.produced_at is not None
                if finished and clean and (not self.summary_shown or not self.summary_balanced):
                    self.console.print("after the worker stopped:")
                    self.summary()
                    if not self.summary_balanced:
                        raise StreamsightError(
                            "events unaccounted for after the worker stopped; "
                            f"see {_relative(self.worker_log)}"
                        )
        finally:
            if self.consumer is not None:
                self.consumer.close()
                self.consumer = None
            if self.broker is not None:
                self.broker.stop()
                self.broker = None
                self.console.print("broker stopped")

    def stop_worker(self) -> bool:
        """SIGTERM the worker and wait; True when it stopped on its own with code 0."""
        worker, self.worker = self.worker, None
        if worker is None:
            return False
        if worker.poll() is None:
            self.console.print("stopping the worker (it seals open batches first) ...")
            started = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(_WORKER_STOP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt, _Stop):
                worker.kill()
                worker.wait()
                self.console.print("[red]worker killed[/]")
                return False
            self.console.print(
                f"worker stopped (exit code {worker.returncode}, {time.monotonic() - started:.1f}s)"
            )
        return worker.returncode == 0

    def drain(self) -> None:
        """Read what the worker published while stopping (batches sealed at shutdown)."""
        assert self.consumer is not None
        deadline = time.monotonic() + 10.0
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 2.0:
            messages = self.consumer.consume(500, timeout=0.25)
            if messages:
                quiet_since = time.monotonic()
            for message in messages:
                self.handle(message)
        self.show_dead_letter(force=True)


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rate(rate: float) -> str:
    return "full speed" if rate <= 0 else f"{rate:,.0f} ev/s"


def _reasons(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common())


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
