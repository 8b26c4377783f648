"""topics.yaml validation: every mistake is one line naming file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streams.adapters.topics import TopicSpec, load_topics
from streams.errors import ConfigError

REPO_TOPICS = Path(__file__).resolve().parents[3] / "topics.yaml"

VALID = """\
topics:
  - name: events
    partitions: 4
    replication_factor: 1
    configs:
      retention.ms: 604800000
      cleanup.policy: delete
      max.message.bytes: 1048576
  - name: dead-letter
    partitions: 1
    replication_factor: 1
    configs:
      retention.ms: "2592000000"
      cleanup.policy: delete,compact
      unclean.leader.election.enable: false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_topics(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_file_gives_specs_with_string_configs(tmp_path: Path) -> None:
    specs = load_topics(write(tmp_path, VALID))
    assert specs == [
        TopicSpec(
            name="events",
            partitions=4,
            replication_factor=1,
            configs={
                "retention.ms": "604800000",
                "cleanup.policy": "delete",
                "max.message.bytes": "1048576",
            },
            line=2,
        ),
        TopicSpec(
            name="dead-letter",
            partitions=1,
            replication_factor=1,
            configs={
                "retention.ms": "2592000000",
                "cleanup.policy": "compact,delete",
                "unclean.leader.election.enable": "false",
            },
            line=9,
        ),
    ]


def test_repository_topics_file_declares_every_topic() -> None:
    specs = {spec.name: spec for spec in load_topics(REPO_TOPICS)}
    assert set(specs) == {
        "events",
        "analysis-requests",
        "insights",
        "performance",
        "errors",
        "dead-letter",
    }
    assert specs["events"].partitions == 4
    for spec in specs.values():
        assert spec.configs["cleanup.policy"] == "delete"
        assert int(spec.configs["retention.ms"]) > 0
    longest = max(specs.values(), key=lambda s: int(s.configs["retention.ms"]))
    assert longest.name == "dead-letter"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert error_of(path) == f"{path}: file not found"


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "topics:\n  - name: events\n    partitions: [4\n")
    message = error_of(path)
    assert message.startswith(f"{path}:4: invalid YAML:")


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    assert error_of(path) == f"{path}:1: empty file; expected a 'topics' list"


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        (
            "partitions: 4",
            "partitions: four",
            "3: partitions must be a positive integer (topic 'events')",
        ),
        (
            "partitions: 4",
            "partitions: 0",
            "3: partitions must be a positive integer (topic 'events')",
        ),
        (
            "partitions: 4",
            "partitions: true",
            "3: partitions must be a positive integer (topic 'events')",
        ),
        (
            "replication_factor: 1\n    configs:\n      retention.ms: 604800000",
            "replication_factor: -1\n    configs:\n      retention.ms: 604800000",
            "4: replication_factor must be a positive integer (topic 'events')",
        ),
        (
            "retention.ms: 604800000",
            "retention.ms: a week",
            "6: retention.ms must be an integer >= -1 (topic 'events')",
        ),
        (
            "cleanup.policy: delete\n      max",
            "cleanup.policy: forever\n      max",
            "7: cleanup.policy must be delete, compact or both (topic 'events')",
        ),
        (
            "max.message.bytes: 1048576",
            "max.message.bytes: [1]",
            "8: max.message.bytes must be a scalar value (topic 'events')",
        ),
        (
            "max.message.bytes: 1048576",
            "Max Bytes: 1",
            "8: 'Max Bytes' is not a Kafka config name (topic 'events')",
        ),
        (
            "name: events",
            "name: 'bad name!'",
            "2: name must be 1-249 characters of letters, digits, '.', '_' or '-'",
        ),
        (
            "    partitions: 4\n",
            "    partitions: 4\n    retention: 1\n",
            "4: unknown field 'retention' (topic 'events')",
        ),
    ],
)
def test_field_errors_name_line_and_field(
    tmp_path: Path, replace: str, by: str, expected: str
) -> None:
    assert replace in VALID
    path = write(tmp_path, VALID.replace(replace, by, 1))
    message = error_of(path)
    assert message.startswith(f"{path}:{expected}"), message


def test_missing_required_config_points_at_configs(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("      cleanup.policy: delete\n", "", 1))
    assert error_of(path) == f"{path}:6: configs must set cleanup.policy (topic 'events')"


def test_missing_field_points_at_topic(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("    partitions: 4\n", "", 1))
    assert error_of(path) == f"{path}:2: missing field 'partitions' (topic 'events')"


def test_duplicate_topic_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("name: dead-letter", "name: events"))
    assert error_of(path) == f"{path}:9: duplicate topic 'events' (first declared on line 2)"


def test_duplicate_key_in_a_topic(tmp_path: Path) -> None:
    path = write(
        tmp_path, VALID.replace("    partitions: 1\n", "    partitions: 1\n    partitions: 2\n")
    )
    assert error_of(path) == f"{path}:11: duplicate key 'partitions' in a topic"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults: {}\n" + VALID)
    assert error_of(path) == f"{path}:1: unknown key 'defaults' (expected 'topics')"


def test_topics_must_be_a_non_empty_list(tmp_path: Path) -> None:
    path = write(tmp_path, "topics:\n  events: {}\n")
    assert error_of(path) == f"{path}:2: topics must be a non-empty list"


def test_topic_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "topics:\n  - events\n")
    assert error_of(path) == f"{path}:2: a topic must be a mapping"


def test_a_prefix_goes_before_every_name(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    assert [s.name for s in load_topics(path, "team-a.")] == ["team-a.events",
                                                              "team-a.dead-letter"]
    with pytest.raises(ConfigError, match=r"TOPIC_PREFIX .* longer than 249"):
        load_topics(path, "x" * 240)
