"""One fetch through validation and batching: the batcher's hot path.

Runs once per Kafka message at event volume, so it stays a flat loop: no per-event
task, queue, lock or await.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from streams.core.batching import Batcher
from streams.core.models import AnalysisRequest, Rejection
from streams.core.schema import parse


class Record(Protocol):
    """The parts of a consumed Kafka message that ingestion reads (confluent-kafka's
    ``Message`` API: accessor methods, a timestamp as (type, milliseconds))."""

    def partition(self) -> int | None: ...

    def offset(self) -> int | None: ...

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...

    # Typed loosely: clients declare header values as str | bytes | None.
    def headers(self) -> Any: ...

    def timestamp(self) -> tuple[int, int]: ...


def ingest(
    batcher: Batcher,
    partition: int,
    records: Sequence[Record],
    now: float,
    max_bytes: int,
    sealed: list[AnalysisRequest],
    rejected: list[tuple[Record, Rejection]],
) -> None:
    """Validate and batch ``records``; sealed batches and refusals go to the lists."""
    now_dt = datetime.fromtimestamp(now, UTC)
    add = batcher.add
    # Keys repeat (a few sources, many events): decode each distinct one once.
    keys: dict[bytes, str] = {}
    for record in records:
        key = record.key()
        offset: int = record.offset()  # type: ignore[assignment]  # set on consumed messages
        result = parse(key, record.value(), record.headers(), now=now_dt, max_bytes=max_bytes)
        if isinstance(result, Rejection):
            rejected.append((record, result))
            continue
        assert key is not None  # parse refuses keyless messages
        name = keys.get(key)
        if name is None:
            name = keys[key] = key.decode("utf-8", "replace")
        add(partition, offset, name, result, now, sealed)
    if records:
        batcher.advance(partition, records[-1].offset() + 1)  # type: ignore[operator]
