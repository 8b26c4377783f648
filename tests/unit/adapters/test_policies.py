"""Policy settings: validation, and the defaults in step with the migration that sets them."""

from __future__ import annotations

import re

import pytest

from streams.adapters.db import SQL_DIR
from streams.adapters.policies import (
    AGGREGATES,
    DEFAULT_COMPRESS_AFTER_DAYS,
    DEFAULT_RETENTION_DAYS,
    HYPERTABLES,
    check,
)
from streams.errors import ConfigError

MIGRATION = (SQL_DIR / "005_sink_aggregates.sql").read_text()


def test_defaults_match_the_migration() -> None:
    retention = dict(
        (name, int(days))
        for name, days in re.findall(
            r"add_retention_policy\('(\w+)', INTERVAL '(\d+) days'", MIGRATION
        )
    )
    assert retention == DEFAULT_RETENTION_DAYS
    compression = dict(
        (name, int(days))
        for name, days in re.findall(
            r"add_compression_policy\('(\w+)', INTERVAL '(\d+) days'", MIGRATION
        )
    )
    assert compression == dict.fromkeys(HYPERTABLES, DEFAULT_COMPRESS_AFTER_DAYS)
    for name in AGGREGATES:
        assert f"add_continuous_aggregate_policy('{name}'" in MIGRATION
        assert f"CREATE OR REPLACE VIEW {name} AS" in MIGRATION


def test_defaults_and_zero_are_valid() -> None:
    check(DEFAULT_RETENTION_DAYS, DEFAULT_COMPRESS_AFTER_DAYS)
    check(dict.fromkeys(DEFAULT_RETENTION_DAYS, 0), 0)
    check({}, 1)


@pytest.mark.parametrize(
    ("retention", "compress", "message"),
    [
        ({"api_perf": 3}, 7, r"^retention for 'api_perf': unknown table or aggregate \(one of "),
        ({"insights": -1}, 7, r"^retention for 'insights': -1 is not a whole number of days"),
        ({"insights": 1.5}, 7, r"^retention for 'insights': 1.5 is not a whole number"),
        ({"insights": True}, 7, r"^retention for 'insights': True is not"),
        ({"api_performance": 1}, 7, r"^retention for 'api_performance': 1 days is shorter"),
        ({}, -3, r"^compress after: -3 is not a whole number of days from 0 to 1,000,000$"),
        # now() - 100,000,000 days is before 4713 BC: every run of the job would fail.
        ({"api_performance": 100_000_000}, 7,
         r"^retention for 'api_performance': 100000000 is not a whole number of days from 0 "),
        ({}, 1_000_001, r"^compress after: 1000001 is not"),
    ],
)
def test_bad_values_name_what_is_wrong(
    retention: dict[str, int], compress: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check(retention, compress)
