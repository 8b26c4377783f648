"""Topics: topics.yaml, the plan that compares it with a cluster, and its application.

``load_topics`` validates the file strictly and names file, line and field in one line;
``plan_topics`` compares it with the cluster; ``apply_plan`` creates what is missing and,
only when asked, adds partitions. Nothing here deletes or lowers anything.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from confluent_kafka import KafkaError, KafkaException

# Public names of confluent_kafka.admin that its package re-exports without __all__.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from streams.adapters.kafka import ADMIN_TIMEOUT, kafka_error
from streams.errors import ConfigError, RetryableError

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_MAX_TOPIC_NAME = 249
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_CONFIG_NAME = re.compile(r"^[a-z][a-z0-9]*(\.[a-z0-9]+)*$")
_CLEANUP_POLICIES = {"delete", "compact", "compact,delete"}
_REQUIRED_CONFIGS = ("retention.ms", "cleanup.policy")
_TOPIC_FIELDS = {"name", "partitions", "replication_factor", "configs"}


# --- topics.yaml --------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def new_topic(self) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication_factor,
            config=dict(self.configs),
        )


class _Loader:
    """Walks the composed YAML node tree so that every error can name its line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.yaml = yaml.SafeLoader(text)

    def fail(self, node: yaml.Node | None, message: str, line: int | None = None) -> ConfigError:
        if line is None:
            line = node.start_mark.line + 1 if node is not None else 1
        return ConfigError(f"{self.path}:{line}: {message}")

    def value(self, node: yaml.Node) -> Any:
        return self.yaml.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(key_node, f"{what} keys must be strings")
            if key in items:
                raise self.fail(key_node, f"duplicate key '{key}' in {what}")
            items[key] = (key_node, value_node)
        return items

    def load(self) -> list[TopicSpec]:
        try:
            root = self.yaml.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = exc.problem or exc.context or "cannot parse"
            raise self.fail(None, f"invalid YAML: {problem}", line=line) from None
        except yaml.YAMLError as exc:
            raise self.fail(None, f"invalid YAML: {exc}") from None
        finally:
            self.yaml.dispose()
        if root is None:
            raise self.fail(None, "empty file; expected a 'topics' list")
        top = self.mapping(root, "the file")
        for key, (key_node, _) in top.items():
            if key != "topics":
                raise self.fail(key_node, f"unknown key '{key}' (expected 'topics')")
        if "topics" not in top:
            raise self.fail(root, "missing 'topics' list")
        topics_node = top["topics"][1]
        if not isinstance(topics_node, yaml.SequenceNode) or not topics_node.value:
            raise self.fail(topics_node, "topics must be a non-empty list")
        specs: list[TopicSpec] = []
        seen: dict[str, int] = {}
        for item in topics_node.value:
            spec = self.topic(item)
            if spec.name in seen:
                raise self.fail(
                    item,
                    f"duplicate topic '{spec.name}' (first declared on line {seen[spec.name]})",
                )
            seen[spec.name] = spec.line
            specs.append(spec)
        return specs

    def topic(self, node: yaml.Node) -> TopicSpec:
        fields = self.mapping(node, "a topic")
        if "name" not in fields:
            raise self.fail(node, "topic without 'name'")
        name_node = fields["name"][1]
        name = self.value(name_node) if isinstance(name_node, yaml.ScalarNode) else None
        if not isinstance(name, str) or not _TOPIC_NAME.match(name) or name in {".", ".."}:
            raise self.fail(
                name_node, "name must be 1-249 characters of letters, digits, '.', '_' or '-'"
            )
        which = f"(topic '{name}')"
        for key, (key_node, _) in fields.items():
            if key not in _TOPIC_FIELDS:
                allowed = ", ".join(sorted(_TOPIC_FIELDS))
                raise self.fail(key_node, f"unknown field '{key}' {which}; allowed: {allowed}")
        for required in ("partitions", "replication_factor", "configs"):
            if required not in fields:
                raise self.fail(node, f"missing field '{required}' {which}")
        partitions = self.positive_int(fields["partitions"][1], "partitions", which)
        replication = self.positive_int(
            fields["replication_factor"][1], "replication_factor", which
        )
        configs = self.configs(fields["configs"][1], which)
        return TopicSpec(
            name=name,
            partitions=partitions,
            replication_factor=replication,
            configs=configs,
            line=node.start_mark.line + 1,
        )

    def positive_int(self, node: yaml.Node, name: str, which: str) -> int:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        # bool is an int in Python; `partitions: yes` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.fail(node, f"{name} must be a positive integer {which}")
        return value

    def configs(self, node: yaml.Node, which: str) -> dict[str, str]:
        entries = self.mapping(node, f"configs {which}")
        configs: dict[str, str] = {}
        for key, (key_node, value_node) in entries.items():
            if not _CONFIG_NAME.match(key):
                raise self.fail(key_node, f"'{key}' is not a Kafka config name {which}")
            value = self.value(value_node) if isinstance(value_node, yaml.ScalarNode) else None
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str | int | float):
                text = str(value)
            else:
                raise self.fail(value_node, f"{key} must be a scalar value {which}")
            if key == "retention.ms" and not _is_int(text, minimum=-1):
                raise self.fail(value_node, f"retention.ms must be an integer >= -1 {which}")
            if key == "cleanup.policy":
                text = _normalize_policy(text)
                if text not in _CLEANUP_POLICIES:
                    raise self.fail(
                        value_node, f"cleanup.policy must be delete, compact or both {which}"
                    )
            if key == "max.message.bytes" and not _is_int(text, minimum=1):
                raise self.fail(value_node, f"max.message.bytes must be a positive integer {which}")
            configs[key] = text
        for required in _REQUIRED_CONFIGS:
            if required not in configs:
                raise self.fail(node, f"configs must set {required} {which}")
        return configs


