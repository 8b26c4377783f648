"""The ``streamsight`` command line.

Every command exits non-zero with one line on stderr when it fails; long work shows
progress. Command bodies stay short: they call into streams/ and agents/.
"""

from __future__ import annotations

import enum
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from streams import config
from streams.errors import StreamsightError

app = typer.Typer(
    name="streamsight",
    help="Kafka events to per-key batches, AI insights and TimescaleDB rows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(
    help="Manage the Kafka topics declared in topics.yaml.", no_args_is_help=True
)
db_app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(db_app, name="db")


def _now() -> datetime:
    """The moment ``--since 2h`` and its kind count back from."""
    return datetime.now(UTC)


def _settings() -> config.Settings:
    return config.load()


@topics_app.command("apply")
def topics_apply(
    file: Annotated[Path | None, typer.Option(help="topics file (default: TOPICS_FILE)")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show the plan, change nothing")
    ] = False,
    raise_partitions: Annotated[
        bool,
        typer.Option("--raise-partitions", help="add partitions where topics.yaml asks for more"),
    ] = False,
) -> None:
    """Create missing topics, show how existing ones differ; never deletes."""
    from rich.console import Console
    from rich.table import Table

    from streams.adapters import kafka, topics

    settings = _settings()
    path = file or Path(settings.topics_file)
    specs = topics.load_topics(path, settings.topic_prefix)
    kafka.ensure_reachable(settings.kafka_bootstrap_servers)
    admin = kafka.make_admin(settings.kafka_bootstrap_servers)
    plan = topics.plan_topics(admin, specs)

    styles = {"create": "green", "ok": "dim", "differs": "yellow"}
    table = Table(title=f"{path} -> {settings.kafka_bootstrap_servers}", title_justify="left")
    for column in ("topic", "action", "details"):
        table.add_column(column)
    for state in plan.topics:
        action: str = state.action
        if state.partitions_to_add and raise_partitions:
            action = "raise partitions"
        style = styles.get(action, "cyan")
        table.add_row(state.spec.name, f"[{style}]{action}[/]", "\n".join(state.details()))
    console = Console()
    console.print(table)
    if dry_run:
        console.print("dry run: nothing changed")
        return
    result = topics.apply_plan(admin, plan, raise_partitions=raise_partitions)
    console.print(
        f"created {len(result.created)}, raised partitions on {len(result.raised)}, "
        f"{len(plan.differing)} differ (left as they are)"
    )


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the numbered SQL migrations in sql/ (idempotent, safe to run concurrently),
    then the TimescaleDB retention and compression policies from settings."""
    import asyncio

    from rich.console import Console

    from streams.adapters import db

    s = _settings()
    changes = asyncio.run(db.migrate_and_apply_policies(
        s.database_url, s.db_retention_days, s.db_compress_after_days))
    console = Console()
    if not changes:
        console.print("database schema up to date")
    for line in changes:
        console.print(line)


@app.command()
def worker(
    agents: Annotated[
        str | None, typer.Option(help="comma-separated agents to run (default: all)")
    ] = None,
) -> None:
    """Run the Faust worker: every agent, or those named by --agents."""
    from streams.commands.worker import run_worker

    chosen = [a.strip() for a in agents.split(",") if a.strip()] if agents else None
    run_worker(_settings(), chosen)


_Json = Annotated[bool, typer.Option("--json", help="JSON on stdout instead of a table")]


@app.command("agents")
def agents_list(as_json: _Json = False) -> None:
    """The agents a worker runs: topic, consumer group, concurrency (installed plugins too)."""
    from rich.console import Console

    from streams.commands import agent_list

    settings = _settings()
    found = agent_list.rows(settings)
    if as_json:
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
    else:
        agent_list.render(found, Console(), settings.app_id)


@app.command()
def status(
    worker: Annotated[
        list[str] | None,
        typer.Option(help="a worker's web address (repeatable; default: this host's WEB_PORT)"),
    ] = None,
    insights: Annotated[int, typer.Option(min=0, help="latest insights to show")] = 5,
    as_json: _Json = False,
) -> None:
    """One screen: topics, lag per group, workers' open batches and breaker, batches by
    status, dead-letter counts by reason, the latest insights."""
    from rich.console import Console

    from streams.commands import status as state

    settings = _settings()
    urls = worker or [f"http://127.0.0.1:{settings.web_port}"]
    snapshot = state.gather(settings, urls, insights)
    if as_json:
        sys.stdout.write(json.dumps(state.to_json(snapshot), indent=2, ensure_ascii=False) + "\n")
    else:
        state.render(snapshot, Console(), settings.app_id)
    if snapshot.problems:
        raise StreamsightError("; ".join(snapshot.problems))


@app.command()
def seal(
    source: Annotated[str, typer.Option(help="the source (event key) whose batch to seal")],
) -> None:
    """Seal a source's open batch now (reason: manual), through the running batcher."""
    from streams.adapters.kafka import require_topic
    from streams.commands.trigger import request_seal

    settings = _settings()
    require_topic(settings.kafka_bootstrap_servers, settings.topics.events)
    message = request_seal(settings.kafka_bootstrap_servers, source, settings.topics.events)
    # Sent, not done: whether the source has an open batch only the batcher knows.
    print(f"seal requested for {source!r} (events partition {message.partition()}, "
          f"offset {message.offset()}); the batcher seals that source's open batch, if it "
          "has one, when it reads that far")


