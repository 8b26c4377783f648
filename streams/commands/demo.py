"""``streamsight demo``: the whole pipeline on one machine, with nothing to install by hand.

It starts the embedded broker (Tansu) and a PostgreSQL database of its own, applies
topics.yaml and the migrations, runs a real worker with every agent (batcher, analyst and
the three sinks) as a subprocess, sends synthetic traffic and prints every sealed batch
as it appears on ``analysis-requests``, every insight as it appears on ``insights``, plus
the dead-letter counts by reason. Once all traffic is accounted for (or the age deadline
has passed) and every sealed batch has its insight (or its analysis failed, or the
insight deadline has passed) it waits for the sinks to write what the batches and
insights imply (bounded), then prints a summary read from the tables (batches, insights,
api_performance, error_events, ai_usage) with the dead-letter counts seen on the topic,
and keeps running until Ctrl-C (or ``--duration``). Stopping sends SIGTERM to the worker
and waits for it.

The worker analyses with the built-in statistical analyzer unless OPENAI_API_KEY is set
(in the environment or ``.env``, as for the worker itself); then it asks OPENAI_MODEL.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from agents.registry import BUILT_IN
from streams import config
from streams.commands.produce import ProduceReport
from streams.commands.produce import produce as send_traffic
from streams.core import analysis
from streams.core.models import AnalysisRequest, Insight, InsightSeverity
from streams.errors import RetryableError, StreamsightError
from streams.local.embedded import (
    EmbeddedBroker,
    create_database,
    drop_database,
    ensure_postgres,
    start_broker,
)
from streams.local.kafka import KAFKA_VERSION, KafkaCluster

# After the last event is produced, open batches seal by age; this margin covers the
# worker's start-up and group join on top of BATCH_MAX_AGE_SECONDS.
_SUMMARY_GRACE_S = 30.0
# Once every event is accounted for, how long the summary waits for the insights of the
# sealed batches: the built-in analyzer answers at once, a model takes its time (and its
# retries back off for up to a minute).
_INSIGHT_GRACE_S = 30.0
_INSIGHT_GRACE_MODEL_S = 180.0
# How long the summary waits for the sinks to write the rows of what the demo has seen;
# they take well under a second at the demo's volume.
_SINK_GRACE_S = 15.0
_SINK_POLL_S = 0.2
# The worker's agents: ours, every one of which fills a table.
_AGENTS = tuple(agent.name for agent in BUILT_IN)
# Rows of the per-source and per-type breakdowns in the summary.
_TOP = 5
_WORKER_STOP_TIMEOUT_S = 45.0
_REPO_TOPICS = Path(__file__).resolve().parents[2] / "topics.yaml"
_REASON_STYLE = {"count": "green", "age": "yellow", "shutdown": "magenta", "manual": "cyan"}
_SEVERITY_STYLE = {
    InsightSeverity.INFO: "cyan",
    InsightSeverity.WARNING: "yellow",
    InsightSeverity.CRITICAL: "bold red",
}
_SEVERITIES = tuple(InsightSeverity)
# Width of "HH:MM:SS  source(16) " before an insight's severity, and of the indent below.
_INSIGHT_INDENT = 10


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
    admin_dsn: str | None = None
    #: ``tansu`` (embedded, starts in milliseconds) or ``kafka`` (Apache Kafka 4.4).
    broker: str = "tansu"
    run_dir: Path = Path(".run/demo")
    topics_file: Path | None = None


@dataclass
class _Tally:
    """What the demo has seen on analysis-requests, insights and dead-letter."""

    batch_ids: set[str] = field(default_factory=set)
    events_batched: int = 0
    dead_letter: Counter[str] = field(default_factory=Counter)
    # Insights by batch (at-least-once: a redone analysis repeats its insight_id).
    insights: dict[str, Insight] = field(default_factory=dict)
    # Batches whose analysis went to dead-letter (reason ai_failed) after the last attempt.
    analysis_failed: set[str] = field(default_factory=set)
    # Events of the sealed batches with a duration (one api_performance row each) and
    # error events (one error_events row each), from the batches' digests.
    timed_events: int = 0
    error_events: int = 0

    @property
    def awaiting_insight(self) -> set[str]:
        return self.batch_ids - self.insights.keys() - self.analysis_failed

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letter.values())

    @property
    def accounted(self) -> int:
        return self.events_batched + self.dead_lettered


@dataclass(frozen=True)
class _SourceStats:
    source: str
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class _Summary:
    """What the summary reads from the tables."""

    batches: dict[str, int]
    events_batched: int
    sources: int
    statuses: dict[str, int] = field(default_factory=dict)
    severities: dict[str, int] = field(default_factory=dict)
    analyzers: dict[str, int] = field(default_factory=dict)
    performance_rows: int = 0
    performance_sources: int = 0
    top_sources: list[_SourceStats] = field(default_factory=list)
    error_rows: int = 0
    error_types: list[tuple[str, int]] = field(default_factory=list)
    error_type_count: int = 0
    ai_calls: int = 0
    ai_outcomes: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def insights(self) -> int:
        return sum(self.severities.values())


@dataclass(frozen=True)
class _SinkState:
    """What the tables hold of what the demo saw on the topics."""

    performance: int
    event_errors: int
    failed_analyses: int
    insights: int
    # Batches still SEALED: the analyst marks a batch after publishing its insight.
    still_sealed: int


class _Producer(threading.Thread):
    def __init__(self, bootstrap: str, topic: str, opts: DemoOptions) -> None:
        super().__init__(name="streamsight-demo-produce", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.opts = opts
        self.report: ProduceReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = send_traffic(
                bootstrap=self.bootstrap,
                topic=self.topic,
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
        self.topics = config.load().topics
        self.run_dir = opts.run_dir.resolve()
        self.broker: EmbeddedBroker | KafkaCluster | None = None
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
        self.insight_header_shown = False
        # Outcomes read before their batch's line (partitions are read side by side): shown
        # right after it.
        self.deferred: dict[str, list[Callable[[], None]]] = {}
        self.events_done_at: float | None = None
        self.analyzer = ""
        self.analyzer_label = ""
        self.insight_grace = _INSIGHT_GRACE_S
        self.progress: Progress | None = None
        self.accounted_task: TaskID | None = None
        self.insight_task: TaskID | None = None
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

        if self.opts.broker == "kafka":
            with self.step(f"Apache Kafka {KAFKA_VERSION} (one KRaft node)"):
                self.broker = KafkaCluster(1, root=self.run_dir / "kafka").start()
        else:
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
        with self.step(f"worker ({', '.join(_AGENTS)})"):
            self.start_worker()
        self.consumer = self.watch()
        self.console.print(
            f"  broker [bold]{self.broker.bootstrap}[/]  database "
            f"[bold]{self.database_url}[/]\n  worker log {_relative(self.worker_log)}\n"
            f"  analyst: {self.analyzer_label}"
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
        self.insight_task = self.progress.add_task("analysed", total=0)
        self.producer = _Producer(self.broker.bootstrap, self.topics.events, opts)
        self.producer.start()

    @contextlib.contextmanager
    def step(self, what: str) -> Any:
        started = time.monotonic()
        with self.console.status(f"starting {what} ..."):
            yield
        self.console.print(f"[green]✓[/] {what} [dim]({time.monotonic() - started:.1f}s)[/]")

    def apply_topics(self) -> None:
        from streams.adapters import kafka, topics

        assert self.broker is not None
        settings = config.load()
        path = self.opts.topics_file or Path(settings.topics_file)
        if not path.exists() and self.opts.topics_file is None:
            path = _REPO_TOPICS
        specs = topics.load_topics(path, settings.topic_prefix)
        admin = kafka.make_admin(self.broker.bootstrap)
        topics.apply_plan(admin, topics.plan_topics(admin, specs))

    def start_worker(self) -> None:
        assert self.broker is not None
        env = dict(os.environ)
        # The worker reads the environment and .env like this process: the same settings
        # decide its analyzer. The OPENAI_* values go to it explicitly all the same.
        settings = config.load()
        if settings.openai_api_key is None:
            self.analyzer = analysis.ANALYZER_VERSION
            self.analyzer_label = (
                f"built-in statistical analyzer [bold]{self.analyzer}[/] "
                "[dim](set OPENAI_API_KEY to ask a model)[/]"
            )
        else:
            from streams.core.prompt import analyzer_name

            env["OPENAI_API_KEY"] = settings.openai_api_key.get_secret_value()
            env["OPENAI_MODEL"] = settings.openai_model
            if settings.openai_base_url:
                env["OPENAI_BASE_URL"] = settings.openai_base_url
            self.analyzer = analyzer_name(settings.openai_model)
            self.analyzer_label = (
                f"model [bold]{escape(settings.openai_model)}[/] at "
                f"{escape(settings.openai_base_url or 'api.openai.com')} "
                f"[dim]({escape(self.analyzer)})[/]"
            )
            self.insight_grace = _INSIGHT_GRACE_MODEL_S
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
            # The log goes to its file only: INFO there says what the worker did.
            LOG_LEVEL="INFO",
            # A free port: Faust refuses WEB_PORT=0.
            WEB_PORT=str(_free_port()),
            # Faust's data directory, which would otherwise land in the current directory.
            F_DATADIR=str(self.run_dir / "worker-data"),
        )
        with self.worker_log.open("wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--agents", ",".join(_AGENTS)],
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
        """Read analysis-requests, insights and dead-letter from the start, without a group."""
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
            for topic in (
                self.topics.analysis_requests,
                self.topics.insights,
                self.topics.dead_letter,
            )
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
            self.update_progress()
            if not self.summary_shown and self.produced_at is not None:
                report = self.producer.report
                assert report is not None
                now = time.monotonic()
                if self.events_done_at is None:
                    done = self.tally.accounted >= report.delivered
                    late = now - self.produced_at > opts.batch_age + _SUMMARY_GRACE_S
                    if done or late:
                        self.events_done_at = now
                analysed = self.events_done_at is not None and (
                    not self.tally.awaiting_insight
                    or now - self.events_done_at > self.insight_grace
                )
                if analysed:
                    self.stop_progress()
                    self.show_dead_letter(force=True)
                    self.wait_for_sinks()
                    self.summary()
                    hint = (
                        "the worker keeps running: send more with\n"
                        f"  KAFKA_BOOTSTRAP_SERVERS={self.bootstrap} .venv/bin/streamsight produce "
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

    def update_progress(self) -> None:
        if self.progress is None:
            return
        if self.accounted_task is not None:
            self.progress.update(self.accounted_task, completed=self.tally.accounted)
        if self.insight_task is not None:
            batches = len(self.tally.batch_ids)
            self.progress.update(
                self.insight_task,
                total=batches,
                completed=batches - len(self.tally.awaiting_insight),
            )

    def handle(self, message: Message) -> None:
        if message.error() is not None:
            return
        if message.topic() == self.topics.dead_letter:
            headers = {k: _text(v) for k, v in dict(message.headers() or []).items()}
            if headers.get("dlq.origin.topic") == self.topics.analysis_requests:
                self.handle_failed_analysis(message, headers)
                return
            self.tally.dead_letter[headers.get("dlq.reason") or "?"] += 1
            return
        if message.topic() == self.topics.insights:
            self.handle_insight(message)
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
        digest = request.digest
        self.tally.timed_events += digest.latency.count if digest.latency is not None else 0
        self.tally.error_events += digest.error_count
        self.show_batch(request)
        for show in self.deferred.pop(request.batch_id, []):
            show()

    def handle_insight(self, message: Message) -> None:
        try:
            insight = msgspec.json.decode(message.value() or b"", type=Insight)
        except msgspec.DecodeError:
            self.console.print("[red]unreadable message on insights[/]")
            return
        if insight.batch_id in self.tally.insights:
            return  # at-least-once: the same analysis again, under the same insight_id
        self.tally.insights[insight.batch_id] = insight
        self.show_after_batch(insight.batch_id, lambda: self.show_insight(insight))

    def show_after_batch(self, batch_id: str, show: Callable[[], None]) -> None:
        if batch_id in self.tally.batch_ids:
            show()
        else:
            self.deferred.setdefault(batch_id, []).append(show)

    def handle_failed_analysis(self, message: Message, headers: dict[str, str]) -> None:
        """A request on dead-letter: the analyst gave up on it (or could not read it)."""
        batch_id = headers.get("dlq.batch_id")
        try:
            request = msgspec.json.decode(message.value() or b"", type=AnalysisRequest)
        except msgspec.DecodeError:
            request = None
        batch_id = batch_id or (request.batch_id if request is not None else None)
        if batch_id is None or batch_id in self.tally.analysis_failed:
            return
        self.tally.analysis_failed.add(batch_id)
        source = request.key if request is not None else "?"
        at = time.strftime("%H:%M:%S", time.localtime(message.timestamp()[1] / 1000))
        attempts = headers.get("dlq.attempts", "?")
        error = _fit(
            f"analysis gave up after {attempts} attempt{'' if attempts == '1' else 's'}: "
            + headers.get("dlq.error", ""),
            self.console.width - 37,
        )
        line = f"{at}  {escape(f'{source:<16.16}')} [bold red]{'failed':<8}[/]  {escape(error)}"
        self.show_after_batch(batch_id, lambda: self.console.print(line, soft_wrap=True))

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

    def show_insight(self, insight: Insight) -> None:
        if not self.insight_header_shown:
            self.insight_header_shown = True
            self.console.print(f"[bold]{'insight':<8}  {'source':<16} {'severity':<8}  summary[/]")
        severity = insight.analysis.severity
        style = _SEVERITY_STYLE.get(severity, "white")
        width = self.console.width
        # "HH:MM:SS  " + source(16) + " " + severity(8) + "  ": 37 characters
        summary = _fit(insight.analysis.summary, width - 37)
        self.console.print(
            f"{insight.created_at.astimezone():%H:%M:%S}  {escape(f'{insight.source:<16.16}')} "
            f"[{style}]{severity.value:<8}[/]  {escape(summary)}",
            soft_wrap=True,
        )
        if insight.analysis.anomalies:
            evidence = _fit(insight.analysis.anomalies[0].evidence, width - _INSIGHT_INDENT - 2)
            self.console.print(
                f"{'':<{_INSIGHT_INDENT}}[dim]└ {escape(evidence)}[/]", soft_wrap=True
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

    def wait_for_sinks(self) -> None:
        """Wait (at most _SINK_GRACE_S) until the tables hold the rows of what was seen.

        Targets come from the topics: a performance row per timed event and an error row
        per error event of the sealed batches (their digests count both), an ai_failed row
        per analysis on dead-letter, an insight row per insight, and no batch left SEALED
        but those still waiting for their insight. More is fine: events of batches still
        open already have their rows.
        """
        tally = self.tally
        started = time.monotonic()
        deadline = started + _SINK_GRACE_S
        state = self.read_sink_state()
        with self.console.status("waiting for the sinks ..."):
            while not self.sinks_caught_up(state) and time.monotonic() < deadline:
                if self.worker is None or self.worker.poll() is not None:
                    break
                time.sleep(_SINK_POLL_S)
                state = self.read_sink_state()
        if self.sinks_caught_up(state):
            return
        behind = [
            f"{what} {have:,} of {want:,} rows"
            for what, have, want in (
                ("api_performance", state.performance, tally.timed_events),
                ("error_events", state.event_errors, tally.error_events),
                ("ai_failed errors", state.failed_analyses, len(tally.analysis_failed)),
                ("insights", state.insights, len(tally.insights)),
            )
            if have < want
        ]
        awaiting = len(tally.awaiting_insight)
        if state.still_sealed > awaiting:
            behind.append(f"{state.still_sealed - awaiting:,} analysed batches still SEALED")
        self.console.print(
            f"[yellow]the sinks have not caught up after {time.monotonic() - started:.0f}s: "
            f"{', '.join(behind)}[/] (see {_relative(self.worker_log)})",
            soft_wrap=True,
        )

    def sinks_caught_up(self, state: _SinkState) -> bool:
        tally = self.tally
        return (
            state.performance >= tally.timed_events
            and state.event_errors >= tally.error_events
            and state.failed_analyses >= len(tally.analysis_failed)
            and state.insights >= len(tally.insights)
            and state.still_sealed <= len(tally.awaiting_insight)
        )

    def read_sink_state(self) -> _SinkState:
        async def query(conn: Any) -> _SinkState:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM api_performance) AS performance,"
                " (SELECT count(*) FROM error_events WHERE event_id IS NOT NULL) AS event_errors,"
                " (SELECT count(*) FROM error_events"
                "   WHERE event_id IS NULL AND type = 'ai_failed') AS failed_analyses,"
                " (SELECT count(*) FROM insights) AS insights,"
                " (SELECT count(*) FROM batches WHERE status = 'SEALED') AS still_sealed"
            )
            return _SinkState(**{key: int(value) for key, value in row.items()})

        state: _SinkState = self.read_database(query)
        return state

    def read_database(self, query: Callable[[Any], Any]) -> Any:
        """``await query(connection)`` on the demo database; RetryableError when it fails."""
        import asyncpg

        async def run() -> Any:
            conn = await asyncpg.connect(self.database_url, timeout=10)
            try:
                return await query(conn)
            finally:
                await conn.close()

        try:
            return asyncio.run(run())
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise RetryableError(f"cannot read the demo database: {exc}") from None

    def summary(self) -> None:
        """Print the summary from the tables; summary_balanced tells whether every event
        is accounted for."""
        self.summary_shown = True
        stats = self.read_tables()
        report = self.producer.report if self.producer is not None else None
        dead = self.tally.dead_lettered
        total = sum(stats.batches.values())
        by_reason = ", ".join(f"{k} {v}" for k, v in sorted(stats.batches.items()))
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(stats.statuses.items()))
        lines = [
            "",
            f"[bold]summary[/] [dim](tables of {self.opts.database}; dead-letter from its "
            "topic)[/]",
            f"  batches          {total:>7,}  ({by_reason or 'none'}; {by_status or 'none'})",
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
        lines.extend(self.insight_summary(stats))
        lines.extend(self.table_summary(stats))
        self.console.print("\n".join(lines) + "\n", soft_wrap=True)

    def insight_summary(self, stats: _Summary) -> list[str]:
        by_severity = ", ".join(
            f"[{_SEVERITY_STYLE[s]}]{s.value}[/] {stats.severities.get(s.value, 0)}"
            for s in _SEVERITIES
        )
        analyzers = Counter(stats.analyzers)
        if len(analyzers) > 1:
            written_by = ", ".join(f"{escape(a)} {n}" for a, n in analyzers.most_common())
        else:
            written_by = escape(next(iter(analyzers), self.analyzer))
        lines = [f"  insights         {stats.insights:>7,}  ({by_severity}) by {written_by}"]
        failed = len(self.tally.analysis_failed)
        if failed:
            lines.append(
                f"  [red]analysis failed  {failed:>7,}[/]  "
                "(dead-letter ai_failed, record on errors)"
            )
        batches = len(self.tally.batch_ids)
        awaiting = len(self.tally.awaiting_insight)
        if awaiting:
            lines.append(
                f"  [yellow]{awaiting:,} of {batches:,} sealed batches without an insight yet[/]"
            )
        else:
            verdict = "every one has its insight" if not failed else "none left to analyse"
            lines.append(f"  {batches:,} sealed batches seen: [green]{verdict}[/]")
        return lines

    def table_summary(self, stats: _Summary) -> list[str]:
        """api_performance per source, error_events per type, ai_usage."""
        tally = self.tally
        lines = [
            f"  api_performance  {stats.performance_rows:>7,}  rows "
            f"({tally.timed_events:,} timed events in the sealed batches)"
        ]
        if stats.top_sources:
            lines.append(
                f"    [dim]{'source':<16} {'requests':>8} {'error %':>8} "
                f"{'p50 ms':>8} {'p95 ms':>8}[/]"
            )
            for row in stats.top_sources:
                rate = 100 * row.errors / row.requests if row.requests else 0.0
                lines.append(
                    f"    {escape(f'{row.source:<16.16}')} {row.requests:>8,} "
                    f"{'[red]' if row.errors else ''}{rate:>7.1f}%{'[/]' if row.errors else ''} "
                    f"{row.p50_ms:>8.1f} {row.p95_ms:>8.1f}"
                )
            more = stats.performance_sources - len(stats.top_sources)
            if more > 0:
                lines.append(f"    [dim]and {more} more source{'s' if more > 1 else ''}[/]")
        types = ", ".join(f"{escape(kind)} {n:,}" for kind, n in stats.error_types)
        more = stats.error_type_count - len(stats.error_types)
        more_types = f"; {more} more type{'s' if more > 1 else ''}" if more > 0 else ""
        lines.append(
            f"  error_events     {stats.error_rows:>7,}  rows "
            f"({types or 'none'}{more_types}; {tally.error_events:,} error events in the "
            "sealed batches)"
        )
        outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.ai_outcomes.items()))
        tokens = stats.prompt_tokens + stats.completion_tokens
        if stats.ai_calls:
            note = f"({outcomes})"
        elif self.analyzer == analysis.ANALYZER_VERSION:
            note = "[dim](the built-in analyzer calls no model)[/]"
        else:
            note = ""
        lines.append(
            f"  ai_usage         {stats.ai_calls:>7,}  calls, {tokens:,} tokens "
            f"({stats.prompt_tokens:,} prompt, {stats.completion_tokens:,} completion), "
            f"${stats.cost_usd:.4f} {note}".rstrip()
        )
        return lines

    def read_tables(self) -> _Summary:
        async def query(conn: Any) -> _Summary:
            batches = await conn.fetch(
                "SELECT seal_reason, count(*) AS n, sum(event_count) AS events "
                "FROM batches GROUP BY seal_reason"
            )
            sources = await conn.fetchval("SELECT count(DISTINCT source) FROM batches")
            statuses = await conn.fetch("SELECT status, count(*) AS n FROM batches GROUP BY 1")
            insights = await conn.fetch(
                "SELECT severity, analyzer, count(*) AS n FROM insights GROUP BY 1, 2"
            )
            performance = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT source) AS sources FROM api_performance"
            )
            top_sources = await conn.fetch(
                "SELECT source, count(*) AS requests,"
                " count(*) FILTER (WHERE NOT success) AS errors,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms"
                " FROM api_performance GROUP BY source ORDER BY requests DESC, source"
                " LIMIT $1",
                _TOP,
            )
            error_types = await conn.fetch(
                "SELECT type, count(*) AS n FROM error_events GROUP BY type ORDER BY n DESC, type"
            )
            usage = await conn.fetch(
                "SELECT outcome, count(*) AS calls, sum(prompt_tokens) AS prompt,"
                " sum(completion_tokens) AS completion, sum(cost_usd) AS cost"
                " FROM ai_usage GROUP BY outcome"
            )
            return _Summary(
                batches={row["seal_reason"]: int(row["n"]) for row in batches},
                events_batched=sum(int(row["events"]) for row in batches),
                sources=int(sources or 0),
                statuses={row["status"]: int(row["n"]) for row in statuses},
                severities=_sum_by(insights, "severity"),
                analyzers=_sum_by(insights, "analyzer"),
                performance_rows=int(performance["n"]),
                performance_sources=int(performance["sources"]),
                top_sources=[
                    _SourceStats(
                        row["source"],
                        int(row["requests"]),
                        int(row["errors"]),
                        float(row["p50_ms"]),
                        float(row["p95_ms"]),
                    )
                    for row in top_sources
                ],
                error_rows=sum(int(row["n"]) for row in error_types),
                error_types=[(row["type"], int(row["n"])) for row in error_types[:_TOP]],
                error_type_count=len(error_types),
                ai_calls=sum(int(row["calls"]) for row in usage),
                ai_outcomes={row["outcome"]: int(row["calls"]) for row in usage},
                prompt_tokens=sum(int(row["prompt"] or 0) for row in usage),
                completion_tokens=sum(int(row["completion"] or 0) for row in usage),
                cost_usd=sum(float(row["cost"] or 0) for row in usage),
            )

        result: _Summary = self.read_database(query)
        return result

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
                self.broker.close()
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


def _sum_by(rows: Any, column: str) -> dict[str, int]:
    """Sum of the ``n`` column of ``rows`` by ``column``."""
    sums: Counter[str] = Counter()
    for row in rows:
        sums[row[column]] += int(row["n"])
    return dict(sums)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _fit(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters (``…`` where it was cut)."""
    line = " ".join(text.split())
    width = max(width, 20)
    return line if len(line) <= width else line[: width - 1] + "…"


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
