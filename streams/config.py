"""Settings: the only module that reads the environment (and ``.env`` when present).

Every other module receives a frozen ``Settings``. A bad value stops start-up with one
line naming the setting (see ``load``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, StrictInt, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from streams.errors import ConfigError

_RESERVED = ("the user or password holds a character URLs reserve: percent-encode it "
             "(@ as %40, : as %3A, / as %2F, # as %23, ? as %3F)")
#: One bootstrap server: host (or [IPv6]) and port, optionally behind a listener name.
_BOOTSTRAP_SERVER = re.compile(r"^([A-Za-z_]+://)?(\[[0-9A-Fa-f:.]+\]|[^\s,:/\[\]]+):\d{1,5}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/streamsight"
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    app_id: str = Field("streamsight", min_length=1)
    topics_file: str = "topics.yaml"
    # Put before every topic name of topics.yaml ("acme.prod." makes "acme.prod.events"):
    # one cluster, many deployments, and a cluster's naming rules.
    topic_prefix: str = Field("", max_length=200, pattern=r"^[a-zA-Z0-9._-]*$")
    # Same names and meaning as Faust's own WEB_PORT / WEB_ENABLED, which it also reads.
    web_port: int = Field(6066, ge=1, le=65535)
    web_enabled: bool = True
    # `streamsight lag-exporter`'s port, and how often lag is read from the broker (the
    # exporter and every worker read it).
    lag_exporter_port: int = Field(9308, ge=1, le=65535)
    lag_interval_seconds: float = Field(15.0, gt=0)

    # TimescaleDB policies, applied by `db migrate` and at worker start: retention in days
    # per table or aggregate as JSON ({"api_performance": 14}; 0 = keep forever; tables
    # not named keep their policy), and compression after this many days (0 = none).
    # Strict: JSON true is not 1 day.
    db_retention_days: dict[str, StrictInt] = Field(default_factory=dict)
    db_compress_after_days: int = Field(7, ge=0)

    batch_max_events: int = Field(100, ge=1, le=100_000)
    batch_max_age_seconds: float = Field(600.0, gt=0)
    max_event_bytes: int = Field(64 * 1024, ge=256)

    consumer_max_records: int = Field(20_000, ge=1)
    consumer_session_timeout_ms: int = Field(30_000, ge=1000)
    consumer_heartbeat_interval_ms: int = Field(3_000, ge=100)
    # How a group shares partitions: "consumer" is Kafka 4's protocol (KIP-848; the broker
    # then owns the session timeout and heartbeat: group.consumer.* settings), the others
    # the classic protocol with that assignor; "auto": see streams/adapters/group_protocol.
    consumer_group_protocol: Literal["auto", "consumer", "cooperative-sticky", "range"] = "auto"
    # A stable identity per worker (a StatefulSet ordinal, a host name): static membership,
    # so that a worker restarted within the session timeout keeps its partitions with no
    # rebalance. Unique per worker: a second worker with the same id fences the first.
    worker_id: str | None = Field(None, min_length=1, max_length=200,
                                  pattern=r"^[a-zA-Z0-9._-]+$")

    ai_requests_per_minute: int = Field(60, ge=1)
    ai_tokens_per_minute: int = Field(90_000, ge=1)
    ai_max_attempts: int = Field(5, ge=1)
    ai_max_concurrency: int = Field(4, ge=1, le=256)
    openai_timeout_seconds: float = Field(60.0, gt=0)
    # Model prices in USD per million tokens: JSON or a file path, over the built-in table.
    openai_prices: str | None = None
    ai_budget_usd_per_day: float | None = Field(None, gt=0)
    circuit_failure_threshold: int = Field(5, ge=1)
    circuit_cooldown_seconds: float = Field(600.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _dsn(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError("use postgresql://user:password@host:port/database")
        try:
            parts.port  # noqa: B018 (it raises for what is not a port)
        except ValueError as exc:
            raise ValueError("the port must be 1 to 65535" if "range" in str(exc)
                             else _RESERVED) from None
        # A second @, or a # (the fragment) in the password: a URL that means something
        # else than what was meant, and its parts would end up in error messages.
        if parts.netloc.count("@") > 1 or parts.fragment:
            raise ValueError(_RESERVED)
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        # An empty or port-less value would leave every client waiting for a broker.
        if not all(_BOOTSTRAP_SERVER.match(part.strip()) for part in value.split(",")):
            raise ValueError("use host:port, comma-separated, e.g. kafka:9092")
        return value

    @property
    def topics(self) -> Topics:
        return Topics.prefixed(self.topic_prefix)


def load(**overrides: object) -> Settings:
    """Read settings; raise ConfigError with one line naming the first bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # Raised before validation, when a structured value (JSON) does not parse.
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1).upper() if found else "settings"
        raise ConfigError(f"invalid setting {name}: the value is not valid JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        # Within a structured value: which key ({"api_performance": true} names it).
        where = "".join(f"{part}: " for part in first["loc"][1:])
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {where}{message}") from None


@dataclass(frozen=True)
class Topics:
    """The names of streamsight's topics: those of topics.yaml behind TOPIC_PREFIX."""

    events: str = "events"
    analysis_requests: str = "analysis-requests"
    insights: str = "insights"
    performance: str = "performance"
    errors: str = "errors"
    dead_letter: str = "dead-letter"

    @classmethod
    def prefixed(cls, prefix: str) -> Topics:
        plain = cls()
        return cls(*(prefix + name for name in plain.names()))

    def names(self) -> tuple[str, ...]:
        return (self.events, self.analysis_requests, self.insights, self.performance,
                self.errors, self.dead_letter)


#: The names with no TOPIC_PREFIX.
DEFAULT_TOPICS = Topics()