@app.command("lag-exporter")
def lag_exporter() -> None:
    """Serve consumer lag of every agent's group for Prometheus (LAG_EXPORTER_PORT),
    read from the broker: it needs no running worker."""
    from streams.commands.lag_exporter import run

    run(_settings())


@app.command()
def produce(
    count: Annotated[int, typer.Option(min=1, help="events to send")] = 1000,
    rate: Annotated[
        float, typer.Option(min=0, help="events per second (0 = as fast as possible)")
    ] = 0,
    sources: Annotated[int, typer.Option(min=1, help="distinct source services (keys)")] = 5,
    invalid_ratio: Annotated[
        float, typer.Option(min=0, max=1, help="share of deliberately invalid messages")
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="random seed for repeatable traffic")] = None,
    topic: Annotated[str | None, typer.Option(
        help="topic to produce to [default: the events topic]")] = None,
) -> None:
    """Send realistic synthetic traffic to the events topic."""
    # Imported here so other commands do not pay for loading librdkafka.
    from streams.adapters.kafka import require_topic
    from streams.commands.produce import produce as send_traffic

    settings = _settings()
    topic = topic or settings.topics.events
    require_topic(settings.kafka_bootstrap_servers, topic)
    report = send_traffic(
        bootstrap=settings.kafka_bootstrap_servers,
        topic=topic,
        count=count,
        rate=rate,
        sources=sources,
        invalid_ratio=invalid_ratio,
        seed=seed,
        progress=sys.stderr.isatty(),
    )
    print(
        f"produced {report.delivered}/{report.sent} events to {topic} "
        f"({report.invalid} invalid) in {report.elapsed_s:.1f}s, "
        f"{report.rate:,.0f} ev/s, {report.failed} failed"
    )
    if report.failed:
        raise StreamsightError(f"{report.failed} deliveries failed: {report.first_error}")


@app.command()
def reanalyze(
    since: Annotated[str, typer.Option(help="batches whose first event is at or after this "
                                       "time: ISO 8601 (UTC if no zone) or an age: 30m, 2h, 7d")],
    until: Annotated[str | None, typer.Option(help="... and before this time")] = None,
    source: Annotated[str | None, typer.Option(help="only this source's batches")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="send without asking")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the plan, send nothing")] = False,
) -> None:
    """Send stored batches back to the analysts, skipping those the current analyzer
    (OPENAI_MODEL and prompt version, or the built-in one) has analysed; shows the cost."""
    from streams.commands.reanalyze import run_reanalyze

    run_reanalyze(_settings(), since, until, source, yes, dry_run)


@app.command()
def analyze(
    batch_id: Annotated[str, typer.Option("--batch-id", help="the stored batch to analyse")],
) -> None:
    """Analyse one stored batch now (unless the current analyzer has already)."""
    from streams.commands.reanalyze import run_analyze

    run_analyze(_settings(), batch_id)


