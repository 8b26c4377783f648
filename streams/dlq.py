"""The dead-letter topic for people: ``streamsight dlq list | show | redrive``.

Dead-letter is read whole, from the beginning of every partition up to the end offsets
it had when the read began (exact on every broker: the Kafka adapter's ``Cluster``), by
an assigned consumer that commits nothing (no consumer group to join or leave behind).

Redrive sends chosen messages back to the topic they came from (``dlq.origin.topic``),
with their original key and value, to the partition they were read from when it still
exists, and with a ``dlq.redrive`` header counting how often they have been sent back.
Nothing is deleted from dead-letter: a redriven message that fails again comes back as a
new dead-letter message carrying the raised count (streams/core/deadletter.py), and
``--redriven N`` picks out those.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.adapters.kafka import Cluster, client_conf
from streams.core import times
from streams.core.deadletter import REDRIVE_HEADER
from streams.errors import ConfigError, PermanentError, RetryableError, StreamsightError

#: Seconds without an answer from the broker after which a read gives up.
_STALL_S = 15.0
_PREVIEW_CHARS = 60
_DELIVERY_TIMEOUT_S = 30

# --- what a dead-letter message says (pure) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter message: where it sits, its original key and value, its headers."""

    partition: int
    offset: int
    #: When it was dead-lettered (the dead-letter message's timestamp), ms since the epoch.
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def _text(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return None if raw is None else raw.decode("utf-8", "replace")

    def _int(self, name: str) -> int | None:
        raw = self.headers.get(name)
        try:
            return None if raw is None else int(raw)
        except ValueError:
            return None

    @property
    def position(self) -> str:
        """``partition:offset`` on dead-letter: what ``redrive --offset`` selects."""
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return self._text("dlq.reason") or "unknown"

    @property
    def error(self) -> str | None:
        return self._text("dlq.error")

    @property
    def field(self) -> str | None:
        return self._text("dlq.field")

    @property
    def origin_topic(self) -> str | None:
        return self._text("dlq.origin.topic") or None

    @property
    def origin_partition(self) -> int | None:
        return self._int("dlq.origin.partition")

    @property
    def origin_offset(self) -> int | None:
        return self._int("dlq.origin.offset")

    @property
    def origin_timestamp_ms(self) -> int | None:
        return self._int("dlq.origin.timestamp")

    @property
    def redrive(self) -> int:
        """Times this message had been redriven when it was dead-lettered (0 = never)."""
        return max(self._int(REDRIVE_HEADER) or 0, 0)

    @property
    def attempts(self) -> int | None:
        return self._int("dlq.attempts")

    @property
    def batch_id(self) -> str | None:
        return self._text("dlq.batch_id")

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "position": self.position,
            "dead_lettered_at": iso(self.timestamp_ms),
            "reason": self.reason,
            "error": self.error,
            "field": self.field,
            "origin": {
                "topic": self.origin_topic,
                "partition": self.origin_partition,
                "offset": self.origin_offset,
                "timestamp": iso(self.origin_timestamp_ms),
            },
            "redrive": self.redrive,
            "attempts": self.attempts,
            "batch_id": self.batch_id,
            "key": _text_or_none(self.key),
            **_value_json(self.value),
            "headers": {k: v.decode("utf-8", "replace") for k, v in self.headers.items()},
        }


def from_message(partition: int, offset: int, timestamp_ms: int, key: bytes | None,
                 value: bytes | None, headers: Any) -> DeadLetter:
    """A DeadLetter from a consumed message's parts (the last of repeated headers wins)."""
    found: dict[str, bytes] = {}
    for name, raw in headers or ():
        if raw is not None:
            found[name] = raw if isinstance(raw, bytes) else str(raw).encode()
    return DeadLetter(partition, offset, timestamp_ms, key, value, found)


