"""The circuit breaker state machine, on a fixed clock."""

from __future__ import annotations

import pytest

from streams.core.breaker import BreakerState, CircuitBreaker, Transition

T0 = 1_780_000_000.0


def state(breaker: CircuitBreaker) -> BreakerState:
    # Through a call, so mypy does not narrow ``breaker.state`` across the state changes.
    return breaker.state


def opened(now: float = T0) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=5, cooldown_seconds=600.0)
    for _ in range(5):
        breaker.failure(now)
    return breaker


def test_closed_allows_every_call() -> None:
    breaker = CircuitBreaker(failure_threshold=5, cooldown_seconds=600.0)
    assert state(breaker) is BreakerState.CLOSED
    assert [breaker.allow(T0) for _ in range(10)] == [0.0] * 10
    assert breaker.opened_at is None


def test_five_consecutive_failures_open_it() -> None:
    breaker = CircuitBreaker(failure_threshold=5, cooldown_seconds=600.0)
    for _ in range(4):
        breaker.failure(T0)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 4
    breaker.failure(T0 + 1.0)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.opened_at == T0 + 1.0


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=5, cooldown_seconds=600.0)
    for _ in range(4):
        breaker.failure(T0)
    breaker.success(T0)
    assert breaker.consecutive_failures == 0
    for _ in range(4):
        breaker.failure(T0)
    assert state(breaker) is BreakerState.CLOSED


def test_open_answers_the_time_left_in_the_cooldown() -> None:
    breaker = opened()
    assert breaker.allow(T0) == pytest.approx(600.0)
    assert breaker.allow(T0 + 450.0) == pytest.approx(150.0)
    assert state(breaker) is BreakerState.OPEN
    # Late failures of calls already in flight do not extend the cooldown.
    breaker.failure(T0 + 100.0)
    assert breaker.allow(T0 + 450.0) == pytest.approx(150.0)


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = opened()
    assert breaker.allow(T0 + 600.0) == 0.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow(T0 + 600.0) == breaker.probe_wait_seconds
    assert breaker.allow(T0 + 700.0) == breaker.probe_wait_seconds


def test_probe_success_closes() -> None:
    breaker = opened()
    assert breaker.allow(T0 + 601.0) == 0.0
    breaker.success(T0 + 602.0)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.opened_at is None
    assert breaker.consecutive_failures == 0
    assert breaker.allow(T0 + 602.0) == 0.0
    assert breaker.allow(T0 + 602.0) == 0.0


def test_probe_failure_reopens_for_a_full_cooldown() -> None:
    breaker = opened()
    assert breaker.allow(T0 + 600.0) == 0.0
    breaker.failure(T0 + 630.0)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.opened_at == T0 + 630.0
    assert breaker.allow(T0 + 630.0) == pytest.approx(600.0)
    assert breaker.allow(T0 + 1230.0) == 0.0
    assert state(breaker) is BreakerState.HALF_OPEN


def test_a_released_probe_lets_the_next_caller_probe() -> None:
    breaker = opened()
    assert breaker.allow(T0 + 600.0) == 0.0
    breaker.release()
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow(T0 + 601.0) == 0.0
    assert breaker.allow(T0 + 601.0) > 0.0


def test_late_success_while_open_does_not_close() -> None:
    breaker = opened()
    breaker.success(T0 + 10.0)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.allow(T0 + 10.0) == pytest.approx(590.0)


def test_every_change_is_recorded_once() -> None:
    breaker = opened()
    breaker.allow(T0 + 600.0)
    breaker.failure(T0 + 601.0)
    breaker.allow(T0 + 1201.0)
    breaker.success(T0 + 1202.0)
    assert breaker.drain_transitions() == [
        Transition(BreakerState.CLOSED, BreakerState.OPEN, T0, "5 consecutive failures"),
        Transition(BreakerState.OPEN, BreakerState.HALF_OPEN, T0 + 600.0, "cooldown elapsed"),
        Transition(BreakerState.HALF_OPEN, BreakerState.OPEN, T0 + 601.0, "probe failed"),
        Transition(BreakerState.OPEN, BreakerState.HALF_OPEN, T0 + 1201.0, "cooldown elapsed"),
        Transition(BreakerState.HALF_OPEN, BreakerState.CLOSED, T0 + 1202.0, "probe succeeded"),
    ]
    assert breaker.drain_transitions() == []
    breaker.allow(T0 + 1203.0)
    breaker.success(T0 + 1203.0)
    assert breaker.drain_transitions() == []


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0, cooldown_seconds=600.0)
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=5, cooldown_seconds=0.0)
