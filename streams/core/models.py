"""The records that flow between agents, as typed msgspec structs.

Every topic carries one of these per Kafka message, JSON-encoded, so any Kafka tool can
read, copy and replay it.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

SCHEMA_VERSION = 1

# Namespace for deterministic ids: the same inputs give the same id in every process.
ID_NAMESPACE = uuid.UUID("6f1c9a52-8c2e-4f0b-9d57-3b1f0c6a2e11")


class Http(msgspec.Struct, frozen=True):
    # Constraints live here so that decoding checks them in C, with no copy afterwards.
    method: str | None = None
    route: str | None = None
    status_code: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    duration_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None


class ErrorInfo(msgspec.Struct, frozen=True):
    type: str | None = None
    message: str | None = None


class Event(msgspec.Struct, frozen=True):
    """One validated event, whatever envelope it arrived in."""

    event_id: str
    event_type: str
    source: str
    timestamp: datetime
    http: Http | None = None
    error: ErrorInfo | None = None
    user_id: str | None = None
    session_id: str | None = None
    severity: str | None = None
    attributes: dict[str, Any] | None = None


class Reason(enum.StrEnum):
    """Machine-readable reasons a message goes to dead-letter."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    TOO_DEEP = "too_deep"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_VERSION = "unknown_version"
    MISSING_KEY = "missing_key"
    NUL_CHARACTER = "nul_character"
    DUPLICATE_KEY = "duplicate_key"
    UNPROCESSABLE = "unprocessable"
    DB_REJECTED = "db_rejected"
    AI_FAILED = "ai_failed"


class Rejection(msgspec.Struct, frozen=True):
    """Why a message was refused: a value the dead-letter writer sends on."""

    reason: Reason
    message: str
    field: str | None = None


class SealReason(enum.StrEnum):
    COUNT = "count"
    AGE = "age"
    SHUTDOWN = "shutdown"
    MANUAL = "manual"


class LatencyStats(msgspec.Struct, frozen=True):
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class Digest(msgspec.Struct, frozen=True):
    """A compact summary of a batch: what the analyst reads instead of raw events."""

    by_type: dict[str, int]
    by_status: dict[str, int]
    by_severity: dict[str, int]
    error_count: int
    top_errors: list[tuple[str, int]]
    latency: LatencyStats | None
    routes: dict[str, int]
    users: int
    samples: list[dict[str, Any]]


class AnalysisRequest(msgspec.Struct, frozen=True):
    """A sealed batch, as it travels on ``analysis-requests`` (key = batch key)."""

    batch_id: str
    key: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    event_count: int
    seal_reason: SealReason
    opened_at: datetime
    sealed_at: datetime
    first_event_at: datetime
    last_event_at: datetime
    digest: Digest
    event_ids: list[str]
    schema_version: int = SCHEMA_VERSION


def batch_id_for(topic: str, partition: int, first_offset: int, key: str) -> str:
    """Deterministic: a batch re-formed after a crash or replay gets the same id."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{topic}/{partition}/{first_offset}/{key}"))


class InsightSeverity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Anomaly(msgspec.Struct, frozen=True):
    """Something unusual in a batch, with the numbers that show it."""

    metric: str
    value: float
    baseline: float | None
    score: float | None
    evidence: str


class Analysis(msgspec.Struct, frozen=True):
    """What an analyzer concluded about one batch (before ids and accounting)."""

    summary: str
    severity: InsightSeverity
    confidence: float
    patterns: list[str]
    anomalies: list[Anomaly]
    recommendations: list[str]


class UsageOutcome(enum.StrEnum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    INVALID_OUTPUT = "invalid_output"
    CLIENT_ERROR = "client_error"


class AIUsage(msgspec.Struct, frozen=True):
    """One call to an AI provider, whatever came of it (a row of ``ai_usage``)."""

    request_id: str
    batch_id: str
    analyzer: str
    model: str
    attempt: int
    outcome: UsageOutcome
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    at: datetime
    error: str | None = None


class Insight(msgspec.Struct, frozen=True):
    """The analyst's answer for one batch, as it travels on ``insights``."""

    insight_id: str
    batch_id: str
    source: str
    window_start: datetime
    window_end: datetime
    analysis: Analysis
    analyzer: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    created_at: datetime
    usage: list[AIUsage]
    schema_version: int = SCHEMA_VERSION


class ErrorRecord(msgspec.Struct, frozen=True):
    """An error worth a row in ``error_events``: from an event, or from our own work."""

    time: datetime
    source: str
    type: str
    message: str
    event_id: str | None = None
    batch_id: str | None = None
    # AI calls made for a request that failed in the end: billed all the same.
    usage: list[AIUsage] = []


def insight_id_for(batch_id: str, analyzer: str) -> str:
    """Deterministic: re-analysing a batch with the same analyzer gives the same id."""
    return str(uuid.uuid5(ID_NAMESPACE, f"insight/{batch_id}/{analyzer}"))


def usage_id_for(batch_id: str, analyzer: str, attempt: int) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"usage/{batch_id}/{analyzer}/{attempt}"))


class PerformanceRow(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A timed operation from one event (a row of ``api_performance``).

    On the wire a JSON array in field order, which is the table's column order: there is
    one per event at event volume, and naming every field in every row would double the
    bytes to encode, send and decode.
    """

    time: datetime
    source: str
    route: str | None
    method: str | None
    status_code: int | None
    duration_ms: float
    success: bool
    event_id: str
