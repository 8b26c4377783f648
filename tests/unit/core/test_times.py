"""One grammar of times and durations for every command: ISO 8601 or an age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.core.times import duration, moment, moment_ms
from streams.errors import ConfigError

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [
    ("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("3d", 259200),
    ("1w", 604800), ("500ms", 0.5), ("PT2H", 7200), ("P1DT2H", 93600), (" 2H ", 7200),
])
def test_durations(text: str, seconds: float) -> None:
    assert duration(text, "--by-duration") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "2h junk", "0s", "-2h"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid --by-duration "):
        duration(text, "--by-duration")


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-25T10:00:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC)),
    ("2026-11-25T10:00:00", datetime(2026, 11, 25, 10, tzinfo=UTC)),
    ("2026-11-25 10:00", datetime(2026, 11, 25, 10, tzinfo=UTC)),
    ("2026-11-25T11:00:00+01:00", datetime(2026, 11, 25, 10, tzinfo=UTC)),
    ("2026-11-25", datetime(2026, 11, 25, tzinfo=UTC)),
    ("90s", datetime(2026, 11, 25, 11, 58, 30, tzinfo=UTC)),
    ("30m", datetime(2026, 11, 25, 11, 30, tzinfo=UTC)),
    ("2h", datetime(2026, 11, 25, 10, tzinfo=UTC)),
    ("1h30m", datetime(2026, 11, 25, 10, 30, tzinfo=UTC)),
    ("1.5d", datetime(2026, 11, 24, tzinfo=UTC)),
    ("1w", datetime(2026, 11, 18, 12, tzinfo=UTC)),
    ("PT2H", datetime(2026, 11, 25, 10, tzinfo=UTC)),
])
def test_times_are_iso_or_an_age(text: str, expected: datetime) -> None:
    assert moment(text, "--since", NOW) == expected
    assert moment_ms(text, "--since", NOW) == int(expected.timestamp() * 1000)


def test_an_offset_is_kept() -> None:
    assert moment("2026-03-01T10:00:00+02:00", "--until", NOW).utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("text", ["yesterday", "5y", "-3h", "", "2026-13-01"])
def test_an_unreadable_time_is_one_wording_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        moment(text, "--since", NOW)
    assert str(caught.value) == (f"invalid --since {text!r}: use ISO 8601 "
                                 "(2026-11-25T10:00:00Z) or an age (45s, 30m, 2h, 7d, 1w)")
