"""Repeated failures: told once per window, with how many were held back."""

from __future__ import annotations

from streams.core import repeats
from streams.core.repeats import Repeats


def test_first_told_then_held_back_then_summed_once_per_window() -> None:
    seen = Repeats(60.0)
    told = [seen.tell("refused", t) for t in (0.0, 0.1, 5.0, 59.9, 60.0, 61.0, 130.0)]
    assert told == [0, None, None, None, 3, None, 1]


def test_kinds_are_counted_apart() -> None:
    seen = Repeats(60.0)
    assert seen.tell("refused", 0.0) == 0
    assert seen.tell("timed out", 1.0) == 0
    assert seen.tell("refused", 2.0) is None
    assert seen.tell("timed out", 61.0) == 0
    assert seen.tell("refused", 62.0) == 1


def test_a_kind_quiet_for_a_window_is_told_at_once() -> None:
    seen = Repeats(60.0)
    assert seen.tell("refused", 0.0) == 0
    assert seen.tell("refused", 3600.0) == 0


def test_the_stalest_kind_is_forgotten_first() -> None:
    seen = Repeats(60.0)
    seen.tell("oldest", 0.0)
    seen.tell("oldest", 1.0)  # held back
    for n in range(repeats.MAX_KINDS - 1):
        seen.tell(n, 2.0)
    seen.tell("oldest", 3.0)  # held back, still remembered
    seen.tell("newest", 4.0)  # one kind too many: "oldest" was told longest ago, at 0
    assert seen.tell("oldest", 5.0) == 0  # forgotten: told afresh, and 0 forgotten
    assert seen.tell(1, 6.0) is None
    assert seen.tell(0, 7.0) == 0
