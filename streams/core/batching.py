"""Per-key batching: add events, seal at a count or an age, recover seal decisions.

Pure and synchronous: the caller passes the wall-clock time (epoch seconds) in, so tests
move time instead of waiting for it.

Within a partition, all events of a key arrive in offset order, so a key's batches are
contiguous runs of its events. That gives the two facts the guarantees rest on:

* The offset that may be committed for a partition is the first offset of its oldest
  open batch: everything below it is in a sealed batch (or on dead-letter).
* A seal decision is fully described by the key and the batch's offset range. After a
  crash the consumer re-reads from the committed offset, and ``recover`` hands back the
  decisions recorded since then, so the same batches are re-formed, never others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from streams.core.digest import summarize
from streams.core.models import AnalysisRequest, Event, SealReason, batch_id_for


@dataclass(frozen=True, slots=True)
class SealDecision:
    """A batch sealed before: where it ended, why, and when (from the batches table)."""

    key: str
    first_offset: int
    last_offset: int
    reason: SealReason
    opened_at: datetime
    sealed_at: datetime


@dataclass(slots=True)
class _OpenBatch:
    key: str
    first_offset: int
    opened_at: float
    batch_id: str
    events: list[Event] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    last_offset: int = -1
    # Set while re-forming a recorded batch: it seals there and nowhere else.
    replaying: SealDecision | None = None


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Batcher:
    """Open batches of one topic, per partition and key."""

    def __init__(self, topic: str, max_events: int, max_age_seconds: float) -> None:
        self.topic = topic
        self.max_events = max_events
        self.max_age_seconds = max_age_seconds
        # Per partition, open batches in the order they opened: the first one holds the
        # lowest first offset and the earliest deadline.
        self._open: dict[int, dict[str, _OpenBatch]] = {}
        # Per partition and key, decisions still to be re-formed or skipped, oldest first.
        self._recorded: dict[int, dict[str, list[SealDecision]]] = {}
        self._position: dict[int, int] = {}
        self._start: dict[int, int] = {}
        self.duplicates = 0

    # -- partitions ---------------------------------------------------------------

    def assign(self, partition: int, start: int, decisions: Iterable[SealDecision]) -> None:
        """Take a partition that will be read from ``start``, with the decisions recorded
        for it whose last offset is at or after ``start``."""
        recorded: dict[str, list[SealDecision]] = {}
        for decision in sorted(decisions, key=lambda d: d.first_offset):
            recorded.setdefault(decision.key, []).append(decision)
        self._open[partition] = {}
        self._recorded[partition] = recorded
        self._position[partition] = start
        self._start[partition] = start

    def revoke(self, partition: int) -> None:
        """Give a partition up without sealing: its next owner re-reads the open batches."""
        self._open.pop(partition, None)
        self._recorded.pop(partition, None)
        self._position.pop(partition, None)
        self._start.pop(partition, None)

    @property
    def partitions(self) -> list[int]:
        return list(self._open)

    def commit_offset(self, partition: int) -> int:
        """The offset below which every event of the partition is in a sealed batch."""
        open_batches = self._open[partition]
        if open_batches:
            return next(iter(open_batches.values())).first_offset
        return self._position[partition]

    def open_batches(self) -> int:
        return sum(len(p) for p in self._open.values())

    # -- events -------------------------------------------------------------------

    def add(
        self, partition: int, offset: int, key: str, event: Event, now: float,
        sealed: list[AnalysisRequest],
    ) -> str | None:
        """Add one valid event read at ``offset``; a batch it completes goes to ``sealed``.

        Returns the id of the batch the event is in, or None when it was left out: a
        duplicate within its batch, or already in a batch sealed before the re-read start.
        The caller reports how far it has read with ``advance`` once per fetch."""
        open_batches = self._open[partition]
        batch = open_batches.get(key)
        if batch is None or batch.replaying is not None:
            batch = self._batch_for(partition, open_batches, batch, key, offset, now, sealed)
            if batch is None:
                return None
        ids = batch.ids
        event_id = event.event_id
        if event_id in ids:
            self.duplicates += 1
            return None
        ids.add(event_id)
        events = batch.events
        events.append(event)
        batch.last_offset = offset
        replaying = batch.replaying
        if replaying is not None:
            if offset == replaying.last_offset:
                del open_batches[key]
                sealed.append(self._seal(partition, batch, replaying.reason,
                                         replaying.sealed_at.timestamp()))
        elif len(events) >= self.max_events:
            del open_batches[key]
            sealed.append(self._seal(partition, batch, SealReason.COUNT, now))
        return batch.batch_id

    def advance(self, partition: int, position: int) -> None:
        """Everything before ``position`` has been read (batched or dead-lettered)."""
        self._position[partition] = position

    def _batch_for(
        self, partition: int, open_batches: dict[str, _OpenBatch], batch: _OpenBatch | None,
        key: str, offset: int, now: float, sealed: list[AnalysisRequest],
    ) -> _OpenBatch | None:
        """The slow path of ``add``: open a batch, or close a re-formed one that ended."""
        if batch is not None:
            assert batch.replaying is not None
            if offset <= batch.replaying.last_offset:
                return batch
            # The recorded batch ended before this event (its last one is gone): close it.
            del open_batches[key]
            sealed.append(self._seal(partition, batch, batch.replaying.reason,
                                     batch.replaying.sealed_at.timestamp()))
        opened = self._open_batch(partition, key, offset, now)
        if opened is not None:
            open_batches[key] = opened
        return opened

    def _open_batch(self, partition: int, key: str, offset: int, now: float) -> _OpenBatch | None:
        """A new batch starting at ``offset``, or None when that event is already in a
        batch sealed before the re-read start (it was published; skip it)."""
        recorded = self._recorded[partition].get(key, [])
        while recorded and recorded[0].last_offset < offset:
            recorded.pop(0)
        head = recorded[0] if recorded else None
        if head is not None and head.first_offset < self._start[partition]:
            return None
        batch_id = batch_id_for(self.topic, partition, offset, key)
        if head is not None and head.first_offset == offset:
            recorded.pop(0)
            return _OpenBatch(key, offset, head.opened_at.timestamp(), batch_id, replaying=head)
        return _OpenBatch(key, offset, now, batch_id)

    # -- time and shutdown --------------------------------------------------------

    def due(self, now: float, sealed: list[AnalysisRequest]) -> None:
        """Seal every batch whose age has reached the limit, also for idle keys."""
        deadline = now - self.max_age_seconds
        for partition, open_batches in self._open.items():
            for key in list(open_batches):
                batch = open_batches[key]
                if batch.replaying is not None:
                    continue
                if batch.opened_at > deadline:
                    break
                del open_batches[key]
                sealed.append(self._seal(partition, batch, SealReason.AGE, now))

    def drain(
        self, reason: SealReason, now: float, sealed: list[AnalysisRequest],
        partition: int | None = None, key: str | None = None,
    ) -> None:
        """Seal open batches now (shutdown, or a manual trigger for one key).

        Batches being re-formed are left open: their content is already decided, and
        sealing them early would give their id to a different set of events.
        """
        for part, open_batches in self._open.items():
            if partition is not None and part != partition:
                continue
            for batch_key in list(open_batches):
                batch = open_batches[batch_key]
                if batch.replaying is not None or (key is not None and batch_key != key):
                    continue
                del open_batches[batch_key]
                sealed.append(self._seal(part, batch, reason, now))

    def _seal(
        self, partition: int, batch: _OpenBatch, reason: SealReason, now: float
    ) -> AnalysisRequest:
        events = batch.events
        stamps = [e.timestamp for e in events]
        return AnalysisRequest(
            batch_id=batch.batch_id,
            key=batch.key,
            topic=self.topic,
            partition=partition,
            first_offset=batch.first_offset,
            last_offset=batch.last_offset,
            event_count=len(events),
            seal_reason=reason,
            opened_at=_utc(batch.opened_at),
            sealed_at=_utc(now),
            first_event_at=min(stamps),
            last_event_at=max(stamps),
            digest=summarize(events),
            event_ids=[e.event_id for e in events],
        )
