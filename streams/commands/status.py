"""``streamsight status``: one screen on the deployment.

Topics and their sizes, consumer lag per group (from the broker), what the workers hold
in memory (open batches, breaker state: from their /metrics), batches by status,
dead-letter counts by reason, and the latest insights.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from confluent_kafka import KafkaException
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.table import Table

from agents.registry import topics_read
from streams import config
from streams.adapters import dlq
from streams.adapters.kafka import Cluster
from streams.adapters.lag import GroupLag, LagReader, agent_groups
from streams.adapters.metrics import BREAKER_STATES
from streams.core.dlq import Counts, count
from streams.errors import StreamsightError

_BREAKER_NAMES = {v: k for k, v in BREAKER_STATES.items()}
_TIMEOUT_S = 5.0


@dataclass
class WorkerView:
    url: str
    error: str | None = None
    open_batches: float | None = None
    breaker: str | None = None
    partitions: dict[str, float] = field(default_factory=dict)


@dataclass
class Status:
    topics: list[tuple[str, int, int]]  # name, partitions, messages
    lag: list[GroupLag]
    workers: list[WorkerView]
    batches: dict[str, int]
    dead_letters: Counts | None
    insights: list[dict[str, Any]]
    problems: list[str]


def _topics(cluster: Cluster) -> list[tuple[str, int, int]]:
    """Name, partitions and messages of every topic."""
    existing = {n: ps for n, ps in cluster.topics().items() if not n.startswith("__")}
    wheres = [(n, p) for n, ps in existing.items() for p in ps]
    spans = cluster.spans(wheres)
    return [(name, len(ps), sum(end - low for low, end in (spans[(name, p)] for p in ps)))
            for name, ps in sorted(existing.items())]


def _worker(url: str) -> WorkerView:
    view = WorkerView(url)
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=_TIMEOUT_S) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        view.error = f"not reachable ({getattr(exc, 'reason', exc)})"
        return view
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "streamsight_open_batches":
                view.open_batches = sample.value
            elif sample.name == "streamsight_ai_breaker_state":
                view.breaker = _BREAKER_NAMES.get(int(sample.value), str(sample.value))
            elif sample.name == "streamsight_partitions_assigned":
                view.partitions[sample.labels["group"]] = sample.value
    return view


async def _database(dsn: str, insights: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    conn = await asyncpg.connect(dsn, timeout=_TIMEOUT_S)
    try:
        statuses = {r["status"]: r["n"] for r in await conn.fetch(
            "SELECT status, count(*) AS n FROM batches GROUP BY status ORDER BY status")}
        latest = [dict(r) for r in await conn.fetch(
            "SELECT window_start, source, severity, analyzer, summary FROM insights "
            "ORDER BY window_start DESC, created_at DESC LIMIT $1", insights)]
    finally:
        await conn.close()
    return statuses, latest


def gather(settings: config.Settings, worker_urls: list[str], insights: int = 5,
           dead_letters: bool = True) -> Status:
    """Everything ``status`` shows; a part that cannot be read is named in ``problems``."""
    problems: list[str] = []
    bootstrap = settings.kafka_bootstrap_servers
    topics: list[tuple[str, int, int]] = []
    lag: list[GroupLag] = []
    try:
        with Cluster(bootstrap, "streamsight-status", timeout=_TIMEOUT_S) as cluster:
            topics = _topics(cluster)
            reader = LagReader(bootstrap,
                               agent_groups(settings.app_id, topics_read(settings.topics)),
                               client_id=f"{settings.app_id}-status", cluster=cluster)
            try:
                lag = reader.read()
            finally:
                reader.close()
    except (KafkaException, StreamsightError) as exc:
        said = str(exc)
        problems.append(said if said.startswith("Kafka at ") else f"Kafka at {bootstrap}: {said}")
    counts = None
    if dead_letters and topics:
        counts = count(dlq.read(bootstrap, settings.topics.dead_letter))
    statuses: dict[str, int] = {}
    latest: list[dict[str, Any]] = []
    try:
        statuses, latest = asyncio.run(_database(settings.database_url, insights))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        problems.append(f"database: {exc}")
    return Status(topics, lag, [_worker(u) for u in worker_urls], statuses, counts, latest,
                  problems)


def to_json(status: Status) -> dict[str, Any]:
    """Everything ``status`` shows, for scripts (``status --json``): full names, exact
    numbers, times in ISO 8601."""
    return {
        "topics": [{"topic": name, "partitions": partitions, "messages": messages}
                   for name, partitions, messages in status.topics],
        "lag": [{"group": g.group, "topic": g.topic, "state": g.state, "members": g.members,
                 "messages": g.messages, "seconds": round(g.seconds, 3),
                 "partitions": [{"partition": p.partition, "committed": p.committed,
                                 "end": p.high_watermark, "messages": p.messages,
                                 "seconds": round(p.seconds, 3)} for p in g.partitions]}
                for g in status.lag],
        "workers": [{"url": w.url, "error": w.error, "open_batches": w.open_batches,
                     "breaker": w.breaker, "partitions": w.partitions}
                    for w in status.workers],
        "batches": status.batches,
        "dead_letters": status.dead_letters.to_json() if status.dead_letters else None,
        "insights": [{**row, "window_start": row["window_start"].isoformat()}
                     for row in status.insights],
        "problems": status.problems,
    }


def render(status: Status, console: Console, app_id: str) -> None:
    """For people, in 80 columns: groups are named without the ``<APP_ID>-`` they all
    share (the titles say it), long text wraps instead of being cut."""
    prefix = f"{app_id}-"

    def short(group: str) -> str:
        return group.removeprefix(prefix)

    def table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
        made = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in columns:
            made.add_column(column, justify="right" if column in right else "left",
                            overflow="fold")
        return made

    topics = table("topics", "topic", "partitions", "messages",
                   right=("partitions", "messages"))
    for name, partitions, messages in status.topics:
        topics.add_row(name, str(partitions), f"{messages:,}")
    console.print(topics)

    lag = table(f"consumer lag of groups {prefix}<agent> (from the broker)", "agent", "topic",
                "state", "members", "lag", "oldest (s)",
                right=("members", "lag", "oldest (s)"))
    for group in status.lag:
        members = "?" if group.members is None else str(group.members)
        lag.add_row(short(group.group), group.topic, group.state, members,
                    f"{group.messages:,}", f"{group.seconds:,.0f}")
    console.print(lag)

    workers = table("workers (partitions held per agent)", "worker", "open batches",
                    "breaker", "partitions", right=("open batches",))
    for w in status.workers:
        if w.error:
            workers.add_row(w.url, "-", "-", f"[red]{w.error}[/]")
            continue
        held = ", ".join(f"{short(g)} {n:.0f}" for g, n in sorted(w.partitions.items()))
        workers.add_row(w.url, f"{w.open_batches or 0:.0f}", w.breaker or "-", held or "-")
    console.print(workers)

    batches = ", ".join(f"{s} {n:,}" for s, n in status.batches.items()) or "none"
    console.print(f"[bold]batches:[/] {batches}")
    if status.dead_letters is not None:
        reasons = ", ".join(f"{r} {n:,}" for r, n in status.dead_letters.by_reason.most_common())
        console.print(f"[bold]dead-letter:[/] {status.dead_letters.total:,}"
                      + (f" ({reasons})" if reasons else ""))

    insights = table("latest insights", "window start", "source", "severity", "analyzer",
                     "summary")
    for row in status.insights:
        insights.add_row(row["window_start"].strftime("%Y-%m-%d %H:%M"), row["source"],
                         row["severity"], row["analyzer"], row["summary"])
    console.print(insights)
    for problem in status.problems:
        console.print(f"[red]could not read {problem}[/]")
