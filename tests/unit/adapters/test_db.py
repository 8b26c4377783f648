"""What the migration runner says of a server before it changes anything."""

from __future__ import annotations

import pytest

from streams.adapters.db import timescaledb_problem


@pytest.mark.parametrize("preload", [
    "timescaledb",
    "pg_stat_statements, timescaledb",
    '"timescaledb"',
    "$libdir/timescaledb-2.28.1",
])
def test_a_preloaded_timescaledb_is_fine(preload: str) -> None:
    assert timescaledb_problem(True, preload) is None


def test_plain_postgresql_is_fine() -> None:
    assert timescaledb_problem(False, "") is None


@pytest.mark.parametrize("preload", ["", "pg_stat_statements", "timescale"])
def test_timescaledb_installed_but_not_preloaded_says_how_to_fix_it(preload: str) -> None:
    problem = timescaledb_problem(True, preload)
    assert problem is not None
    assert problem.startswith("TimescaleDB is installed but not preloaded: add timescaledb "
                              "to shared_preload_libraries")