class BrokerKind(enum.StrEnum):
    TANSU = "tansu"
    KAFKA = "kafka"


@app.command()
def demo(
    events: Annotated[int, typer.Option(min=1, help="events to send")] = 3000,
    sources: Annotated[int, typer.Option(min=1, help="distinct source services (keys)")] = 6,
    rate: Annotated[
        float, typer.Option(min=0, help="events per second (0 = as fast as possible)")
    ] = 500,
    batch_age: Annotated[
        float, typer.Option(min=0.1, help="seconds until an open batch seals by age")
    ] = 10,
    batch_events: Annotated[int, typer.Option(min=1, help="events that seal a batch")] = 100,
    invalid_ratio: Annotated[
        float, typer.Option(min=0, max=1, help="share of deliberately invalid messages")
    ] = 0.02,
    seed: Annotated[int | None, typer.Option(help="random seed for repeatable traffic")] = None,
    duration: Annotated[
        float | None, typer.Option(min=1, help="stop after this many seconds (default: Ctrl-C)")
    ] = None,
    database: Annotated[
        str, typer.Option(help="database to (re)create for the demo")
    ] = "streamsight_demo",
    admin_dsn: Annotated[
        str | None,
        typer.Option(help="PostgreSQL server to use (default: a local one, started when down)"),
    ] = None,
    run_dir: Annotated[
        Path, typer.Option(help="directory for the worker's and broker's logs and data")
    ] = Path(".run/demo"),
    broker: Annotated[
        BrokerKind, typer.Option(help="tansu (embedded, instant) or kafka (Apache Kafka "
                                      "4.4, fetched with Maven the first time)")
    ] = BrokerKind.TANSU,
) -> None:
    """Start an embedded broker and PostgreSQL, a worker and sample traffic; print batches."""
    from streams.commands.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            events=events,
            sources=sources,
            rate=rate,
            batch_age=batch_age,
            batch_events=batch_events,
            invalid_ratio=invalid_ratio,
            seed=seed,
            duration=duration,
            database=database,
            admin_dsn=admin_dsn,
            run_dir=run_dir,
            broker=broker.value,
        )
    )


dlq_app = typer.Typer(
    help="Inspect the dead-letter topic and send messages back after a fix.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

_Reason = Annotated[
    list[str] | None,
    typer.Option("--reason", help="only this dlq.reason, e.g. malformed_json (repeatable)"),
]
_OriginTopic = Annotated[
    list[str] | None,
    typer.Option("--origin-topic", help="only messages that came from this topic (repeatable)"),
]
_Since = Annotated[
    str | None,
    typer.Option(help="dead-lettered at or after: ISO 8601 (UTC if no zone) or an age: "
                      "30m, 2h, 7d"),
]
_Until = Annotated[
    str | None, typer.Option(help="dead-lettered before: ISO 8601 or an age: 30m, 2h, 7d")
]
_Redriven = Annotated[
    int | None,
    typer.Option(min=0, help="only messages redriven exactly this many times before (0 = never)"),
]
_Limit = Annotated[int | None, typer.Option(min=1, help="at most this many, oldest first")]


@dlq_app.command("list")
def dlq_list(
    since: _Since = None, until: _Until = None, as_json: _Json = False
) -> None:
    """Count dead-letter messages by reason and by origin topic."""
    from streams.commands import dlq
    from streams.core.dlq import selection

    settings = _settings()
    dlq.run_list(settings.kafka_bootstrap_servers, settings.topics.dead_letter,
                 selection(since=since, until=until, now=_now()), as_json)


@dlq_app.command("show")
def dlq_show(
    reason: _Reason = None, origin_topic: _OriginTopic = None, since: _Since = None,
    until: _Until = None, redriven: _Redriven = None, limit: _Limit = None,
    as_json: _Json = False,
) -> None:
    """Show dead-letter messages: reason, error, field, origin, key and value."""
    from streams.commands import dlq
    from streams.core.dlq import selection

    chosen = selection(reason, origin_topic, since, until, redriven, now=_now())
    settings = _settings()
    dlq.run_show(settings.kafka_bootstrap_servers, settings.topics.dead_letter, chosen, limit,
                 as_json)


@dlq_app.command("redrive")
def dlq_redrive(
    reason: _Reason = None, origin_topic: _OriginTopic = None, since: _Since = None,
    until: _Until = None, redriven: _Redriven = None,
    offset: Annotated[
        list[str] | None,
        typer.Option("--offset", help="a dead-letter partition:offset as `dlq show` prints "
                     "it (repeatable); combined with the filters"),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="every dead-letter message (when no filter is given)")
    ] = False,
    limit: _Limit = None,
    execute: Annotated[
        bool, typer.Option("--execute", help="send them (default: dry run, list only)")
    ] = False,
    as_json: _Json = False,
) -> None:
    """Send dead-letter messages back to their original topic (dry run unless --execute).

    Original key and value, header dlq.redrive = times sent back; dead-letter keeps all.
    """
    from streams.commands import dlq
    from streams.core.dlq import selection

    chosen = selection(reason, origin_topic, since, until, redriven, offset, now=_now())
    settings = _settings()
    dlq.run_redrive(settings.kafka_bootstrap_servers, settings.topics.dead_letter, chosen,
                    limit, execute, as_json, every=every)


