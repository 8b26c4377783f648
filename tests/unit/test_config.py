"""Settings: typed, frozen, and a bad value stops start-up with one line naming it."""

from __future__ import annotations

import pytest

from agents.registry import topics_read
from streams import config
from streams.errors import ConfigError


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BATCH_MAX_EVENTS", "BATCH_MAX_AGE_SECONDS", "AI_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    settings = config.load(_env_file=None)
    assert settings.batch_max_events == 100
    assert settings.batch_max_age_seconds == 600
    assert settings.ai_max_attempts == 5
    assert settings.circuit_failure_threshold == 5
    assert settings.circuit_cooldown_seconds == 600


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_MAX_EVENTS", "7")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    settings = config.load(_env_file=None)
    assert settings.batch_max_events == 7
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"


@pytest.mark.parametrize(("name", "value"), [
    ("BATCH_MAX_EVENTS", "many"),
    ("BATCH_MAX_EVENTS", "0"),
    ("BATCH_MAX_AGE_SECONDS", "-1"),
    ("LOG_LEVEL", "LOUD"),
    ("WEB_PORT", "70000"),
    ("TOPIC_PREFIX", "acme/prod"),
    ("DB_RETENTION_DAYS", '{"api_performance": true}'),
    ("DB_RETENTION_DAYS", '{"api_performance": "14"}'),
    ("DB_RETENTION_DAYS", "[14]"),
    ("DATABASE_URL", "mysql://user@host/db"),
    ("DATABASE_URL", "postgresql://u@h:99999/db"),
    ("KAFKA_BOOTSTRAP_SERVERS", ""),
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka"),
    ("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,"),
])
def test_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        config.load(_env_file=None)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {name}:")


def test_a_bad_value_inside_json_names_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_RETENTION_DAYS", '{"insights": 365, "api_performance": true}')
    with pytest.raises(ConfigError, match=r"^invalid setting DB_RETENTION_DAYS: "
                                          r"api_performance: Input should be a valid integer$"):
        config.load(_env_file=None)


@pytest.mark.parametrize("value", ["k1:9092,k2:9092", "k1:9092, k2:9092", "[::1]:9092",
                                   "PLAINTEXT://kafka:9092"])
def test_bootstrap_servers_as_kafka_takes_them(monkeypatch: pytest.MonkeyPatch,
                                              value: str) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", value)
    assert config.load(_env_file=None).kafka_bootstrap_servers == value


@pytest.mark.parametrize("url", [
    "postgresql://app:Zq9@t:Xk7@db.internal:5432/streamsight",
    "postgresql://app:Zq9#Xk7@db.internal:5432/streamsight",
    "postgresql://app:Zq9/Xk7@db.internal:5432/streamsight",
])
def test_a_password_with_reserved_characters_is_one_line_showing_none_of_it(
    monkeypatch: pytest.MonkeyPatch, url: str,
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError) as caught:
        config.load(_env_file=None)
    message = str(caught.value)
    assert message == ("invalid setting DATABASE_URL: the user or password holds a character "
                       "URLs reserve: percent-encode it (@ as %40, : as %3A, / as %2F, # as "
                       "%23, ? as %3F)")
    assert "Zq9" not in message and "Xk7" not in message


def test_a_percent_encoded_password_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://app:s3cr%40t%3Aword@db.internal:5432/streamsight"
    monkeypatch.setenv("DATABASE_URL", url)
    assert config.load(_env_file=None).database_url == url


def test_an_empty_bootstrap_says_what_is_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    with pytest.raises(ConfigError, match=r"^invalid setting KAFKA_BOOTSTRAP_SERVERS: use "
                                          r"host:port, comma-separated, e.g. kafka:9092$"):
        config.load(_env_file=None)


def test_settings_are_frozen() -> None:
    settings = config.load(_env_file=None)
    with pytest.raises(Exception, match="frozen"):
        settings.batch_max_events = 5  # type: ignore[misc]


def test_topic_prefix_names_every_topic_and_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PREFIX", "acme.prod.")
    topics = config.load(_env_file=None).topics
    assert topics.names() == ("acme.prod.events", "acme.prod.analysis-requests",
                              "acme.prod.insights", "acme.prod.performance",
                              "acme.prod.errors", "acme.prod.dead-letter")
    assert topics_read(topics)["batcher"] == "acme.prod.events"
    assert topics_read(topics)["sink-errors"] == "acme.prod.errors"
    monkeypatch.delenv("TOPIC_PREFIX")
    assert config.load(_env_file=None).topics == config.DEFAULT_TOPICS
