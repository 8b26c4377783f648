"""The dead-letter topic as read back: what a message says, which ones a command selects,
counts, and what a redrive sends. Messages are written by ``core.deadletter``; reading and
sending them is ``adapters.dlq``.

A redriven message goes back to the topic it came from (``dlq.origin.topic``) with its
original key and value, to the partition it was read from when that still exists, and
with a ``dlq.redrive`` header counting how often it has been sent back. A redriven message
that fails again comes back as a new dead-letter message carrying the raised count, and
``--redriven N`` picks out those.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.core import times
from streams.core.deadletter import REDRIVE_HEADER
from streams.errors import ConfigError

PREVIEW_CHARS = 60


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


def preview(raw: bytes | None, width: int = PREVIEW_CHARS) -> str:
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
              *, now: datetime) -> Selection:
    """A Selection from command-line text (``--since 2h`` counts back from ``now``)."""
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
