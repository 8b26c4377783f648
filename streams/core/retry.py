"""Retry policy for AI calls: how many attempts, and how long to wait between them.

Only the arithmetic lives here. The project rule is to drive retries with tenacity or
stamina rather than by hand; the analyst adapter is the exception because time spent
waiting for the circuit breaker or the rate budget must not count as an attempt, which
those libraries cannot express. So the adapter runs the attempt loop itself and asks this
policy whether to try again and for how long to back off.

Pure: the random draw is passed in, so tests pin it and production passes
``random.random()``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Doubling stops mattering long before this exponent (the cap wins), and it keeps
# ``2.0 ** n`` from overflowing for absurd attempt numbers.
_MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``.

    ``max_retry_after_seconds`` bounds a server's hint so that a bogus header (a day, a
    year) cannot park a request for ever.
    """

    max_attempts: int
    base_seconds: float = 1.0
    cap_seconds: float = 60.0
    max_retry_after_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_seconds <= 0 or self.cap_seconds <= 0 or self.max_retry_after_seconds < 0:
            raise ValueError("base, cap and max Retry-After must be positive")

    def delay(self, attempt: int, retry_after: float | None, rand: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        Full jitter: ``rand * min(cap, base * 2 ** (attempt - 1))`` with ``rand`` in
        [0, 1). When the server sent ``Retry-After`` (429, 503), wait at least that long,
        clamped to [0, max_retry_after_seconds].
        """
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        if not 0.0 <= rand < 1.0:
            raise ValueError("rand must be in [0, 1)")
        ceiling = min(self.cap_seconds, self.base_seconds * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
        backoff = rand * ceiling
        if retry_after is None:
            return backoff
        return max(backoff, min(max(retry_after, 0.0), self.max_retry_after_seconds))

    def should_retry(self, attempt: int, retryable: bool) -> bool:
        """Whether to make another attempt after attempt number ``attempt`` failed.

        Non-retryable errors (400-class other than 429, invalid requests) fail at once.
        """
        return retryable and attempt < self.max_attempts


def restart_delay(failures: int, rand: float, cap_seconds: float = 60.0) -> float:
    """Seconds before restarting an agent that has failed ``failures`` times in a row.

    Equal jitter (half fixed, half random): 1, 2, 4 ... up to ``cap_seconds``, never less
    than half of that, so that a crash loop cannot spin however the draw falls, and
    workers that failed together do not restart together.
    """
    if failures < 1:
        raise ValueError("failures start at 1")
    if not 0.0 <= rand < 1.0:
        raise ValueError("rand must be in [0, 1)")
    ceiling = min(cap_seconds, 2.0 ** min(failures - 1, _MAX_EXPONENT))
    return ceiling * (0.5 + rand / 2)
