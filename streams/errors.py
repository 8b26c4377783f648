"""One exception hierarchy for streamsight.

Adapters map foreign errors (aiokafka, confluent-kafka, asyncpg, openai) onto these so
callers decide by kind, never by library: retry a RetryableError, give up on a
PermanentError, wait ``retry_after`` on RateLimited.
"""

from __future__ import annotations


class StreamsightError(Exception):
    """Base of every error streamsight raises on purpose."""


class ConfigError(StreamsightError):
    """A setting or a configuration file is invalid; start-up stops with one line."""


class RetryableError(StreamsightError):
    """The operation may succeed if tried again later (broker stall, database restart)."""


class PermanentError(StreamsightError):
    """Trying again cannot help (bad request, schema violation, missing table)."""


class DataRejected(PermanentError):
    """The database refused a value for what it is (SQLSTATE class 22, class 23 but for
    unique violations, or a value its client cannot encode): trying again cannot help, so
    the record is set aside and the rest goes on. ``detail`` is the database's message."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class RateLimited(RetryableError):
    """The remote side asked us to slow down; ``retry_after`` is its hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
