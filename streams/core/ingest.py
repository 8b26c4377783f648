"""One fetch through validation and batching: the batcher's hot path.

Runs once per Kafka message at event volume, so it stays a flat loop: no per-event
task, queue, lock or await.

No message can stop it: one whose handling raises (which validation should have made
impossible, so it is a bug to report) is set aside as ``unprocessable`` with the error,
and the rest of the fetch goes on. The ``try`` costs nothing while nothing raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from streams.core import control
from streams.core.batching import Batcher
from streams.core.models import (
    AnalysisRequest,
    Event,
    PerformanceRow,
    Reason,
    Rejection,
    SealReason,
)
from streams.core.rows import is_error, performance_row
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


@dataclass(slots=True)
class Output:
    """What ingesting fetches leaves to publish before their offsets can be committed."""

    sealed: list[AnalysisRequest] = field(default_factory=list)
    rejected: list[tuple[Record, Rejection]] = field(default_factory=list)
    #: A row for each event with a duration.
    performance: list[PerformanceRow] = field(default_factory=list)
    #: Error events with the id of their batch: one error record each.
    errors: list[tuple[Event, str]] = field(default_factory=list)


def unprocessable(exc: Exception) -> Rejection:
    return Rejection(Reason.UNPROCESSABLE, f"{type(exc).__name__}: {exc}")


def ingest(
    batcher: Batcher,
    partition: int,
    records: Sequence[Record],
    now: float,
    max_bytes: int,
    out: Output,
) -> None:
    """Validate and batch ``records``; what they give goes to ``out``."""
    now_dt = datetime.fromtimestamp(now, UTC)
    add = batcher.add
    sealed, rejected, performance, errors = out.sealed, out.rejected, out.performance, out.errors
    # Keys repeat (a few sources, many events): decode each distinct one once.
    keys: dict[bytes, str] = {}
    for record in records:
        try:
            key = record.key()
            offset: int = record.offset()  # type: ignore[assignment]  # set when consumed
            headers = record.headers()
            if headers and key and control.command(headers) == control.SEAL:
                batcher.drain(SealReason.MANUAL, now, sealed, partition=partition,
                              key=key.decode("utf-8", "replace"))
                continue
            result = parse(key, record.value(), headers, now=now_dt, max_bytes=max_bytes)
            if isinstance(result, Rejection):
                rejected.append((record, result))
                continue
            assert key is not None  # parse refuses keyless messages
            name = keys.get(key)
            if name is None:
                name = keys[key] = key.decode("utf-8", "replace")
            batch_id = add(partition, offset, name, result, now, sealed)
            if batch_id is None:
                continue
            failed = is_error(result)
            http = result.http
            if http is not None and http.duration_ms is not None:
                performance.append(performance_row(result, not failed))
            if failed:
                errors.append((result, batch_id))
        except Exception as exc:  # noqa: BLE001 - whatever it is, it must not stop the fetch
            rejected.append((record, unprocessable(exc)))
    if records:
        batcher.advance(partition, records[-1].offset() + 1)  # type: ignore[operator]
