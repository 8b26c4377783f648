"""Repeated failures told once, then summed: at most one line per kind of failure per
window, each carrying how many like it were held back since the line before.

A broker outage makes every client retry every few hundred milliseconds, each retry a
log line; told this way, a two-minute outage is a handful of lines that still say how
often it happened. Pure: the caller passes the time in.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

#: Kinds remembered at most; the longest quiet are forgotten first.
MAX_KINDS = 1000


@dataclass(slots=True)
class _Kind:
    told_at: float
    held: int = 0


class Repeats:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._kinds: dict[Hashable, _Kind] = {}

    def tell(self, kind: Hashable, now: float) -> int | None:
        """None: hold this one back (it is counted). Otherwise tell it, with the number
        held back since the last one told (0 the first time)."""
        seen = self._kinds.get(kind)
        if seen is not None and now - seen.told_at < self.window_s:
            seen.held += 1
            return None
        held = seen.held if seen is not None else 0
        self._kinds.pop(kind, None)
        if len(self._kinds) >= MAX_KINDS:
            # Insertion order is the order of the last line told: the first is the stalest.
            del self._kinds[next(iter(self._kinds))]
        self._kinds[kind] = _Kind(now)
        return held
