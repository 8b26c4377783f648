"""Replay: move a consumer group's committed offsets, copy a time range between topics.

``streamsight replay reset`` plans, per partition, where a group's committed offset goes
(earliest, an offset, a point in time, or a duration before now) and shows the plan; with
``--execute`` it applies it with AdminClient.alter_consumer_group_offsets, and only while
the group has no active member.

``streamsight replay copy`` copies the messages of a time range (optionally one key) from
one topic to another, keeping key, value, headers and timestamp and adding the header
``replay.copied-from`` = ``<topic>/<partition>/<offset>`` (and ``replay.copied-at``). It
stops at the end offsets it captured at the start, so a live topic does not keep it going.

End offsets and the offsets of points in time come from the Kafka adapter's ``Cluster``,
which asks the broker and reads the log instead where a broker answers wrong (Tansu).

What replaying the batcher does: its recovery reads the ``batches`` rows that end at or
after the offset it starts from and re-forms those batches from the same events (same
ids, same contents, same seal times); events of batches that ended before that offset are
skipped. A replay therefore re-publishes identical analysis requests and performance and
error rows, and the sinks, which insert with ON CONFLICT DO NOTHING, add no rows. The
analyst skips the AI call for a request whose insight is stored already (the built-in
analyzer, which costs nothing, answers again under the same insight id).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from agents.registry import topics_read
from streams import config
from streams.adapters.kafka import Cluster, client_conf, kafka_error
from streams.core import times
from streams.errors import ConfigError, PermanentError, StreamsightError

TIMEOUT_S = 15.0
COPIED_FROM = "replay.copied-from"
COPIED_AT = "replay.copied-at"

# --- pure planning -------------------------------------------------------------------------

def format_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def resolve_group(name: str, app_id: str, topic: str | None,
                  topics: config.Topics = config.DEFAULT_TOPICS) -> tuple[str, str]:
    """(consumer group, topic): an agent's name stands for ``<APP_ID>-<agent>``, and an
    agent's group reads the agent's topic unless ``topic`` says otherwise."""
    read = topics_read(topics)
    group = f"{app_id}-{name}" if name in read else name
    if topic is None:
        for agent, agent_topic in read.items():
            if group == f"{app_id}-{agent}":
                return group, agent_topic
        raise ConfigError(f"--topic is needed: {group!r} is not the group of an agent "
                          f"({', '.join(read)}) under APP_ID={app_id!r}")
    return group, topic


def parse_partitions(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        chosen = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ConfigError(f"invalid --partitions {text!r}: use numbers, e.g. 0,1") from None
    if not chosen or chosen[0] < 0:
        raise ConfigError(f"invalid --partitions {text!r}: use numbers, e.g. 0,1")
    return chosen


@dataclass(frozen=True)
class Target:
    """Where to move the offsets: the earliest one, an offset, or a time (epoch ms)."""

    kind: Literal["earliest", "offset", "time"]
    value: int = 0

    def describe(self) -> str:
        if self.kind == "earliest":
            return "earliest"
        if self.kind == "offset":
            return f"offset {self.value}"
        return f"first message at or after {format_ms(self.value)}"


def choose_target(*, to_datetime: str | None, by_duration: str | None, to_offset: int | None,
                  to_earliest: bool, now: float | None = None) -> Target:
    """Exactly one of the four options; ``--by-duration D`` is the time ``now - D``."""
    given = [name for name, value in (("--to-datetime", to_datetime),
                                      ("--by-duration", by_duration),
                                      ("--to-offset", to_offset)) if value is not None]
    if to_earliest:
        given.append("--to-earliest")
    if len(given) != 1:
        raise ConfigError("choose exactly one of --to-datetime, --by-duration, --to-offset, "
                          f"--to-earliest (got {', '.join(given) or 'none'})")
    moment_of_call = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if to_datetime is not None:
        return Target("time", times.moment_ms(to_datetime, "--to-datetime", moment_of_call))
    if by_duration is not None:
        ago = times.duration(by_duration, "--by-duration")
        return Target("time", int((moment_of_call - ago).timestamp() * 1000))
    if to_offset is not None:
        if to_offset < 0:
            raise ConfigError("--to-offset must be 0 or above")
        return Target("offset", to_offset)
    return Target("earliest")


@dataclass(frozen=True)
class PartitionPlan:
    partition: int
    #: The committed offset, or None when the group never committed on the partition.
    current: int | None
    target: int
    low: int
    end: int
    #: The asked offset was outside [low, end] and was moved to its nearest bound.
    clamped: bool = False

    @property
    def reprocess(self) -> int | None:
        """Messages read again (positive) or skipped (negative); None without a commit."""
        return None if self.current is None else self.current - self.target


def plan_partition(partition: int, current: int | None, wanted: int, low: int, end: int,
                   ) -> PartitionPlan:
    """The target offset, kept within what the partition holds."""
    target = min(max(wanted, low), end)
    return PartitionPlan(partition, current, target, low, end, clamped=target != wanted)


# --- reset ---------------------------------------------------------------------------------


def activity(cluster: Cluster, group: str) -> str | None:
    """Why ``group`` cannot be reset now (someone consumes in it: a reset would be
    overwritten by their next commit, and Kafka refuses it anyway), or None."""
    found = cluster.group(group)
    if found.idle:
        return None
    members = "" if found.members is None else f", {found.members} members"
    return f"consumer group {group} is active (state {found.state}{members})"


def ensure_idle(cluster: Cluster, group: str) -> None:
    busy = activity(cluster, group)
    if busy:
        raise StreamsightError(f"{busy}: stop its workers first, then reset")


@dataclass(frozen=True)
class ResetPlan:
    group: str
    topic: str
    target: Target
    partitions: tuple[PartitionPlan, ...]

    @property
    def reprocess(self) -> int:
        return sum(max(0, p.reprocess or 0) for p in self.partitions)


def plan_reset(cluster: Cluster, group: str, topic: str, target: Target,
               partitions: Sequence[int] | None = None) -> ResetPlan:
    existing = cluster.partitions(topic)
    chosen = list(partitions) if partitions is not None else existing
    unknown = sorted(set(chosen) - set(existing))
    if unknown:
        raise ConfigError(f"topic {topic} has no partition {unknown[0]} "
                          f"(it has {len(existing)})")
    bounds = cluster.bounds(topic, chosen)
    current = cluster.committed(group, topic, chosen)
    if target.kind == "time":
        wanted = cluster.offsets_at(topic, target.value, bounds)
    elif target.kind == "offset":
        wanted = dict.fromkeys(chosen, target.value)
    else:
        wanted = {p: low for p, (low, _) in bounds.items()}
    return ResetPlan(group, topic, target, tuple(
        plan_partition(p, current[p], wanted[p], *bounds[p]) for p in chosen))


class _CoordinatorMoving(StreamsightError):
    """The group's coordinator is being elected or loaded: asking again will do."""


