"""Retry policy arithmetic: full jitter, cap, Retry-After, attempt limit."""

from __future__ import annotations

import pytest

from streams.core.retry import RetryPolicy, restart_delay

POLICY = RetryPolicy(max_attempts=5, base_seconds=1.0, cap_seconds=60.0)


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)])
def test_full_jitter_spans_zero_to_the_exponential_ceiling(attempt: int, ceiling: float) -> None:
    assert POLICY.delay(attempt, None, 0.0) == 0.0
    assert POLICY.delay(attempt, None, 0.5) == pytest.approx(ceiling / 2)
    assert POLICY.delay(attempt, None, 0.999999) == pytest.approx(ceiling, rel=1e-5)
    assert POLICY.delay(attempt, None, 0.999999) < ceiling


def test_ceiling_is_capped_even_for_absurd_attempts() -> None:
    assert POLICY.delay(7, None, 0.5) == pytest.approx(30.0)
    assert POLICY.delay(10_000, None, 0.5) == pytest.approx(30.0)


def test_retry_after_is_a_floor() -> None:
    assert POLICY.delay(1, 20.0, 0.5) == 20.0
    assert POLICY.delay(7, 5.0, 0.9) == pytest.approx(54.0)  # jitter already longer
    assert POLICY.delay(1, 0.0, 0.5) == pytest.approx(0.5)
    assert POLICY.delay(1, -3.0, 0.5) == pytest.approx(0.5)


def test_retry_after_is_bounded() -> None:
    assert POLICY.delay(1, 86_400.0, 0.5) == 600.0
    short = RetryPolicy(max_attempts=5, max_retry_after_seconds=120.0)
    assert short.delay(1, 3600.0, 0.0) == 120.0


def test_attempt_limit() -> None:
    assert [POLICY.should_retry(n, True) for n in range(1, 7)] == [
        True, True, True, True, False, False]
    assert not RetryPolicy(max_attempts=1).should_retry(1, True)


def test_non_retryable_fails_at_once() -> None:
    assert not POLICY.should_retry(1, False)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=5, base_seconds=0.0)
    with pytest.raises(ValueError):
        POLICY.delay(0, None, 0.5)
    with pytest.raises(ValueError):
        POLICY.delay(1, None, 1.0)


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 1.0), (2, 2.0), (4, 8.0), (7, 60.0),
                                                   (10_000, 60.0)])
def test_restart_delay_is_between_half_and_all_of_the_ceiling(failures: int,
                                                             ceiling: float) -> None:
    assert restart_delay(failures, 0.0) == ceiling / 2
    assert ceiling / 2 < restart_delay(failures, 0.999) < ceiling


def test_restart_delay_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="failures"):
        restart_delay(0, 0.5)
    with pytest.raises(ValueError, match="rand"):
        restart_delay(1, 1.0)
