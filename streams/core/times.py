"""The one grammar of times and durations that every command takes.

A time is ISO 8601 (a date, or a date and time; without an offset it is UTC) or an age:
a duration before now (``45s``, ``30m``, ``2h``, ``1h30m``, ``7d``, ``1w``, or ISO 8601's
``PT2H``). A bad value is one line naming the option and both forms.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from streams.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FORMS = "use ISO 8601 (2026-11-25T10:00:00Z) or an age (45s, 30m, 2h, 7d, 1w)"


def duration(text: str, option: str) -> timedelta:
    """``2h``, ``90m``, ``1h30m``, ``45s``, ``3d``, ``1w`` or ``PT2H``; above zero."""
    raw = text.strip().lower()
    if raw.startswith("p"):
        raw = raw.removeprefix("p").replace("t", "")
    parts = _PART.findall(raw)
    if not parts or _PART.sub("", raw).strip():
        raise ConfigError(f"invalid {option} {text!r}: use a number and a unit "
                          "(ms, s, m, h, d, w), e.g. 2h")
    seconds = sum(float(n) * _UNITS[unit.lower()] for n, unit in parts)
    if seconds <= 0:
        raise ConfigError(f"invalid {option} {text!r}: it must be above zero")
    return timedelta(seconds=seconds)


def moment(text: str, option: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC without an offset) or an age before ``now``."""
    raw = text.strip()
    if _PART.match(raw) or raw.lower().startswith("p"):
        try:
            return now - duration(raw, option)
        except ConfigError:
            pass
    try:
        at = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise ConfigError(f"invalid {option} {text!r}: {_FORMS}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def moment_ms(text: str, option: str, now: datetime) -> int:
    """``moment`` in milliseconds since the epoch."""
    return int(moment(text, option, now).timestamp() * 1000)
