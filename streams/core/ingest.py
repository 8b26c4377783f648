"""One fetch through validation and batching: the batcher's hot path.

Runs once per Kafka message at event volume, so it stays a flat loop: no per-event
task, queue, lock or await.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from streams.core.batching import Batcher
from streams.core.models import AnalysisRequest, Rejection
from streams.core.schema import parse


class Record(Protocol):
    """The fields of a consumed Kafka message that ingestion reads."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...

    @property
    def timestamp(self) -> int: ...


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
    for record in records:
        key = record.key
        result = parse(key, record.value, record.headers, now=now_dt, max_bytes=max_bytes)
        if isinstance(result, Rejection):
            batcher.skip(partition, record.offset)
            rejected.append((record, result))
        else:
            assert key is not None  # parse refuses keyless messages
            add(partition, record.offset, key.decode("utf-8", "replace"), result, now, sealed)
