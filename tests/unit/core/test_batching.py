"""Per-key batching with a clock the tests move: no sleeps, no services."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from streams.core.batching import Batcher, SealDecision
from streams.core.models import AnalysisRequest, Event, Http, SealReason, batch_id_for

T0 = 1_800_000_000.0
BASE = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def event(n: int, *, event_id: str | None = None, status: int = 200) -> Event:
    return Event(
        event_id=event_id or f"e{n}",
        event_type="http_request",
        source="svc",
        timestamp=BASE + timedelta(milliseconds=n),
        http=Http(method="GET", route="/x", status_code=status, duration_ms=float(n % 50)),
    )


def feed(batcher: Batcher, partition: int, items: list[tuple[int, str]], now: float,
         ) -> list[AnalysisRequest]:
    """Add (offset, key) pairs as one fetch, the way ingest does."""
    sealed: list[AnalysisRequest] = []
    for offset, key in items:
        batcher.add(partition, offset, key, event(offset), now, sealed)
    if items:
        batcher.advance(partition, items[-1][0] + 1)
    return sealed


def new_batcher(max_events: int = 3, max_age: float = 60.0, start: int = 0) -> Batcher:
    batcher = Batcher("events", max_events, max_age)
    batcher.assign(0, start, [])
    return batcher


def test_seals_at_count_with_deterministic_id() -> None:
    batcher = new_batcher(max_events=3)
    sealed = feed(batcher, 0, [(0, "a"), (1, "b"), (2, "a"), (3, "a")], T0)
    assert len(sealed) == 1
    batch = sealed[0]
    assert batch.seal_reason is SealReason.COUNT
    assert batch.event_ids == ["e0", "e2", "e3"]
    assert (batch.first_offset, batch.last_offset, batch.event_count) == (0, 3, 3)
    assert batch.batch_id == batch_id_for("events", 0, 0, "a")
    assert batch.first_event_at == BASE
    assert batch.last_event_at == BASE + timedelta(milliseconds=3)


def test_key_batches_are_separate() -> None:
    batcher = new_batcher(max_events=2)
    sealed = feed(batcher, 0, [(0, "a"), (1, "b"), (2, "b"), (3, "a")], T0)
    assert [(b.key, b.event_ids) for b in sealed] == [("b", ["e1", "e2"]), ("a", ["e0", "e3"])]


def test_ages_out_idle_key_only_after_deadline() -> None:
    batcher = new_batcher(max_events=100, max_age=600.0)
    feed(batcher, 0, [(0, "idle")], T0)
    feed(batcher, 0, [(1, "busy")], T0 + 300)
    sealed: list[AnalysisRequest] = []
    batcher.due(T0 + 599.999, sealed)
    assert sealed == []
    batcher.due(T0 + 600.0, sealed)
    assert [(b.key, b.seal_reason) for b in sealed] == [("idle", SealReason.AGE)]
    assert sealed[0].opened_at == datetime.fromtimestamp(T0, UTC)
    assert sealed[0].sealed_at == datetime.fromtimestamp(T0 + 600, UTC)
    batcher.due(T0 + 900.0, sealed)
    assert [b.key for b in sealed] == ["idle", "busy"]
    assert batcher.open_batches() == 0


def test_duplicate_event_id_in_open_batch_is_dropped_and_counted() -> None:
    batcher = new_batcher(max_events=3)
    sealed: list[AnalysisRequest] = []
    batcher.add(0, 0, "a", event(0, event_id="same"), T0, sealed)
    batcher.add(0, 1, "a", event(1, event_id="same"), T0, sealed)
    batcher.add(0, 2, "a", event(2), T0, sealed)
    batcher.add(0, 3, "a", event(3), T0, sealed)
    assert batcher.duplicates == 1
    assert [b.event_ids for b in sealed] == [["same", "e2", "e3"]]


def test_commit_offset_stays_at_oldest_open_batch() -> None:
    batcher = new_batcher(max_events=2)
    feed(batcher, 0, [(0, "a"), (1, "b"), (2, "b"), (3, "c")], T0)
    assert batcher.commit_offset(0) == 0  # "a" still open from 0
    feed(batcher, 0, [(4, "a")], T0)
    assert batcher.commit_offset(0) == 3  # "c" opened at 3
    sealed: list[AnalysisRequest] = []
    batcher.drain(SealReason.SHUTDOWN, T0, sealed)
    assert batcher.commit_offset(0) == 5
    assert [b.seal_reason for b in sealed] == [SealReason.SHUTDOWN]


def test_commit_offset_moves_past_dead_lettered_messages() -> None:
    batcher = new_batcher()
    batcher.advance(0, 10)
    assert batcher.commit_offset(0) == 10


def test_manual_drain_seals_one_key() -> None:
    batcher = new_batcher(max_events=10)
    feed(batcher, 0, [(0, "a"), (1, "b")], T0)
    sealed: list[AnalysisRequest] = []
    batcher.drain(SealReason.MANUAL, T0 + 1, sealed, key="b")
    assert [(b.key, b.seal_reason) for b in sealed] == [("b", SealReason.MANUAL)]
    assert batcher.open_batches() == 1


def test_revoke_forgets_open_batches() -> None:
    batcher = new_batcher(max_events=10)
    feed(batcher, 0, [(0, "a")], T0)
    batcher.revoke(0)
    assert batcher.partitions == []
    assert batcher.open_batches() == 0


def _decision(batch: AnalysisRequest) -> SealDecision:
    return SealDecision(batch.key, batch.first_offset, batch.last_offset, batch.seal_reason,
                        batch.opened_at, batch.sealed_at)


def _run_with_crash(seed: int) -> None:
    """Batch a random stream, crash at a random fetch, recover from the committed offset
    with the recorded decisions, and finish: every event in exactly one batch, and the
    batches re-formed after the crash are identical to the ones recorded before it."""
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(rng.randint(1, 6))]
    stream = [(offset, rng.choice(keys)) for offset in range(rng.randint(20, 300))]
    fetches: list[list[tuple[int, str]]] = []
    while sum(map(len, fetches)) < len(stream):
        done = sum(map(len, fetches))
        fetches.append(stream[done:done + rng.randint(1, 20)])
    crash_at = rng.randrange(len(fetches))

    first = new_batcher(max_events=rng.randint(2, 9), max_age=rng.choice([5.0, 50.0]))
    now = T0
    recorded: list[AnalysisRequest] = []
    committed = 0
    for index, fetch in enumerate(fetches):
        now += rng.random() * 4
        sealed = feed(first, 0, fetch, now)
        first.due(now, sealed)
        if index == crash_at:
            # Killed before or after the settle wrote this fetch's batches.
            if rng.random() < 0.5:
                recorded.extend(sealed)
            break
        recorded.extend(sealed)  # the batches table: written before publishing
        if rng.random() < 0.7:
            committed = first.commit_offset(0)

    second = Batcher("events", first.max_events, first.max_age_seconds)
    second.assign(0, committed, [_decision(b) for b in recorded if b.last_offset >= committed])
    replayed: list[AnalysisRequest] = []
    for fetch in [[item for item in f if item[0] >= committed] for f in fetches]:
        now += rng.random() * 4
        replayed.extend(feed(second, 0, fetch, now))
        second.due(now, replayed)
    second.drain(SealReason.SHUTDOWN, now, replayed)

    by_id = {b.batch_id: b for b in recorded}
    for batch in replayed:
        if batch.batch_id in by_id:
            assert batch == by_id[batch.batch_id], "a re-formed batch differs from its record"
        by_id[batch.batch_id] = batch
    placed = [eid for b in by_id.values() for eid in b.event_ids]
    assert sorted(placed) == sorted(f"e{offset}" for offset, _ in stream)


def test_recovery_reforms_recorded_batches_exactly() -> None:
    for seed in range(300):
        _run_with_crash(seed)


def test_recovery_skips_batches_sealed_before_the_committed_offset() -> None:
    # "a" open at 0 holds the commit at 0; "b" sealed 1..2 before the crash.
    first = new_batcher(max_events=2)
    sealed = feed(first, 0, [(0, "a"), (1, "b"), (2, "b")], T0)
    assert first.commit_offset(0) == 0
    second = Batcher("events", 2, 60.0)
    second.assign(0, 0, [_decision(b) for b in sealed])
    again = feed(second, 0, [(0, "a"), (1, "b"), (2, "b"), (3, "a")], T0 + 5)
    assert [(b.key, b.event_ids) for b in again] == [("b", ["e1", "e2"]), ("a", ["e0", "e3"])]
    assert again[0] == sealed[0]
