"""Token buckets for the AI budget: requests per minute and tokens per minute.

Pure and synchronous: the caller passes the time (epoch seconds) in and does the waiting.

The arithmetic lives in one function, ``bucket_state``, so that the deployment-wide budget
kept in PostgreSQL computes exactly what the in-process ``TokenBucket`` computes. The rule:

1. Refill: ``level = min(capacity, tokens + max(0, now - updated) * rate)``. A clock that
   reads earlier than ``updated`` (another worker's clock) refills nothing, and the stored
   ``updated`` becomes ``max(updated, now)`` so no interval is ever refilled twice.
2. Need: ``need = min(amount, capacity)``. An amount larger than the capacity could never
   fit, so it is granted once the bucket is full and drives the level negative; later
   callers then wait until the debt has refilled. Over a minute the rate still holds.
3. Grant when ``need - level <= rate * SLACK_SECONDS``: the level becomes ``level - amount``
   and the wait is 0. Otherwise nothing is taken: the level stays at the refilled value
   and the wait is ``(need - level) / rate``.

In SQL, with the bucket row locked (``SELECT ... FOR UPDATE``) and ``now`` in epoch seconds:

    level := least(capacity, tokens + greatest(0, now - updated) * rate);
    need  := least(amount, capacity);
    IF need - level <= rate * 1e-6 THEN tokens := level - amount; wait := 0;
    ELSE tokens := level; wait := (need - level) / rate; END IF;
    updated := greatest(updated, now);
"""

from __future__ import annotations

from dataclasses import dataclass

# Epoch seconds as floats carry about 0.2 microseconds of rounding, so a caller that
# sleeps exactly the returned wait could come back a hair short and wait again for nothing.
SLACK_SECONDS = 1e-6


def bucket_state(
    tokens: float, updated: float, capacity: float, rate: float, now: float, amount: float
) -> tuple[float, float]:
    """One step of a token bucket: ``(new_tokens, wait)`` for taking ``amount`` at ``now``.

    ``wait`` is 0.0 when granted (``new_tokens`` has ``amount`` deducted), else the seconds
    until ``amount`` would be granted (nothing deducted). Store ``max(updated, now)`` as the
    new ``updated`` either way. See the module docstring for the rule.
    """
    level = min(capacity, tokens + max(0.0, now - updated) * rate)
    need = min(amount, capacity)
    shortfall = need - level
    if shortfall <= rate * SLACK_SECONDS:
        return level - amount, 0.0
    return level, shortfall / rate


@dataclass(slots=True)
class TokenBucket:
    """A bucket that holds up to ``capacity`` and refills ``refill_per_second``.

    It starts full unless ``tokens`` says otherwise.
    """

    capacity: float
    refill_per_second: float
    tokens: float | None = None
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.refill_per_second <= 0:
            raise ValueError("capacity and refill_per_second must be positive")
        if self.tokens is None:
            self.tokens = self.capacity

    def _step(self, amount: float, now: float) -> tuple[float, float]:
        assert self.tokens is not None
        return bucket_state(
            self.tokens, self.updated, self.capacity, self.refill_per_second, now, amount
        )

    def _store(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = max(self.updated, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``take(amount, now)`` would be granted; takes nothing."""
        return self._step(amount, now)[1]

    def take(self, amount: float, now: float) -> float:
        """0.0 when ``amount`` is granted (and deducted), else the seconds to wait."""
        tokens, wait = self._step(amount, now)
        self._store(tokens, now)
        return wait

    def refund(self, amount: float, now: float) -> None:
        """Give back tokens that were taken but not used (never above capacity)."""
        tokens, _ = self._step(0.0, now)
        self._store(min(self.capacity, tokens + amount), now)

    def charge(self, amount: float, now: float) -> None:
        """Take tokens unconditionally, going into debt if need be: the call has happened."""
        tokens, _ = self._step(0.0, now)
        self._store(tokens - amount, now)


class Budget:
    """Requests per minute and tokens per minute, reserved together.

    Reserve the estimated tokens of a call before making it, then ``settle`` with the
    tokens the provider reports, so estimates never drift the budget for long.
    """

    def __init__(self, requests_per_minute: float, tokens_per_minute: float) -> None:
        self.requests = TokenBucket(requests_per_minute, requests_per_minute / 60.0)
        self.tokens = TokenBucket(tokens_per_minute, tokens_per_minute / 60.0)

    def reserve(self, tokens: float, now: float) -> float:
        """0.0 when one request and ``tokens`` are reserved, else the seconds to wait.

        Atomic: when either bucket says wait, neither is touched, so a caller waiting for
        tokens does not also hold a request slot that others could use.
        """
        wait = max(self.requests.wait_for(1.0, now), self.tokens.wait_for(tokens, now))
        if wait > 0.0:
            return wait
        self.requests.take(1.0, now)
        self.tokens.take(tokens, now)
        return 0.0

    def settle(self, reserved: float, used: float, now: float) -> None:
        """Correct the token bucket once the call's real usage is known.

        Unused tokens go back; tokens used beyond the reservation are charged, which may
        leave the bucket in debt so that the next callers wait for it. A failed call that
        reached the provider still used its request slot, which is not given back.
        """
        if used < reserved:
            self.tokens.refund(reserved - used, now)
        elif used > reserved:
            self.tokens.charge(used - reserved, now)
