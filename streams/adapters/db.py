"""PostgreSQL through asyncpg: the pool and the migration runner.

Foreign errors leave this module as ``streams.errors`` exceptions whose messages never
carry a password (DSNs are redacted).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from streams.adapters import policies
from streams.adapters.logs import redact_dsn
from streams.errors import ConfigError, DataRejected, PermanentError, RetryableError

# The repository's sql/ beside the package; right for the editable install and the repo.
SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

# One fixed advisory-lock key for "schema migrations of this database": any bigint works
# as long as every streamsight process uses the same one.
MIGRATION_LOCK_KEY = 0x5354_5245_414D_5347  # "STREAMSG"

_MIGRATION_FILE = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


_SERVER = """
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS available,
       current_setting('shared_preload_libraries') AS preload
"""


def timescaledb_problem(available: bool, preload: str) -> str | None:
    """Why the migrations cannot set up TimescaleDB on a server, or None.

    Its extension files installed without the library in shared_preload_libraries: the
    server then ends the connection at CREATE EXTENSION, which would read as "cannot
    reach PostgreSQL"."""
    libraries = {Path(part.strip().strip('"')).name for part in preload.split(",")}
    if available and not any(name.startswith("timescaledb") for name in libraries):
        return ("TimescaleDB is installed but not preloaded: add timescaledb to "
                "shared_preload_libraries in the server's postgresql.conf and restart it")
    return None


def _connection_error(dsn: str, exc: BaseException) -> Exception:
    where = redact_dsn(dsn)
    detail = redact_dsn(str(exc)) or type(exc).__name__
    # Wrong credentials or a missing database do not fix themselves: say so plainly.
    if isinstance(
        exc,
        asyncpg.InvalidPasswordError
        | asyncpg.InvalidAuthorizationSpecificationError
        | asyncpg.InvalidCatalogNameError,
    ):
        return PermanentError(f"cannot use PostgreSQL at {where}: {detail}")
    return RetryableError(f"cannot reach PostgreSQL at {where}: {detail}")


_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

#: Failures that lie in the values written, not in the database: what the server refuses
#: as data (classes 22 and 23; unique violations are the writers' own business) and what
#: asyncpg cannot encode for its column (an integer out of range, a lone surrogate).
DATA_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    OverflowError,
    UnicodeEncodeError,
)


#: What a query can raise; ``query_error`` sorts it into retryable and permanent.
QUERY_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OverflowError,
    UnicodeEncodeError,
)
# The server went away or is restarting: the same statement can work a moment later.
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    # A connection cut in the middle of a statement is left in a state it reports so.
    asyncpg.exceptions.InternalClientError,
)


def _is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, DATA_ERRORS) and not isinstance(exc, asyncpg.UniqueViolationError)


def query_error(doing: str, exc: BaseException) -> Exception:
    """Map a failed query onto streams.errors (no DSN or parameters in the message)."""
    if _is_data_error(exc):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DataRejected(f"{doing}: {detail}", detail)
    if isinstance(exc, _TRANSIENT):
        return RetryableError(f"{doing}: database unavailable ({exc.__class__.__name__})")
    return PermanentError(f"{doing}: {exc.__class__.__name__}: {exc}")


async def connect(
    dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
) -> asyncpg.Pool:
    """Open a pool; RetryableError when the server is unreachable, PermanentError on auth."""
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, timeout=connect_timeout
        )
    except _CONNECT_ERRORS as exc:
        raise _connection_error(dsn, exc) from None
    assert pool is not None
    return pool


@asynccontextmanager
async def _connection(dsn: str, connect_timeout: float = 10.0) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except _CONNECT_ERRORS as exc:
        raise _connection_error(dsn, exc) from None
    try:
        yield conn
    finally:
        await conn.close()


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


def discover(sql_dir: Path) -> list[Migration]:
    """The numbered migrations in ``sql_dir``, in order; a stray or duplicate file is an error."""
    if not sql_dir.is_dir():
        raise ConfigError(f"{sql_dir}: migrations directory not found")
    found: dict[str, Migration] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise ConfigError(f"{path}: migration files are named NNN_name.sql")
        version = match["version"]
        if version in found:
            raise ConfigError(f"{path}: version {version} also used by {found[version].path.name}")
        data = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=match["name"],
            path=path,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str, sql_dir: Path | None = None) -> list[str]:
    """Apply pending migrations; return the labels (``001_batches``) applied by this call.

    Every file runs in its own transaction together with its ledger row. The whole run
    holds a session advisory lock, so concurrent callers queue and the later ones find
    nothing left to do. An applied file whose content changed stops the run before any
    new file is applied.

    A statement that refuses to run in a transaction (``CREATE INDEX CONCURRENTLY``, a
    continuous aggregate created WITH DATA) does not belong in a migration: create
    continuous aggregates WITH NO DATA and let their refresh policy fill them.
    """
    migrations = discover(sql_dir or SQL_DIR)
    applied: list[str] = []
    async with _connection(dsn) as conn:
        try:
            server = await conn.fetchrow(_SERVER)
            problem = timescaledb_problem(server["available"], server["preload"])
            if problem:
                raise PermanentError(f"cannot use PostgreSQL at {redact_dsn(dsn)}: {problem}")
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            try:
                await conn.execute(_CREATE_LEDGER)
                rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
                done = {row["version"]: row for row in rows}
                for migration in migrations:
                    row = done.get(migration.version)
                    if row is not None and row["checksum"] != migration.checksum:
                        raise PermanentError(
                            f"{migration.path.name} changed after it was applied "
                            "(checksum differs); add a new migration instead of editing it"
                        )
                for migration in migrations:
                    if migration.version in done:
                        continue
                    await _apply(conn, migration)
                    applied.append(migration.label)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
            raise _connection_error(dsn, exc) from None
    return applied


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    try:
        async with conn.transaction():
            # No arguments: asyncpg sends the file as one simple query, so a file may hold
            # many statements and DO blocks.
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
    except asyncpg.PostgresConnectionError:
        raise
    except asyncpg.PostgresError as exc:
        raise PermanentError(f"{migration.path.name} failed: {exc}") from None


async def migrate_and_apply_policies(
    dsn: str, retention_days: Mapping[str, int], compress_after_days: int
) -> list[str]:
    """``migrate``, then the TimescaleDB policies from settings; what changed, as lines."""
    # Checked before anything is changed, so a bad setting fails on plain PostgreSQL too.
    policies.check(retention_days, compress_after_days)
    lines = [f"applied {label}" for label in await migrate(dsn)]
    async with _connection(dsn) as conn:
        try:
            lines += await policies.apply_policies(conn, retention_days, compress_after_days)
        except QUERY_ERRORS as exc:
            raise query_error("applying TimescaleDB policies", exc) from exc
    return lines
