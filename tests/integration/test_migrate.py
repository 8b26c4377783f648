"""The migration runner against a real PostgreSQL: order, idempotence, concurrency, drift."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from streams.adapters.db import SQL_DIR, connect, discover, migrate
from streams.errors import ConfigError, PermanentError, RetryableError

pytestmark = pytest.mark.integration

STREAMSIGHT = Path(sys.executable).parent / "streamsight"
ALL = [m.label for m in discover(SQL_DIR)]


async def ledger(dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [(r["version"], r["name"]) for r in rows]


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


def test_repository_has_numbered_migrations() -> None:
    assert ALL[:2] == ["000_extensions", "001_batches"]
    assert sorted(ALL) == ALL


async def test_applies_all_in_order_then_nothing(database: str) -> None:
    assert await migrate(database) == ALL
    assert await ledger(database) == [tuple(label.split("_", 1)) for label in ALL]
    assert {"schema_migrations", "batches"} <= await tables(database)

    assert await migrate(database) == []
    assert len(await ledger(database)) == len(ALL)


async def test_concurrent_runs_apply_each_version_once(database: str) -> None:
    results = await asyncio.gather(*(migrate(database) for _ in range(3)))

    assert sorted(results, key=len) == [[], [], ALL]
    versions = [version for version, _ in await ledger(database)]
    assert len(versions) == len(set(versions)) == len(ALL)


async def test_new_file_is_applied_after_the_old_ones(database: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    assert await migrate(database, sql_dir) == ALL

    (sql_dir / "900_extra.sql").write_text(
        "CREATE TABLE extra (id int PRIMARY KEY);\nINSERT INTO extra VALUES (1);\n"
    )
    assert await migrate(database, sql_dir) == ["900_extra"]
    assert "extra" in await tables(database)


async def test_failing_file_rolls_back_alone(database: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "001_good.sql").write_text("CREATE TABLE good (id int);")
    (sql_dir / "002_bad.sql").write_text("CREATE TABLE half (id int);\nSELECT no_such_column;")

    with pytest.raises(PermanentError, match=r"^002_bad\.sql failed: "):
        await migrate(database, sql_dir)

    assert await ledger(database) == [("001", "good")]
    assert await tables(database) == {"schema_migrations", "good"}


async def test_edited_applied_file_is_an_error_naming_it(database: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    await migrate(database, sql_dir)
    target = sql_dir / "001_batches.sql"
    target.write_text(target.read_text() + "\n-- edited\n")
    (sql_dir / "900_extra.sql").write_text("CREATE TABLE extra (id int);")

    with pytest.raises(PermanentError, match=r"^001_batches\.sql changed after it was applied"):
        await migrate(database, sql_dir)
    assert "extra" not in await tables(database)


async def test_badly_named_file_is_a_config_error(database: str, tmp_path: Path) -> None:
    (tmp_path / "1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match=r"1_oops\.sql: migration files are named NNN_name\.sql"):
        await migrate(database, tmp_path)


async def test_unreachable_server_is_retryable_without_password() -> None:
    dsn = "postgresql://someone:hunter2@127.0.0.1:1/nothing"
    with pytest.raises(RetryableError) as info:
        await migrate(dsn)
    assert "hunter2" not in str(info.value)
    assert "someone:***@127.0.0.1:1" in str(info.value)
    with pytest.raises(RetryableError) as info:
        await connect(dsn)
    assert "hunter2" not in str(info.value)


async def test_migrated_database_fixture(migrated_database: str) -> None:
    assert len(await ledger(migrated_database)) == len(ALL)


def test_cli_db_migrate(database: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STREAMSIGHT), "db", "migrate"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    assert [line.split()[-1] for line in first.stdout.splitlines()] == ALL
    second = run()
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "database schema up to date"
