"""Apache Kafka itself, for tests, ``make demo ARGS="--broker kafka"`` and ``make bench``.

The broker's jars come from Maven Central (``streams/local/kafka.pom.xml``), copied by Maven
into a cache outside the work tree (``$XDG_CACHE_HOME/streamsight/kafka-<version>``,
fetched once, then reused). Each node runs in KRaft combined mode (broker and controller
in one JVM) on the machine's Java 17, on free ports of 127.0.0.1, with its log in a
temporary directory: one node, or three for failover. Nothing here is a mock.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from streams.errors import PermanentError, RetryableError
from streams.local.processes import terminate

KAFKA_VERSION = "4.4.0"
POM = Path(__file__).with_name("kafka.pom.xml")
START_TIMEOUT = 90.0
# Small heaps: a test cluster holds little, and three nodes share two cores.
_JVM = ["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true"]
_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{ISO8601}} %-5p [%c{{1}}] %m%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.org.name = org.apache
logger.org.level = warn
"""


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamsight" / f"kafka-{KAFKA_VERSION}"


def kafka_libs() -> Path:
    """The directory of the broker's jars, fetched with Maven the first time."""
    cache = _cache()
    libs, done = cache / "libs", cache / ".complete"
    if done.exists():
        return libs
    cache.mkdir(parents=True, exist_ok=True)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PermanentError("Apache Kafka for the tests is fetched with Maven: install it "
                             "(apt-get install maven) and Java 17")
    with (cache / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():  # another process fetched it meanwhile
            return libs
        staging = cache / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        proc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            said = (proc.stdout + proc.stderr).strip().splitlines()
            raise RetryableError(f"fetching Apache Kafka {KAFKA_VERSION} with Maven failed: "
                                 f"{' | '.join(said[-3:])}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        done.touch()
    return libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise PermanentError("Apache Kafka needs Java 17 or newer on the PATH")
    return java


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_id() -> str:
    """Kafka's Uuid: 16 random bytes, URL-safe base64 without padding; like Kafka's own
    ``Uuid.randomUuid`` it never starts with ``-``, which a command line reads as an
    option."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaNode:
    """One combined broker and controller: its ports, its log directory, its process."""

    def __init__(self, node_id: int, root: Path) -> None:
        self.node_id = node_id
        self.dir = root / f"node-{node_id}"
        self.port = _free_port()
        self.controller_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def listener(self) -> str:
        return f"127.0.0.1:{self.port}"

    def configure(self, voters: str, replication: int, extra: dict[str, str]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.listener},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.listener}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.dir / "log"),
            # Tests join groups all the time: no waiting for more members to come.
            "group.initial.rebalance.delay.ms": "0",
            # The consumer protocol's (KIP-848) session and heartbeat are the broker's: the
            # same 6 s / 1 s the tests give the classic protocol (Kafka's defaults: 45 s / 5 s).
            "group.consumer.min.session.timeout.ms": "6000",
            "group.consumer.session.timeout.ms": "6000",
            "group.consumer.min.heartbeat.interval.ms": "1000",
            "group.consumer.heartbeat.interval.ms": "1000",
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min(replication, 2)),
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min(replication, 2)),
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min(replication, 2)),
            "num.partitions": "1",
            # Production brokers create no topic on first use; neither do ours.
            "auto.create.topics.enable": "false",
            **extra,
        }
        config = self.dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.dir / "log4j2.properties").write_text(
            _LOG4J.format(log=self.dir / "server.log"))
        return config

    def command(self, libs: Path, *args: str) -> list[str]:
        return [_java(), *_JVM, f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                "-cp", f"{libs}/*", *args]

    def start(self, libs: Path) -> None:
        with (self.dir / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen(
                self.command(libs, "kafka.Kafka", str(self.dir / "server.properties")),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL when it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
        terminate(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def tail(self, lines: int = 5) -> str:
        text = ""
        for name in ("stdout.log", "server.log"):
            with contextlib.suppress(OSError):
                text += (self.dir / name).read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])


class KafkaCluster:
    """One or three Apache Kafka nodes in KRaft mode; stop it with ``stop()`` or ``with``."""

    def __init__(self, size: int = 1, *, root: Path | None = None,
                 extra: dict[str, str] | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="streamsight-kafka-"))
        self.nodes = [KafkaNode(i + 1, self.root) for i in range(size)]
        self.extra = extra or {}
        self.libs = kafka_libs()

    @property
    def bootstrap(self) -> str:
        return ",".join(node.listener for node in self.nodes)

    def start(self, timeout: float = START_TIMEOUT) -> KafkaCluster:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        cluster_id = _cluster_id()
        for node in self.nodes:
            config = node.configure(voters, len(self.nodes), self.extra)
            proc = subprocess.run(
                node.command(self.libs, "kafka.tools.StorageTool", "format",
                             "--cluster-id", cluster_id, "--config", str(config),
                             "--ignore-formatted"),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                check=False)
            if proc.returncode != 0:
                raise RetryableError(f"formatting Kafka node {node.node_id} failed: "
                                     f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        for node in self.nodes:
            node.start(self.libs)
        self.wait_until_serving(timeout)
        return self

    def wait_until_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Until every running node is a live broker in the cluster's metadata."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        wanted = {n.node_id for n in self.nodes if n.running()}
        deadline = time.monotonic() + timeout
        while True:
            dead = [n for n in self.nodes if n.process is not None and not n.running()]
            if dead:
                self.stop()
                raise RetryableError(f"Kafka node {dead[0].node_id} exited: {dead[0].tail()}")
            with contextlib.suppress(KafkaException):
                if set(admin.list_topics(timeout=2).brokers) >= wanted:
                    return
            if time.monotonic() > deadline:
                tails = "; ".join(f"node {n.node_id}: {n.tail(3)}" for n in self.nodes)
                self.stop()
                raise RetryableError(f"Apache Kafka did not start in {timeout:.0f}s: {tails}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
