"""The pure parts of `streamsight replay`: durations, times, groups, targets, clamping."""

from __future__ import annotations

import pytest

from streams import config
from streams.commands import replay
from streams.errors import ConfigError


def test_datetimes_keep_milliseconds_through_format_ms() -> None:
    utc = 1767225600000  # 2026-01-01T00:00:00Z
    assert replay.choose_target(to_datetime=replay.format_ms(utc + 7), by_duration=None,
                                to_offset=None, to_earliest=False) == replay.Target("time", utc + 7)


def test_agent_names_stand_for_their_group_and_topic() -> None:
    assert replay.resolve_group("batcher", "it", None) == ("it-batcher", "events")
    assert replay.resolve_group("it-sink-errors", "it", None) == ("it-sink-errors", "errors")
    assert replay.resolve_group("analyst", "it", "other") == ("it-analyst", "other")
    assert replay.resolve_group("mine", "it", "t") == ("mine", "t")
    with pytest.raises(ConfigError, match="--topic is needed"):
        replay.resolve_group("mine", "it", None)
    prefixed = config.Topics.prefixed("t1.")
    assert replay.resolve_group("analyst", "it", None, prefixed) == ("it-analyst",
                                                                     "t1.analysis-requests")


def test_exactly_one_target() -> None:
    none: dict[str, object] = {"to_datetime": None, "by_duration": None, "to_offset": None,
                               "to_earliest": False}
    assert replay.choose_target(**{**none, "to_earliest": True}) == replay.Target("earliest")
    assert replay.choose_target(**{**none, "to_offset": 5}) == replay.Target("offset", 5)
    assert replay.choose_target(**{**none, "to_datetime": "2026-01-01"}) == replay.Target(
        "time", 1767225600000)
    assert replay.choose_target(**{**none, "by_duration": "2h"}, now=10_000) == replay.Target(
        "time", (10_000 - 7200) * 1000)
    with pytest.raises(ConfigError, match="exactly one"):
        replay.choose_target(**none)
    with pytest.raises(ConfigError, match="exactly one"):
        replay.choose_target(**{**none, "to_earliest": True, "to_offset": 3})
    with pytest.raises(ConfigError, match="0 or above"):
        replay.choose_target(**{**none, "to_offset": -1})


def test_targets_stay_within_the_partition() -> None:
    back = replay.plan_partition(0, 50, 10, 0, 80)
    assert (back.target, back.reprocess, back.clamped) == (10, 40, False)
    ahead = replay.plan_partition(1, 50, 500, 0, 80)
    assert (ahead.target, ahead.reprocess, ahead.clamped) == (80, -30, True)
    gone = replay.plan_partition(2, None, 3, 20, 80)
    assert (gone.target, gone.reprocess, gone.clamped) == (20, None, True)


def test_partitions_option() -> None:
    assert replay.parse_partitions(None) is None
    assert replay.parse_partitions("1, 0,1") == [0, 1]
    for bad in ("a", "-1", ","):
        with pytest.raises(ConfigError, match="--partitions"):
            replay.parse_partitions(bad)