# Kafka answers these while the offsets topic is created (a new cluster's first group)
# or a coordinator moves; Tansu never does.
_COORDINATOR_MOVING = frozenset({"NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS",
                                 "COORDINATOR_NOT_AVAILABLE"})


def apply_reset(cluster: Cluster, plan: ResetPlan) -> None:
    ensure_idle(cluster, plan.group)
    request = ConsumerGroupTopicPartitions(plan.group, [
        TopicPartition(plan.topic, p.partition, p.target) for p in plan.partitions])
    for attempt in Retrying(retry=retry_if_exception_type(_CoordinatorMoving),
                            stop=stop_after_delay(TIMEOUT_S),
                            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
                            reraise=True):
        with attempt:
            try:
                result = cluster.admin.alter_consumer_group_offsets(
                    [request], request_timeout=TIMEOUT_S)[plan.group].result()
            except KafkaException as exc:
                raise kafka_error(exc, f"moving the offsets of consumer group {plan.group}",
                                  ) from exc
            failed = [tp for tp in result.topic_partitions if tp.error is not None]
            if not failed:
                return
            first = failed[0]
            message = (f"moving {plan.group} on {plan.topic}/{first.partition} failed: "
                       f"{first.error.str()} ({first.error.name()})")
            if all(tp.error.name() in _COORDINATOR_MOVING for tp in failed):
                raise _CoordinatorMoving(message)
            raise StreamsightError(message)