def iso(ms: int | None) -> str | None:
    if ms is None or ms < 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _text_or_none(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _value_json(value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {"value": None, "value_encoding": None}
    try:
        return {"value": value.decode("utf-8"), "value_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode(), "value_encoding": "base64"}


def preview(raw: bytes | None, width: int = _PREVIEW_CHARS) -> str:
    """One printable line of at most ``width`` characters."""
    if raw is None:
        return "(null)"
    if not raw:
        return "(empty)"
    text = raw.decode("utf-8", "replace").encode("unicode_escape").decode("ascii")
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_position(text: str) -> tuple[int, int]:
    """``--offset partition:offset`` (a dead-letter position, as ``dlq show`` prints)."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ConfigError(f"cannot read --offset {text!r}: use partition:offset, e.g. 0:17")
    return int(partition), int(offset)


@dataclass(frozen=True)
class Selection:
    """Which dead-letter messages a command works on; every given criterion must hold."""

    reasons: frozenset[str] = frozenset()
    origin_topics: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    positions: frozenset[tuple[int, int]] = frozenset()
    redriven: int | None = None

    @property
    def everything(self) -> bool:
        return self == Selection()

    def matches(self, message: DeadLetter) -> bool:
        if self.positions and (message.partition, message.offset) not in self.positions:
            return False
        if self.reasons and message.reason not in self.reasons:
            return False
        if self.origin_topics and message.origin_topic not in self.origin_topics:
            return False
        if self.since_ms is not None and message.timestamp_ms < self.since_ms:
            return False
        if self.until_ms is not None and message.timestamp_ms >= self.until_ms:
            return False
        return self.redriven is None or message.redrive == self.redriven


def selection(reasons: Sequence[str] | None = None, origin_topics: Sequence[str] | None = None,
              since: str | None = None, until: str | None = None,
              redriven: int | None = None, positions: Sequence[str] | None = None,
              now: datetime | None = None) -> Selection:
    """A Selection from command-line text."""
    now = now or datetime.now(UTC)
    return Selection(
        reasons=frozenset(reasons or ()),
        origin_topics=frozenset(origin_topics or ()),
        since_ms=times.moment_ms(since, "--since", now) if since else None,
        until_ms=times.moment_ms(until, "--until", now) if until else None,
        positions=frozenset(parse_position(p) for p in positions or ()),
        redriven=redriven,
    )


def ordered(messages: Iterable[DeadLetter], limit: int | None = None) -> list[DeadLetter]:
    """Oldest first (by dead-letter time, then position); the first ``limit`` of them."""
    out = sorted(messages, key=lambda m: (m.timestamp_ms, m.partition, m.offset))
    return out if limit is None else out[:limit]


@dataclass(frozen=True)
class Counts:
    total: int
    by_reason: Counter[str]
    by_origin: Counter[str]

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.by_reason.most_common()),
                "by_origin_topic": dict(self.by_origin.most_common())}


def count(messages: Iterable[DeadLetter]) -> Counts:
    by_reason: Counter[str] = Counter()
    by_origin: Counter[str] = Counter()
    total = 0
    for message in messages:
        total += 1
        by_reason[message.reason] += 1
        by_origin[message.origin_topic or "(unknown)"] += 1
    return Counts(total, by_reason, by_origin)


@dataclass(frozen=True)
class Outgoing:
    """A redriven message as it goes back to its original topic."""

    source: DeadLetter
    topic: str
    #: The partition it was read from; None lets the key choose (Java's murmur2).
    partition: int | None
    key: bytes | None
    value: bytes | None
    #: The ``dlq.redrive`` header it carries: one more than the dead-letter message had.
    redrive: int

    @property
    def headers(self) -> list[tuple[str, str | bytes | None]]:
        return [(REDRIVE_HEADER, str(self.redrive).encode())]


def outgoing(message: DeadLetter) -> Outgoing | None:
    """What redriving ``message`` sends, or None when it does not say where it came from."""
    topic = message.origin_topic
    if topic is None:
        return None
    return Outgoing(message, topic, message.origin_partition, message.key, message.value,
                    message.redrive + 1)


# --- reading and sending ------------------------------------------------------------------


def _partitions(client: Any, topic: str) -> int:
    from confluent_kafka import KafkaException

    from streams.adapters.kafka import kafka_error

    try:
        metadata = client.list_topics(topic, timeout=15)
    except KafkaException as exc:
        raise kafka_error(exc, f"cannot read metadata of {topic}") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return 0
    return len(found.partitions)


def read(bootstrap: str, topic: str) -> Iterator[DeadLetter]:
    """Every message of ``topic``, up to the end each partition had when the read began:
    dead-letter may keep growing during an incident, and that must not keep it going.
    Commits nothing."""
    from confluent_kafka import KafkaError, TopicPartition

    with Cluster(bootstrap, f"streamsight-dlq-{uuid.uuid4().hex[:12]}") as cluster:
        try:
            partitions = cluster.partitions(topic)
        except PermanentError:
            raise ConfigError(f"topic {topic} does not exist (streamsight topics apply)") from None
        bounds = cluster.bounds(topic, partitions)
        pending = {p: end for p, (low, end) in bounds.items() if end > low}
        reader = cluster.reader
        reader.assign([TopicPartition(topic, p, bounds[p][0]) for p in pending])
        answered = time.monotonic()
        while pending:
            messages = reader.consume(1000, 0.2)
            if messages:
                answered = time.monotonic()
            elif time.monotonic() - answered > _STALL_S:
                raise RetryableError(f"reading {topic}: no answer from {bootstrap} for "
                                     f"partition(s) {sorted(pending)} within {_STALL_S:.0f}s")
            for message in messages:
                partition: int = message.partition()  # type: ignore[assignment]
                offset: int = message.offset()  # type: ignore[assignment]
                err = message.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RetryableError(f"reading {topic}: {err.str()}")
                    # Short of its end only when retention removed messages meanwhile.
                    pending.pop(partition, None)
                    continue
                if partition not in pending or offset >= pending[partition]:
                    continue
                if offset + 1 >= pending[partition]:
                    del pending[partition]
                ts_type, ts_ms = message.timestamp()
                yield from_message(partition, offset, ts_ms if ts_type else -1, message.key(),
                                   message.value(), message.headers())


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def send(bootstrap: str, messages: Sequence[Outgoing]) -> SendReport:
    """Produce ``messages`` with acks=all and wait for every delivery report."""
    from confluent_kafka import KafkaException, Producer

    report = SendReport()

    def on_delivery(where: str) -> Any:
        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                report.sent += 1
            else:
                report.failed += 1
                report.errors.append(f"{where}: {err.str()}")
        return delivered

    producer = Producer({
        **client_conf(bootstrap, "streamsight-dlq"),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": _DELIVERY_TIMEOUT_S * 1000,
        # The workers' producers (aiokafka) place keys as Java clients do.
        "partitioner": "murmur2_random",
    })
    partitions: dict[str, int] = {}
    queued = 0
    for item in messages:
        where = item.source.position
        if item.topic not in partitions:
            partitions[item.topic] = _partitions(producer, item.topic)
        if not partitions[item.topic]:
            report.failed += 1
            report.errors.append(f"{where}: topic {item.topic} does not exist")
            continue
        extra: dict[str, Any] = {}
        if item.partition is not None and 0 <= item.partition < partitions[item.topic]:
            extra["partition"] = item.partition
        try:
            producer.produce(item.topic, item.value, item.key, headers=item.headers,
                             on_delivery=on_delivery(where),
                             **extra)
            queued += 1
        except (KafkaException, BufferError) as exc:
            report.failed += 1
            report.errors.append(f"{where}: {exc}")
        producer.poll(0)
    remaining = producer.flush(_DELIVERY_TIMEOUT_S + 5) if queued else 0
    if remaining:
        report.failed += remaining
        report.errors.append(f"{remaining} messages not acknowledged before the timeout")
    return report


# --- the commands -------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def run_list(bootstrap: str, topic: str, selection: Selection, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = count(m for m in read(bootstrap, topic) if selection.matches(m))
    if as_json:
        _print_json(counts.to_json())
        return
    console = Console()
    for title, counter, column in (("by reason", counts.by_reason, "reason"),
                                   ("by origin topic", counts.by_origin, "origin topic")):
        table = Table(title=f"dead-letter {title}", title_justify="left")
        table.add_column(column)
        table.add_column("messages", justify="right")
        for name, n in counter.most_common():
            table.add_row(name, f"{n:,}")
        table.add_section()
        table.add_row("[bold]total[/]", f"[bold]{counts.total:,}[/]")
        console.print(table)


def _print_messages(console: Any, messages: Sequence[DeadLetter], redrive: bool = False) -> None:
    """One block per message: readable at any terminal width, unlike a wide table."""
    from rich.markup import escape

    for m in messages:
        head = f"[bold]{m.position}[/]  [red]{escape(m.reason)}[/]"
        if m.field:
            head += f" ({escape(m.field)})"
        head += f"  dead-lettered {iso(m.timestamp_ms) or '?'}"
        if m.redrive:
            head += f"  redriven {m.redrive}x"
        console.print(head)
        origin = escape(m.origin_topic or "?")
        if m.origin_offset is not None:
            origin += f" {m.origin_partition}:{m.origin_offset}"
        if m.origin_timestamp_ms is not None:
            origin += f" at {iso(m.origin_timestamp_ms)}"
        lines = [("origin", origin), ("key", escape(preview(m.key))),
                 ("value", escape(preview(m.value, 100)))]
        if m.error:
            lines.append(("error", escape(m.error[:300])))
        if m.attempts is not None or m.batch_id:
            lines.append(("batch", f"{m.batch_id or '?'} after {m.attempts or '?'} attempts"))
        if redrive:
            out = outgoing(m)
            lines.append(("send to", "[red]nowhere: no dlq.origin.topic[/]" if out is None else
                          escape(out.topic)
                          + (f" partition {out.partition}" if out.partition is not None else "")
                          + f", dlq.redrive={out.redrive}"))
        for label, text in lines:
            console.print(f"  [dim]{label:<8}[/]{text}", highlight=False, soft_wrap=True)


def _collect(bootstrap: str, topic: str, selection: Selection, limit: int | None,
             ) -> list[DeadLetter]:
    return ordered((m for m in read(bootstrap, topic) if selection.matches(m)), limit)


def run_show(bootstrap: str, topic: str, selection: Selection, limit: int | None, as_json: bool,
             ) -> None:
    from rich.console import Console

    messages = _collect(bootstrap, topic, selection, limit)
    if as_json:
        _print_json([m.to_json() for m in messages])
        return
    console = Console()
    _print_messages(console, messages)
    console.print(f"{len(messages)} message(s)")


def run_redrive(bootstrap: str, topic: str, selection: Selection, limit: int | None, execute: bool,
                as_json: bool, every: bool = False) -> None:
    from rich.console import Console

    if selection.everything and not every:
        raise ConfigError("say which messages to redrive: --reason, --origin-topic, --since, "
                          "--until, --redriven or --offset (or --all for every one)")
    messages = _collect(bootstrap, topic, selection, limit)
    missing = sorted(selection.positions - {(m.partition, m.offset) for m in messages})
    plan = [(m, outgoing(m)) for m in messages]
    sendable = [out for _, out in plan if out is not None]
    unsendable = [m.position for m, out in plan if out is None]
    report = SendReport()
    if execute:
        if sendable:
            report = send(bootstrap, sendable)
        report.failed += len(unsendable)
        report.errors += [f"{p}: no dlq.origin.topic header" for p in unsendable]

    summary = {"matched": len(messages), "sent": report.sent, "failed": report.failed,
               "dry_run": not execute, "would_send": len(sendable),
               "not_found": [f"{p}:{o}" for p, o in missing], "errors": report.errors}
    if as_json:
        _print_json({**summary, "messages": [
            {**m.to_json(), "send_to": None if out is None else
             {"topic": out.topic, "partition": out.partition, "redrive": out.redrive}}
            for m, out in plan]})
    else:
        console = Console()
        _print_messages(console, messages, redrive=True)
        for error in report.errors:
            console.print(f"[red]failed[/] {error}")
        for p, o in missing:
            console.print(f"[yellow]not on dead-letter:[/] {p}:{o}")
        if execute:
            console.print(f"redrive: {len(messages)} matched, {report.sent} sent, "
                          f"{report.failed} failed")
        else:
            console.print(f"dry run: {len(messages)} matched, {len(sendable)} would be sent, "
                          f"{len(unsendable)} cannot be (no origin topic); nothing sent. "
                          "Add --execute to send them.")
    if report.failed:
        raise StreamsightError(f"redrive: {report.failed} of {len(messages)} not sent")
