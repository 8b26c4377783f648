"""A seal command on the events topic seals its key's open batch, in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from streams.core import control
from streams.core.batching import Batcher
from streams.core.ingest import Output, ingest
from streams.core.models import SealReason
from tests.support.records import Record

BASE = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
NOW = BASE.timestamp() + 60


def event(offset: int, key: bytes = b"checkout") -> Record:
    body = {"event_id": f"e{offset}", "event_type": "page_view", "source": key.decode(),
            "timestamp": (BASE + timedelta(seconds=offset)).isoformat()}
    return Record(offset, key, msgspec.json.encode(body))


def seal(offset: int, key: bytes = b"checkout") -> Record:
    return Record(offset, key, b"", [(control.HEADER, control.SEAL)])


def test_seal_command_closes_the_open_batch_of_its_key_only() -> None:
    batcher = Batcher("events", 100, 600)
    batcher.assign(0, 0, [])
    out = Output()
    ingest(batcher, 0, [event(0), event(1, b"cart"), event(2), seal(3), event(4)], NOW,
           65536, out)

    [sealed] = out.sealed
    assert sealed.key == "checkout" and sealed.seal_reason is SealReason.MANUAL
    assert sealed.event_ids == ["e0", "e2"] and sealed.last_offset == 2
    assert out.rejected == []  # a command is not a bad event
    assert batcher.open_batches() == 2  # cart's, and checkout's new one from offset 4
    assert batcher.commit_offset(0) == 1  # cart's batch is still open


def test_seal_command_without_an_open_batch_does_nothing() -> None:
    batcher = Batcher("events", 100, 600)
    batcher.assign(0, 0, [])
    out = Output()
    ingest(batcher, 0, [seal(0, b"idle")], NOW, 65536, out)
    assert (out.sealed, out.rejected) == ([], [])
    assert batcher.commit_offset(0) == 1


def test_other_headers_are_not_commands() -> None:
    assert control.command([("traceparent", b"00-abc")]) is None
    assert control.command([("traceparent", b"x"), (control.HEADER, b"seal")]) == control.SEAL
