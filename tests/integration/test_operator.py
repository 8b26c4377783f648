"""What an operator sees when the broker is not there, or a name is wrong: one line that
names the address and the cause, and nothing that says it worked when it did not."""

from __future__ import annotations

import socket
import time

import pytest

from streams.adapters.kafka import Cluster
from tests.integration.harness import Broker, free_port, run_cli

#: Commands that talk to the broker, as an operator types them.
COMMANDS = [
    ("topics", "apply"),
    ("seal", "--source", "checkout"),
    ("produce", "--count", "1"),
    ("dlq", "list"),
    ("replay", "reset", "--group", "batcher", "--to-earliest"),
]


def env_for(bootstrap: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "APP_ID": "it", "LOG_FORMAT": "json",
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:9/unused"}


@pytest.mark.parametrize(("where", "cause"), [
    ("127.0.0.1:{port}", "connection refused"),
    ("no-such-host.invalid:9092", "no such host no-such-host.invalid"),
])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_unreachable_broker_is_one_line_naming_it(
    command: tuple[str, ...], where: str, cause: str,
) -> None:
    bootstrap = where.format(port=free_port())
    started = time.monotonic()
    result = run_cli(env_for(bootstrap), *command)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout
    assert result.stderr == f"streamsight: Kafka at {bootstrap}: not reachable ({cause})\n"
    print(f"{' '.join(command)} against {where}: {took:.1f} s")


def test_produce_refuses_a_topic_that_does_not_exist_and_creates_none(broker: Broker) -> None:
    result = run_cli(env_for(broker.bootstrap), "produce", "--count", "5",
                     "--topic", "nosuchtopic")
    assert result.returncode == 1, result.stdout
    assert result.stderr == (f"streamsight: topic nosuchtopic does not exist on "
                             f"{broker.bootstrap}: create it with `streamsight topics apply`\n")
    with Cluster(broker.bootstrap) as cluster:
        assert "nosuchtopic" not in cluster.topics()


def test_seal_says_it_was_sent_not_that_it_sealed(broker: Broker) -> None:
    applied = run_cli(env_for(broker.bootstrap), "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    result = run_cli(env_for(broker.bootstrap), "seal", "--source", "no-such-source")
    assert result.returncode == 0, result.stderr
    assert "seal requested for 'no-such-source'" in result.stdout
    assert "open batch, if it has one" in result.stdout


@pytest.mark.parametrize(("command", "setting"), [
    (("worker",), "WEB_PORT"),
    (("lag-exporter",), "LAG_EXPORTER_PORT"),
])
def test_a_port_in_use_stops_start_up_in_one_line_before_anything_joins(
    broker: Broker, command: tuple[str, ...], setting: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_cli({**env_for(broker.bootstrap), setting: str(port)}, *command)
        took = time.monotonic() - started
    assert result.returncode == 1, result.stdout
    assert result.stderr == (f"streamsight: invalid setting {setting}: port {port} is in use "
                             "on this host (Address already in use)\n")
    # Found before the worker touched the database (this DATABASE_URL goes nowhere) or
    # joined a group.
    print(f"{' '.join(command)} with {setting} taken: {took:.1f} s")


@pytest.mark.parametrize("protocol", ["auto", "range"])
def test_a_worker_without_its_broker_stops_in_one_line(
    migrated_database: str, protocol: str,
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result = run_cli({**env_for(bootstrap), "DATABASE_URL": migrated_database,
                      "CONSUMER_GROUP_PROTOCOL": protocol, "WEB_ENABLED": "false"}, "worker")
    assert result.returncode == 1, result.stdout
    assert result.stderr == (f"streamsight: Kafka at {bootstrap}: not reachable "
                             "(connection refused)\n")


def test_a_lag_exporter_without_its_broker_stops_in_one_line() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result = run_cli({**env_for(bootstrap), "LAG_EXPORTER_PORT": str(free_port())},
                     "lag-exporter")
    assert result.returncode == 1, result.stdout
    assert result.stderr == (f"streamsight: Kafka at {bootstrap}: not reachable "
                             "(connection refused)\n")


def test_status_names_an_unreachable_broker_once(migrated_database: str) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result = run_cli({**env_for(bootstrap), "DATABASE_URL": migrated_database}, "status",
                     "--worker", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr == (f"streamsight: Kafka at {bootstrap}: not reachable "
                             "(connection refused)\n")