def _is_int(text: str, minimum: int) -> bool:
    try:
        return int(text) >= minimum
    except ValueError:
        return False


def _normalize_policy(text: str) -> str:
    return ",".join(sorted(part.strip() for part in text.split(",") if part.strip()))


def load_topics(path: Path | str, prefix: str = "") -> list[TopicSpec]:
    """Read and validate a topics file, each name behind ``prefix`` (TOPIC_PREFIX);
    ConfigError names file, line and field in one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    specs = _Loader(path, text).load()
    too_long = [s.name for s in specs if len(prefix + s.name) > _MAX_TOPIC_NAME]
    if too_long:
        raise ConfigError(f"TOPIC_PREFIX {prefix!r} makes {too_long[0]!r} longer than "
                          f"{_MAX_TOPIC_NAME} characters")
    return [dataclasses.replace(s, name=prefix + s.name) for s in specs]


def _cluster_topics(admin: AdminClient, timeout: float) -> dict[str, tuple[int, int]]:
    """Existing topics: name -> (partitions, replication factor)."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise kafka_error(exc, "cannot read cluster metadata") from None
    topics: dict[str, tuple[int, int]] = {}
    for name, topic in metadata.topics.items():
        if topic.error is not None and topic.error.code() != KafkaError.NO_ERROR:
            continue
        replication = max((len(p.replicas) for p in topic.partitions.values()), default=0)
        topics[name] = (len(topic.partitions), replication)
    return topics


# --- plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigDiff:
    key: str
    wanted: str
    actual: str | None  # None: the broker does not report the setting for this topic


@dataclass(frozen=True)
class TopicState:
    """One topic of the plan: what topics.yaml asks for next to what the cluster has."""

    spec: TopicSpec
    exists: bool
    partitions: int | None = None
    replication_factor: int | None = None
    config_diffs: tuple[ConfigDiff, ...] = ()

    @property
    def action(self) -> Literal["create", "ok", "differs"]:
        if not self.exists:
            return "create"
        if self.partitions_to_add or self.partition_decrease or self.replication_differs:
            return "differs"
        return "differs" if self.config_diffs else "ok"

    @property
    def partitions_to_add(self) -> int:
        if self.partitions is None:
            return 0
        return max(0, self.spec.partitions - self.partitions)

    @property
    def partition_decrease(self) -> bool:
        return self.partitions is not None and self.partitions > self.spec.partitions

    @property
    def replication_differs(self) -> bool:
        return (
            self.replication_factor is not None
            and self.replication_factor != self.spec.replication_factor
        )

    def details(self) -> list[str]:
        """Human-readable differences, one per line; empty when nothing differs."""
        spec = self.spec
        if not self.exists:
            configs = ", ".join(f"{k}={v}" for k, v in spec.configs.items())
            return [
                f"partitions={spec.partitions} replication_factor={spec.replication_factor}",
                configs,
            ]
        lines: list[str] = []
        if self.partitions_to_add:
            lines.append(
                f"partitions {self.partitions} -> {spec.partitions} (raise with --raise-partitions)"
            )
        if self.partition_decrease:
            lines.append(
                f"partitions {self.partitions} > {spec.partitions} wanted: "
                "impossible, Kafka cannot remove partitions"
            )
        if self.replication_differs:
            lines.append(
                f"replication_factor {self.replication_factor}, wanted "
                f"{spec.replication_factor} (reassign partitions to change it)"
            )
        for diff in self.config_diffs:
            actual = "not set" if diff.actual is None else diff.actual
            lines.append(f"{diff.key}: {actual}, wanted {diff.wanted}")
        return lines


