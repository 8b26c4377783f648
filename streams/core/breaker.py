"""Circuit breaker for the AI provider: closed / open / half-open.

Pure and synchronous: the caller passes the time (epoch seconds) in and does the waiting.

* CLOSED: every call may go. ``failure_threshold`` consecutive counted failures open it.
* OPEN: nobody calls; ``allow`` answers how long until the cooldown ends. Waiting here is
  not an attempt: the caller keeps its request and asks again later.
* HALF_OPEN: once the cooldown has passed, exactly one caller gets to probe. Its success
  closes the breaker; its failure opens it again for a full cooldown. Everyone else waits.

The caller decides which errors count (provider failures such as 5xx, timeouts and
connection errors, not a 400 caused by one request) and reports only those to
``failure``. Every state change is recorded as a ``Transition`` that the caller drains to
log it and update metrics.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    old: BreakerState
    new: BreakerState
    at: float
    reason: str


class CircuitBreaker:
    def __init__(
        self, failure_threshold: int, cooldown_seconds: float, probe_wait_seconds: float = 1.0
    ) -> None:
        if failure_threshold < 1 or cooldown_seconds <= 0 or probe_wait_seconds <= 0:
            raise ValueError("threshold, cooldown and probe wait must be positive")
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        # How often callers that lost the race for the probe ask again: the probe's outcome
        # is unknown until it reports, and polling keeps this module free of events.
        self.probe_wait_seconds = probe_wait_seconds
        self._state = BreakerState.CLOSED
        self._opened_at: float | None = None
        self._failures = 0
        self._probing = False
        self._transitions: list[Transition] = []

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def opened_at(self) -> float | None:
        """When the breaker last opened; None while closed."""
        return self._opened_at

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self, now: float) -> float:
        """0.0 when the caller may call now, else the seconds to wait before asking again.

        In HALF_OPEN the first caller gets 0.0 and becomes the probe: it must report
        ``success``, ``failure`` or ``release`` when its call ends.
        """
        if self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.OPEN:
            assert self._opened_at is not None
            remaining = self._opened_at + self.cooldown_seconds - now
            if remaining > 0.0:
                return remaining
            self._move(BreakerState.HALF_OPEN, now, "cooldown elapsed")
        if self._probing:
            return self.probe_wait_seconds
        self._probing = True
        return 0.0

    def success(self, now: float) -> None:
        """A call reached the provider and got an answer."""
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False
            self._opened_at = None
            self._move(BreakerState.CLOSED, now, "probe succeeded")
        # While OPEN, a late success of a call that started before the breaker opened does
        # not close it: only the probe decides, so one lucky call cannot undo the cooldown.

    def failure(self, now: float) -> None:
        """A counted failure of a call to the provider."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False
            self._open(now, "probe failed")
        elif self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(now, f"{self._failures} consecutive failures")
        # While OPEN, late failures of calls already in flight count but do not extend the
        # cooldown: the provider was already known to be failing when it opened.

    def release(self) -> None:
        """The probe ended without a verdict on the provider (cancelled, or an error that
        does not count): let the next caller probe instead.

        Only the probe may call it: a caller is the probe when ``allow`` gave it 0.0 and
        ``state`` is HALF_OPEN right after. Without it, a cancelled probe would leave the
        breaker half-open with nobody allowed to call."""
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False

    def drain_transitions(self) -> list[Transition]:
        """State changes since the last drain, oldest first."""
        drained, self._transitions = self._transitions, []
        return drained

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._move(BreakerState.OPEN, now, reason)

    def _move(self, new: BreakerState, now: float, reason: str) -> None:
        self._transitions.append(Transition(self._state, new, now, reason))
        self._state = new