def run_reset(settings: config.Settings, *, group: str, topic: str | None, target: Target,
              partitions: str | None, execute: bool) -> None:
    """``streamsight replay reset``: show the plan, apply it with ``execute``."""
    from rich.console import Console

    group, topic = resolve_group(group, settings.app_id, topic, settings.topics)
    with Cluster(settings.kafka_bootstrap_servers, "streamsight-replay") as cluster:
        busy = activity(cluster, group)
        if execute and busy:
            # Refused before planning: a plan for an active group would be stale at once.
            raise StreamsightError(f"{busy}: stop its workers first, then reset")
        plan = plan_reset(cluster, group, topic, target, parse_partitions(partitions))
        _show(plan)
        if not execute:
            Console().print(f"{plan.reprocess:,} messages to reprocess; "
                            "dry run: add --execute to apply")
            if busy:
                Console().print(f"[yellow]not executable now: {busy}: stop its workers "
                                "before --execute[/]")
            return
        apply_reset(cluster, plan)
    Console().print(f"moved {group} on {len(plan.partitions)} partitions of {topic}; "
                    f"{plan.reprocess:,} messages to reprocess")


def _show(plan: ResetPlan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"reset {plan.group} on {plan.topic} to {plan.target.describe()}")
    table = Table()
    for column in ("partition", "current committed", "target", "messages to reprocess"):
        table.add_column(column, justify="right")
    for p in plan.partitions:
        moved = p.reprocess
        change = ("-" if moved is None else f"{moved:,}" if moved >= 0
                  else f"[yellow]skips {-moved:,}[/]")
        note = f" [dim](clamped to {p.low}..{p.end})[/]" if p.clamped else ""
        table.add_row(str(p.partition), "-" if p.current is None else f"{p.current:,}",
                      f"{p.target:,}{note}", change)
    console.print(table)


# --- copy ----------------------------------------------------------------------------------


@dataclass
class CopyReport:
    read: int = 0
    matched: int = 0
    copied: int = 0
    failed: int = 0
    first_error: str | None = None
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)


def copy_range(bootstrap: str, source: str, destination: str, since_ms: int,
               until_ms: int | None = None, key: bytes | None = None,
               progress: Callable[[int, int], None] | None = None) -> CopyReport:
    """Copy messages stamped in [since, until) (and of ``key``) from ``source`` to
    ``destination``; ``progress(done, total)`` is told how far the read got."""
    if until_ms is not None and until_ms <= since_ms:
        raise ConfigError("--until must be after --since")
    report = CopyReport()
    with Cluster(bootstrap, "streamsight-replay-copy") as cluster:
        partitions = cluster.partitions(source)
        cluster.partitions(destination)  # it must exist: never created here
        bounds = cluster.bounds(source, partitions)
        starts = cluster.offsets_at(source, since_ms, bounds)
        stops = (cluster.offsets_at(source, until_ms, bounds) if until_ms is not None
                 else {p: end for p, (_, end) in bounds.items()})
        report.ranges = {p: (starts[p], max(starts[p], stops[p])) for p in partitions}
        _copy(bootstrap, cluster.reader, source, destination, since_ms, until_ms, key, report,
              progress)
    return report


