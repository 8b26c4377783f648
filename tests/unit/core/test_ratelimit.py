"""Token buckets and the request/token budget, on a fixed clock."""

from __future__ import annotations

import pytest

from streams.core.ratelimit import Budget, TokenBucket, bucket_state

T0 = 1_780_000_000.0  # epoch seconds: rounding at this magnitude is what production sees


def test_starts_full_and_grants_until_empty() -> None:
    bucket = TokenBucket(capacity=3, refill_per_second=1.0, updated=T0)
    assert [bucket.take(1, T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, T0) == pytest.approx(1.0)


def test_refills_over_time_up_to_capacity() -> None:
    bucket = TokenBucket(capacity=10, refill_per_second=2.0, tokens=0.0, updated=T0)
    assert bucket.take(4, T0 + 1.0) == pytest.approx(1.0)  # 2 there, 2 more in 1 s
    assert bucket.take(4, T0 + 2.0) == 0.0
    assert bucket.tokens == pytest.approx(0.0)
    # An hour idle refills to capacity, not beyond.
    assert bucket.take(10, T0 + 3600.0) == 0.0
    assert bucket.take(1, T0 + 3600.0) == pytest.approx(0.5)


def test_a_refused_take_deducts_nothing() -> None:
    bucket = TokenBucket(capacity=10, refill_per_second=1.0, tokens=5.0, updated=T0)
    assert bucket.take(8, T0) == pytest.approx(3.0)
    assert bucket.tokens == pytest.approx(5.0)
    assert bucket.take(5, T0) == 0.0


def test_waiting_exactly_the_answer_is_enough() -> None:
    bucket = TokenBucket(capacity=90_000, refill_per_second=1500.0, tokens=0.0, updated=T0)
    now = T0 + 0.123
    wait = bucket.take(4321, now)
    assert wait > 0
    assert bucket.take(4321, now + wait) == 0.0


def test_oversize_amount_is_granted_when_full_and_leaves_a_debt() -> None:
    bucket = TokenBucket(capacity=100, refill_per_second=10.0, tokens=50.0, updated=T0)
    # 250 can never fit: it waits for a full bucket, then takes all of it and more.
    assert bucket.take(250, T0) == pytest.approx(5.0)
    assert bucket.take(250, T0 + 5.0) == 0.0
    assert bucket.tokens == pytest.approx(-150.0)
    # The debt is paid back at the refill rate before anyone else gets a token.
    assert bucket.take(1, T0 + 5.0) == pytest.approx(15.1)


def test_refund_and_charge() -> None:
    bucket = TokenBucket(capacity=100, refill_per_second=1.0, updated=T0)
    assert bucket.take(80, T0) == 0.0
    bucket.refund(30, T0)
    assert bucket.tokens == pytest.approx(50.0)
    bucket.refund(500, T0 + 1.0)
    assert bucket.tokens == 100.0  # never above capacity
    bucket.charge(150, T0 + 1.0)
    assert bucket.tokens == pytest.approx(-50.0)


def test_clock_going_backwards_refills_nothing_and_keeps_the_latest_time() -> None:
    bucket = TokenBucket(capacity=10, refill_per_second=1.0, tokens=0.0, updated=T0)
    assert bucket.take(1, T0 - 5.0) == pytest.approx(1.0)
    assert bucket.updated == T0
    assert bucket.take(1, T0 + 1.0) == 0.0


def test_invalid_bucket_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(capacity=0, refill_per_second=1.0)
    with pytest.raises(ValueError):
        TokenBucket(capacity=1, refill_per_second=0.0)


@pytest.mark.parametrize(
    ("tokens", "elapsed", "amount"),
    [(0.0, 0.0, 1.0), (5.0, 2.5, 7.0), (-40.0, 3.0, 1.0), (10.0, 100.0, 10.0),
     (3.0, 0.0, 250.0), (100.0, 0.0, 250.0), (7.0, -2.0, 8.0)],
)
def test_bucket_state_is_what_the_bucket_does(tokens: float, elapsed: float, amount: float) -> None:
    # The SQL-backed global budget mirrors bucket_state; the bucket must not diverge from it.
    bucket = TokenBucket(capacity=100, refill_per_second=4.0, tokens=tokens, updated=T0)
    expected_tokens, expected_wait = bucket_state(tokens, T0, 100, 4.0, T0 + elapsed, amount)
    assert bucket.take(amount, T0 + elapsed) == expected_wait
    assert bucket.tokens == expected_tokens


def test_bucket_state_values() -> None:
    assert bucket_state(2.0, 10.0, 10.0, 1.0, 13.0, 4.0) == (1.0, 0.0)
    assert bucket_state(2.0, 10.0, 10.0, 1.0, 11.0, 4.0) == (3.0, 1.0)
    assert bucket_state(10.0, 10.0, 10.0, 1.0, 10.0, 25.0) == (-15.0, 0.0)


def test_budget_reserves_from_both_buckets_or_neither() -> None:
    budget = Budget(requests_per_minute=60, tokens_per_minute=600)
    budget.requests.updated = budget.tokens.updated = T0
    assert budget.reserve(500, T0) == 0.0
    assert budget.requests.tokens == pytest.approx(59.0)
    assert budget.tokens.tokens == pytest.approx(100.0)
    # Tokens are short (100 of 400, 10/s): wait 30 s, and no request slot is taken.
    assert budget.reserve(400, T0) == pytest.approx(30.0)
    assert budget.requests.tokens == pytest.approx(59.0)
    assert budget.tokens.tokens == pytest.approx(100.0)
    assert budget.reserve(400, T0 + 30.0) == 0.0


def test_budget_waits_for_requests_too() -> None:
    budget = Budget(requests_per_minute=2, tokens_per_minute=10_000)
    budget.requests.updated = budget.tokens.updated = T0
    assert budget.reserve(10, T0) == 0.0
    assert budget.reserve(10, T0) == 0.0
    assert budget.reserve(10, T0) == pytest.approx(30.0)
    assert budget.tokens.tokens == pytest.approx(9980.0)


def test_settle_refunds_unused_and_charges_overruns() -> None:
    budget = Budget(requests_per_minute=60, tokens_per_minute=1000)
    budget.requests.updated = budget.tokens.updated = T0
    assert budget.reserve(800, T0) == 0.0
    budget.settle(reserved=800, used=300, now=T0)
    assert budget.tokens.tokens == pytest.approx(700.0)
    assert budget.reserve(600, T0) == 0.0
    budget.settle(reserved=600, used=900, now=T0)
    assert budget.tokens.tokens == pytest.approx(-200.0)
    assert budget.reserve(1, T0) == pytest.approx(201 / (1000 / 60))
    assert budget.requests.tokens == pytest.approx(58.0)  # request slots are not refunded