@dataclass(frozen=True)
class TopicPlan:
    topics: tuple[TopicState, ...]

    @property
    def to_create(self) -> list[TopicState]:
        return [t for t in self.topics if t.action == "create"]

    @property
    def to_raise(self) -> list[TopicState]:
        return [t for t in self.topics if t.partitions_to_add]

    @property
    def differing(self) -> list[TopicState]:
        return [t for t in self.topics if t.action == "differs"]

    @property
    def up_to_date(self) -> bool:
        return all(t.action == "ok" for t in self.topics)

    def state(self, name: str) -> TopicState:
        for topic in self.topics:
            if topic.spec.name == name:
                return topic
        raise KeyError(name)


def _describe_configs(
    admin: AdminClient, names: Iterable[str], timeout: float
) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    if not resources:
        return {}
    futures = admin.describe_configs(resources, request_timeout=timeout)
    found: dict[str, dict[str, str]] = {}
    for resource, future in futures.items():
        try:
            entries = future.result()
        except KafkaException as exc:
            raise kafka_error(exc, f"cannot describe topic '{resource.name}'") from None
        found[resource.name] = {
            key: entry.value for key, entry in entries.items() if entry.value is not None
        }
    return found


def _same(key: str, wanted: str, actual: str) -> bool:
    if key == "cleanup.policy":
        return _normalize_policy(wanted) == _normalize_policy(actual)
    return wanted.strip().lower() == actual.strip().lower()


def plan_topics(
    admin: AdminClient, specs: Iterable[TopicSpec], timeout: float = ADMIN_TIMEOUT
) -> TopicPlan:
    """Compare ``specs`` with the cluster; reads only."""
    specs = list(specs)
    existing = _cluster_topics(admin, timeout)
    configs = _describe_configs(admin, [s.name for s in specs if s.name in existing], timeout)
    states: list[TopicState] = []
    for spec in specs:
        if spec.name not in existing:
            states.append(TopicState(spec=spec, exists=False))
            continue
        partitions, replication = existing[spec.name]
        actual = configs.get(spec.name, {})
        diffs = tuple(
            ConfigDiff(key, wanted, actual.get(key))
            for key, wanted in spec.configs.items()
            if key not in actual or not _same(key, wanted, actual[key])
        )
        states.append(
            TopicState(
                spec=spec,
                exists=True,
                partitions=partitions,
                replication_factor=replication,
                config_diffs=diffs,
            )
        )
    return TopicPlan(tuple(states))


# --- apply --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyResult:
    created: list[str]
    raised: list[str]
    already_existed: list[str]


def apply_plan(
    admin: AdminClient,
    plan: TopicPlan,
    raise_partitions: bool = False,
    timeout: float = ADMIN_TIMEOUT,
) -> ApplyResult:
    """Create missing topics with their configs; add partitions only if ``raise_partitions``.

    Idempotent: a topic that another process created meanwhile counts as already there.
    Config and replication differences are reported by the plan and left alone.
    """
    created: list[str] = []
    already: list[str] = []
    new_topics = [t.spec.new_topic() for t in plan.to_create]
    if new_topics:
        futures = admin.create_topics(new_topics, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    already.append(name)
                    continue
                raise kafka_error(exc, f"cannot create topic '{name}'") from None
            created.append(name)
        _wait_for_topics(admin, created, timeout)

    raised: list[str] = []
    if raise_partitions and plan.to_raise:
        requests = [NewPartitions(t.spec.name, t.spec.partitions) for t in plan.to_raise]
        futures = admin.create_partitions(requests, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                raise kafka_error(exc, f"cannot add partitions to '{name}'") from None
            raised.append(name)
    return ApplyResult(created=created, raised=raised, already_existed=already)


def _wait_for_topics(admin: AdminClient, names: list[str], timeout: float) -> None:
    # CreateTopics returns before every broker's metadata has the topic; a producer or a
    # second plan right after would otherwise see it missing.
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        pending -= set(_cluster_topics(admin, timeout))
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RetryableError(f"created topics not visible yet: {', '.join(sorted(pending))}")
        time.sleep(0.1)