replay_app = typer.Typer(
    help="Replay: move a consumer group's offsets, copy a time range between topics.",
    no_args_is_help=True,
)
app.add_typer(replay_app, name="replay")


@replay_app.command("reset")
def replay_reset(
    group: Annotated[str, typer.Option(
        help="consumer group, or an agent's name (batcher) for <APP_ID>-<agent>")],
    topic: Annotated[str | None, typer.Option(
        help="topic whose offsets move (default: the agent's topic)")] = None,
    to_datetime: Annotated[str | None, typer.Option(
        help="first message at or after this ISO 8601 time (UTC if no zone)")] = None,
    by_duration: Annotated[str | None, typer.Option(
        help="first message at or after now minus this: 30m, 2h, 1d")] = None,
    to_offset: Annotated[int | None, typer.Option(
        help="this offset (kept within each partition's range)")] = None,
    to_earliest: Annotated[bool, typer.Option(
        "--to-earliest", help="the earliest offset still held")] = False,
    partitions: Annotated[str | None, typer.Option(
        help="only these partitions, e.g. 0,1 (default: all)")] = None,
    execute: Annotated[bool, typer.Option(
        "--execute", help="apply the plan (default: dry run, show it)")] = False,
) -> None:
    """Move a stopped consumer group's committed offsets (dry run unless --execute).

    --execute is refused while the group has active members (the dry run shows the plan,
    marked as not executable). Replaying the batcher is safe: batches
    recorded in `batches` are re-formed identically, so the sinks add no rows, and the
    analyst skips AI calls for batches whose insight is stored.
    """
    from streams.commands import replay

    target = replay.choose_target(to_datetime=to_datetime, by_duration=by_duration,
                                  to_offset=to_offset, to_earliest=to_earliest)
    replay.run_reset(_settings(), group=group, topic=topic, target=target,
                     partitions=partitions, execute=execute)


@replay_app.command("copy")
def replay_copy(
    source: Annotated[str, typer.Option("--from", help="topic to copy from")],
    destination: Annotated[str, typer.Option("--to", help="topic to copy to (must exist)")],
    since: Annotated[str, typer.Option(
        help="messages stamped at or after this time: ISO 8601 (UTC if no zone) or an age: "
             "30m, 2h, 7d")],
    until: Annotated[str | None, typer.Option(
        help="... and before this time (default: the end at start)")] = None,
    key: Annotated[str | None, typer.Option(help="only messages with this key")] = None,
) -> None:
    """Copy a time range of messages (key, value, headers, timestamp) to another topic,
    marked with the header replay.copied-from = <topic>/<partition>/<offset>."""
    from streams.commands import replay

    replay.run_copy(_settings(), source=source, destination=destination, since=since,
                    until=until, key=key, progress=sys.stderr.isatty())


def main() -> None:
    try:
        app()
    except StreamsightError as exc:
        print(f"streamsight: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
