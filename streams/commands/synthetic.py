"""Seeded, realistic synthetic traffic for ``streamsight produce``, the demo and the bench.

Pure: no I/O; the clock is injected. With a seed and a fixed clock the output is the same
bytes every run, so a bench or a test can rely on what it sent.
"""

from __future__ import annotations

import bisect
import math
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

_BASE_SOURCES = (
    "checkout-api",
    "auth-service",
    "catalog-api",
    "payments-api",
    "search-service",
    "inventory-api",
    "notifier",
    "user-profile",
    "recommender",
    "shipping-api",
    "cart-service",
    "pricing-engine",
)

_ROUTES = (
    "/orders",
    "/orders/{id}",
    "/cart",
    "/login",
    "/products",
    "/products/{id}",
    "/search",
    "/users/{id}",
    "/payments",
    "/health",
)

_METHODS = ("GET", "GET", "GET", "POST", "POST", "PUT", "DELETE")

# (event type, weight): mostly requests, like a real service's log stream. With 1% of
# requests answered 5xx, about 3.8% of the events report an error: under the 5% of
# StreamsightErrorRateHigh and of the built-in analyzer, as a healthy service would be.
_EVENT_TYPES = (
    ("http_request", 84),
    ("error", 3),
    ("user_signin", 5),
    ("ai_call", 4),
    ("db_query", 4),
)

_ERRORS = (
    ("TimeoutError", "upstream timed out after 30s"),
    ("ConnectionResetError", "connection reset by peer"),
    ("ValueError", "invalid literal for int() with base 10"),
    ("KeyError", "'customer_id'"),
    ("PaymentDeclined", "card declined by issuer"),
)

_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
_MODELS = ("gpt-4o-mini", "gpt-4o")

_INVALID_KINDS = (
    "malformed_json",
    "missing_field",
    "wrong_type",
    "future_timestamp",
    "empty",
    "null_key",
)

_REQUIRED = ("event_id", "event_type", "source", "timestamp")


def source_names(count: int) -> list[str]:
    """``count`` distinct service names; past the built-in list, numbered copies."""
    names = list(_BASE_SOURCES[:count])
    n = len(_BASE_SOURCES)
    names.extend(f"{_BASE_SOURCES[i % n]}-{i // n + 1}" for i in range(n, count))
    return names


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TrafficGenerator:
    """Yields ``(key, value)`` pairs: key = source (bytes), value = one JSON event.

    With ``invalid_ratio`` > 0 that share of messages is deliberately bad in one of the
    ways producers really get wrong (see ``_INVALID_KINDS``); a null key is one of them,
    hence ``bytes | None`` keys. ``invalid_counts`` tells how many of each were made.
    """

    def __init__(
        self,
        sources: int,
        seed: int | None = None,
        invalid_ratio: float = 0.0,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        if sources < 1:
            raise ValueError("sources must be at least 1")
        if not 0.0 <= invalid_ratio <= 1.0:
            raise ValueError("invalid_ratio must be between 0 and 1")
        self._rng = random.Random(seed)
        self._now = now
        self._invalid_ratio = invalid_ratio
        self.sources = source_names(sources)
        self._keys = [s.encode() for s in self.sources]
        # Mild skew: busy services send more, but every source shows up in any real sample.
        self._source_cum = _cumulative([1 / math.sqrt(i + 1) for i in range(sources)])
        # Each service has its own latency baseline (median, ms) and routes.
        self._median_ms = [self._rng.uniform(8.0, 250.0) for _ in range(sources)]
        self._routes = [self._rng.sample(_ROUTES, 4) for _ in range(sources)]
        self._types = [t for t, _ in _EVENT_TYPES]
        self._type_cum = _cumulative([w for _, w in _EVENT_TYPES])
        self.invalid_counts: dict[str, int] = dict.fromkeys(_INVALID_KINDS, 0)

    def next(self) -> tuple[bytes | None, bytes]:
        rng = self._rng
        idx = bisect.bisect(self._source_cum, rng.random() * self._source_cum[-1])
        event = self._event(idx)
        if self._invalid_ratio and rng.random() < self._invalid_ratio:
            return self._spoil(idx, event)
        return self._keys[idx], orjson.dumps(event)

    def batch(self, n: int) -> list[tuple[bytes | None, bytes]]:
        return [self.next() for _ in range(n)]

    def _event(self, idx: int) -> dict[str, Any]:
        rng = self._rng
        event_type = self._types[bisect.bisect(self._type_cum, rng.random() * self._type_cum[-1])]
        # Events reach Kafka a little after they happen.
        ts = self._now() - timedelta(milliseconds=rng.randint(0, 500))
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": event_type,
            "source": self.sources[idx],
            "timestamp": _rfc3339(ts),
        }
        severity = "info"
        if event_type in ("http_request", "error"):
            status = self._status(error=event_type == "error")
            duration = rng.lognormvariate(math.log(self._median_ms[idx]), 0.6)
            event["http"] = {
                "method": rng.choice(_METHODS),
                "route": rng.choice(self._routes[idx]),
                "status_code": status,
                "duration_ms": round(duration, 1),
            }
            if status >= 500:
                severity = "error"
            elif status >= 400:
                severity = "warning"
        if event_type == "error":
            err_type, message = rng.choice(_ERRORS)
            event["error"] = {"type": err_type, "message": message}
            severity = "error"
        # Anonymous traffic (health checks, crawlers) carries no user.
        if event_type == "user_signin" or rng.random() < 0.35:
            event["user_id"] = f"u-{rng.randint(1, 50_000)}"
            event["session_id"] = f"s-{rng.getrandbits(32):08x}"
        event["severity"] = severity
        if event_type == "ai_call":
            event["attributes"] = {
                "model": rng.choice(_MODELS),
                "tokens": rng.randint(50, 4000),
            }
        elif event_type == "db_query":
            event["attributes"] = {"rows": rng.randint(0, 500)}
        elif rng.random() < 0.3:
            event["attributes"] = {"region": rng.choice(_REGIONS)}
        return event

    def _status(self, error: bool) -> int:
        roll = self._rng.random()
        if error or roll < 0.01:
            return self._rng.choice((500, 502, 503, 504))
        if roll < 0.08:
            return self._rng.choice((400, 401, 403, 404, 409, 429))
        return self._rng.choice((200, 200, 200, 201, 204))

    def _spoil(self, idx: int, event: dict[str, Any]) -> tuple[bytes | None, bytes]:
        rng = self._rng
        kind = rng.choice(_INVALID_KINDS)
        self.invalid_counts[kind] += 1
        key: bytes | None = self._keys[idx]
        if kind == "malformed_json":
            value = orjson.dumps(event)
            value = value[: rng.randint(1, len(value) - 1)]
        elif kind == "missing_field":
            del event[rng.choice(_REQUIRED)]
            value = orjson.dumps(event)
        elif kind == "wrong_type":
            field, bad = rng.choice(
                (("event_type", 42), ("source", ["x"]), ("timestamp", True), ("http", "GET /"))
            )
            event[field] = bad
            value = orjson.dumps(event)
        elif kind == "future_timestamp":
            event["timestamp"] = _rfc3339(self._now() + timedelta(days=rng.randint(30, 3650)))
            value = orjson.dumps(event)
        elif kind == "empty":
            value = b""
        else:
            key = None
            value = orjson.dumps(event)
        return key, value


def _cumulative(weights: list[float] | list[int]) -> list[float]:
    total = 0.0
    out = []
    for w in weights:
        total += w
        out.append(total)
    return out
