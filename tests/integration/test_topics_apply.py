"""`topics apply` against a real broker (Tansu): create, no-op, dry run, diffs, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streams.adapters.kafka import make_admin
from streams.adapters.topics import ConfigDiff, TopicSpec, apply_plan, plan_topics
from streams.errors import PermanentError
from tests.integration.harness import Broker

pytestmark = pytest.mark.integration

STREAMSIGHT = Path(sys.executable).parent / "streamsight"
CONFIGS = {"retention.ms": "86400000", "cleanup.policy": "delete", "max.message.bytes": "1048576"}


@pytest.fixture
def admin(broker: Broker) -> Iterator[AdminClient]:
    yield make_admin(broker.bootstrap)


def unique(prefix: str) -> str:
    # The broker lives for the whole session; unique names keep tests independent.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def spec(name: str, partitions: int = 3, **configs: str) -> TopicSpec:
    return TopicSpec(name, partitions, 1, {**CONFIGS, **configs})


def partitions_of(admin: AdminClient, name: str) -> int | None:
    topic = admin.list_topics(timeout=10).topics.get(name)
    return None if topic is None else len(topic.partitions)


def configs_of(admin: AdminClient, name: str) -> dict[str, str]:
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)])
    (future,) = futures.values()
    return {key: entry.value for key, entry in future.result().items()}


def create_directly(admin: AdminClient, name: str, partitions: int, **configs: str) -> None:
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=configs)])
    for future in futures.values():
        future.result()


def test_apply_creates_missing_topics_with_their_configs(admin: AdminClient) -> None:
    specs = [spec(unique("events"), 4), spec(unique("dlq"), 2, **{"retention.ms": "2592000000"})]
    plan = plan_topics(admin, specs)
    assert [t.action for t in plan.topics] == ["create", "create"]

    result = apply_plan(admin, plan)

    assert result.created == [s.name for s in specs]
    assert partitions_of(admin, specs[0].name) == 4
    assert partitions_of(admin, specs[1].name) == 2
    for s in specs:
        actual = configs_of(admin, s.name)
        assert {k: actual[k] for k in s.configs} == s.configs


def test_second_apply_is_a_no_op(admin: AdminClient) -> None:
    specs = [spec(unique("idem"))]
    apply_plan(admin, plan_topics(admin, specs))

    plan = plan_topics(admin, specs)
    assert plan.up_to_date
    assert plan.state(specs[0].name).details() == []
    result = apply_plan(admin, plan, raise_partitions=True)
    assert (result.created, result.raised) == ([], [])


def test_stale_plan_tolerates_a_topic_created_meanwhile(admin: AdminClient) -> None:
    specs = [spec(unique("race"))]
    plan = plan_topics(admin, specs)
    apply_plan(admin, plan)

    result = apply_plan(admin, plan)  # as a second process holding the same plan would

    assert result.created == []
    assert result.already_existed == [specs[0].name]


def test_planning_changes_nothing(admin: AdminClient) -> None:
    name = unique("dry")
    plan = plan_topics(admin, [spec(name)])
    assert plan.state(name).action == "create"
    assert partitions_of(admin, name) is None


def test_more_partitions_wanted_is_reported_and_raised_only_when_asked(
    admin: AdminClient,
) -> None:
    name = unique("grow")
    create_directly(admin, name, 2, **CONFIGS)
    plan = plan_topics(admin, [spec(name, 4)])
    state = plan.state(name)
    assert (state.action, state.partitions_to_add) == ("differs", 2)
    assert plan.to_raise == [state]
    assert "partitions 2 -> 4 (raise with --raise-partitions)" in state.details()

    apply_plan(admin, plan, raise_partitions=False)
    assert partitions_of(admin, name) == 2

    try:
        result = apply_plan(admin, plan, raise_partitions=True)
    except PermanentError as exc:
        # Tansu 0.6 has no CreatePartitions; the error must say so, and nothing changed.
        assert "does not support" in str(exc)
        assert name in str(exc)
        assert partitions_of(admin, name) == 2
    else:
        # A broker with CreatePartitions (Apache Kafka) really adds them.
        assert result.raised == [name]
        assert partitions_of(admin, name) == 4


def test_fewer_partitions_wanted_is_reported_as_impossible(admin: AdminClient) -> None:
    name = unique("shrink")
    create_directly(admin, name, 3, **CONFIGS)
    plan = plan_topics(admin, [spec(name, 1)])
    state = plan.state(name)
    assert state.action == "differs"
    assert state.partition_decrease
    assert state.partitions_to_add == 0
    assert any("impossible" in line for line in state.details())

    apply_plan(admin, plan, raise_partitions=True)
    assert partitions_of(admin, name) == 3


def test_config_and_replication_differences_are_reported_not_changed(
    admin: AdminClient,
) -> None:
    name = unique("cfg")
    create_directly(admin, name, 3, **{**CONFIGS, "retention.ms": "1000"})
    wanted = TopicSpec(name, 3, 3, {**CONFIGS, "retention.ms": "2000", "segment.ms": "60000"})

    plan = plan_topics(admin, [wanted])
    state = plan.state(name)

    assert state.action == "differs"
    assert state.replication_differs
    assert state.config_diffs == (
        ConfigDiff("retention.ms", "2000", "1000"),
        # Tansu reports only the settings a topic was created with.
        ConfigDiff("segment.ms", "60000", configs_of(admin, name).get("segment.ms")),
    )
    assert "retention.ms: 1000, wanted 2000" in state.details()

    apply_plan(admin, plan, raise_partitions=True)
    assert configs_of(admin, name)["retention.ms"] == "1000"


# --- the command line -----------------------------------------------------------------


def write_topics(path: Path, names: list[str]) -> Path:
    lines = ["topics:"]
    for name in names:
        lines += [
            f"  - name: {name}",
            "    partitions: 2",
            "    replication_factor: 1",
            "    configs:",
            "      retention.ms: 86400000",
            "      cleanup.policy: delete",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(broker: Broker, cwd: Path, *args: str, app_id: str = "cli-test",
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "COLUMNS": "200",
           "APP_ID": app_id}
    return subprocess.run(
        [str(STREAMSIGHT), "topics", "apply", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_dry_run_then_apply_then_no_op(
    broker: Broker, admin: AdminClient, tmp_path: Path
) -> None:
    names = [unique("cli-a"), unique("cli-b")]
    topics = write_topics(tmp_path / "topics.yaml", names)
    app_id = unique("app")
    # Faust's leader topic is not needed: its consumer is off (agents/app.py).
    leader = f"{app_id}-__assignor-__leader"

    dry = run_cli(broker, tmp_path, "--file", str(topics), "--dry-run", app_id=app_id)
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing changed" in dry.stdout
    assert dry.stdout.count("create") == 2
    assert all(partitions_of(admin, n) is None for n in [*names, leader])

    first = run_cli(broker, tmp_path, "--file", str(topics), app_id=app_id)
    assert first.returncode == 0, first.stderr
    assert "created 2" in first.stdout
    assert all(partitions_of(admin, n) == 2 for n in names)
    assert partitions_of(admin, leader) is None

    second = run_cli(broker, tmp_path, app_id=app_id)  # TOPICS_FILE default: ./topics.yaml
    assert second.returncode == 0, second.stderr
    assert "created 0" in second.stdout
    assert second.stdout.count(" ok ") == 2


def test_cli_malformed_file_is_one_line_and_exit_1(broker: Broker, tmp_path: Path) -> None:
    name = unique("bad")
    topics = write_topics(tmp_path / "topics.yaml", [name])
    topics.write_text(topics.read_text().replace("partitions: 2", "partitions: -2"))

    result = run_cli(broker, tmp_path, "--file", str(topics))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"streamsight: {topics}:3: partitions must be a positive integer (topic '{name}')"
    ]