def _copy(bootstrap: str, reader: Consumer, source: str, destination: str, since_ms: int,
          until_ms: int | None, key: bytes | None, report: CopyReport,
          progress: Callable[[int, int], None] | None) -> None:
    producer = Producer({
        **client_conf(bootstrap, "streamsight-replay-copy"),
        "acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4",
    })

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            report.copied += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or err.str()

    pending = {p: r for p, r in report.ranges.items() if r[1] > r[0]}
    total = sum(stop - start for start, stop in pending.values())
    done = 0
    copied_at = datetime.now(UTC).isoformat(timespec="milliseconds").encode()
    if pending:
        reader.assign([TopicPartition(source, p, start) for p, (start, _) in pending.items()])
    deadline_s = TIMEOUT_S * 2
    last_message = time.monotonic()
    try:
        while pending:
            messages = reader.consume(10_000, 0.1)
            if not messages and time.monotonic() - last_message > deadline_s:
                raise PermanentError(f"reading {source} stalled: nothing for {deadline_s:.0f}s")
            for message in messages:
                error = message.error()
                partition: int = message.partition()  # type: ignore[assignment]
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        # The end of what exists is below the stop only when messages
                        # were deleted meanwhile (retention): nothing more will come.
                        if partition in pending:
                            start, stop = pending[partition]
                            done += stop - start
                            _finish(reader, source, pending, partition)
                        continue
                    if error.fatal() or not error.retriable():
                        raise kafka_error(KafkaException(error), f"reading {source}")
                    continue
                last_message = time.monotonic()
                offset: int = message.offset()  # type: ignore[assignment]
                if partition not in pending:
                    continue
                start, stop = pending[partition]
                if offset >= stop:
                    done += max(0, stop - start)
                    _finish(reader, source, pending, partition)
                    continue
                report.read += 1
                done += offset + 1 - start
                pending[partition] = (offset + 1, stop)
                stamp = message.timestamp()[1]
                if (stamp >= since_ms and (until_ms is None or stamp < until_ms)
                        and (key is None or message.key() == key)):
                    report.matched += 1
                    # Consumed messages carry headers as a list of pairs, repeats kept.
                    headers: list[tuple[str, Any]] = list(
                        message.headers() or [])  # type: ignore[arg-type]
                    headers.append((COPIED_FROM, f"{source}/{partition}/{offset}".encode()))
                    headers.append((COPIED_AT, copied_at))
                    _produce(producer, destination, message, stamp, headers, delivered)
                if offset + 1 >= stop:
                    _finish(reader, source, pending, partition)
            producer.poll(0)
            if progress is not None:
                progress(done, total)
    finally:
        left = producer.flush(TIMEOUT_S * 4)
        if left:
            report.failed += left
            report.first_error = report.first_error or f"{left} messages not acknowledged"
    if progress is not None:
        progress(total, total)


def _produce(producer: Producer, topic: str, message: Message, stamp: int,
             headers: list[tuple[str, Any]], delivered: Callable[..., None]) -> None:
    while True:
        try:
            producer.produce(topic, message.value(), message.key(), headers=headers,
                             timestamp=max(stamp, 0), on_delivery=delivered)
            return
        except BufferError:
            producer.poll(0.5)


def _finish(reader: Consumer, topic: str, pending: dict[int, tuple[int, int]],
            partition: int) -> None:
    pending.pop(partition, None)
    reader.incremental_unassign([TopicPartition(topic, partition)])


def run_copy(settings: config.Settings, *, source: str, destination: str, since: str,
             until: str | None, key: str | None, progress: bool) -> None:
    """``streamsight replay copy``: copy with a progress bar, then exact counts."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    now = datetime.now(UTC)
    since_ms = times.moment_ms(since, "--since", now)
    until_ms = times.moment_ms(until, "--until", now) if until is not None else None
    bar = Progress(TextColumn(f"copying {source} -> {destination}"), BarColumn(),
                   MofNCompleteColumn(), console=Console(stderr=True), disable=not progress,
                   transient=True)
    with bar:
        task = bar.add_task("copy", total=None)
        report = copy_range(
            settings.kafka_bootstrap_servers, source, destination, since_ms, until_ms,
            key.encode() if key is not None else None,
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    span = f"[{format_ms(since_ms)}, {format_ms(until_ms) if until_ms else 'end'})"
    print(f"read {report.read}, matched {report.matched}, copied {report.copied} "
          f"from {source} to {destination} {span}"
          + (f" key {key!r}" if key is not None else "")
          + (f", {report.failed} failed" if report.failed else ""))
    if report.failed or report.copied != report.matched:
        raise StreamsightError(f"{report.failed} of {report.matched} copies failed: "
                               f"{report.first_error}")
