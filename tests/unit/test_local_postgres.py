"""The scratch server preloads TimescaleDB exactly while it is installed beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.local.postgres import has_timescaledb, preload_timescaledb


@pytest.mark.parametrize("libs", ["lib", "lib/postgresql"])
def test_timescaledb_is_found_beside_the_server(tmp_path: Path, libs: str) -> None:
    (tmp_path / "bin").mkdir()
    assert not has_timescaledb(tmp_path / "bin")
    (tmp_path / libs).mkdir(parents=True)
    (tmp_path / libs / "timescaledb.so").touch()
    assert has_timescaledb(tmp_path / "bin")


def test_the_settings_follow_the_library(tmp_path: Path) -> None:
    data, bin_dir = tmp_path / "data", tmp_path / "bin"
    data.mkdir()
    conf = data / "postgresql.conf"
    conf.write_text("port = 5432\n")

    preload_timescaledb(data, bin_dir)
    assert conf.read_text() == "port = 5432\ninclude_if_exists = 'timescaledb.conf'\n"
    assert not (data / "timescaledb.conf").exists()

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "timescaledb.so").touch()
    preload_timescaledb(data, bin_dir)
    preload_timescaledb(data, bin_dir)
    assert conf.read_text().count("include_if_exists") == 1
    assert "shared_preload_libraries = 'timescaledb'\n" in (
        data / "timescaledb.conf").read_text()

    # Uninstalled: a server told to preload it would not start.
    (tmp_path / "lib" / "timescaledb.so").unlink()
    preload_timescaledb(data, bin_dir)
    assert not (data / "timescaledb.conf").exists()
