from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from streams.commands.synthetic import TrafficGenerator, source_names
from streams.core.models import Event
from streams.core.rows import is_error
from streams.core.schema import parse

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def _gen(**kwargs: object) -> TrafficGenerator:
    return TrafficGenerator(**{"sources": 5, "seed": 7, "now": lambda: NOW, **kwargs})  # type: ignore[arg-type]


def test_same_seed_same_bytes() -> None:
    assert _gen().batch(500) == _gen().batch(500)
    assert _gen(invalid_ratio=0.3).batch(500) == _gen(invalid_ratio=0.3).batch(500)


def test_different_seeds_differ() -> None:
    assert _gen(seed=1).batch(50) != _gen(seed=2).batch(50)


def test_valid_events_follow_the_envelope() -> None:
    types: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for key, value in _gen().batch(5000):
        event = orjson.loads(value)
        assert key == event["source"].encode()
        assert {"event_id", "event_type", "source", "timestamp", "severity"} <= event.keys()
        ts = datetime.fromisoformat(event["timestamp"])
        assert ts.tzinfo is not None
        assert event["timestamp"].endswith("Z")
        assert 0 <= (NOW - ts).total_seconds() <= 1
        types[event["event_type"]] += 1
        if "http" in event:
            http = event["http"]
            assert http["method"] in {"GET", "POST", "PUT", "DELETE"}
            assert http["duration_ms"] > 0
            statuses[http["status_code"] // 100] += 1
        if event["event_type"] == "error":
            assert event["error"]["type"]
            assert event["severity"] == "error"
    assert types.most_common(1)[0][0] == "http_request"
    assert {"error", "user_signin", "ai_call"} <= types.keys()
    assert statuses[2] > 0.8 * sum(statuses.values())
    assert statuses[4] > 0 and statuses[5] > 0


def test_event_ids_are_unique_uuid4() -> None:
    ids = [orjson.loads(v)["event_id"] for _, v in _gen().batch(2000)]
    assert len(set(ids)) == len(ids)
    assert all(i[14] == "4" for i in ids)


def test_average_size_is_about_250_bytes() -> None:
    sizes = [len(v) for _, v in _gen(sources=20).batch(5000)]
    assert 220 <= sum(sizes) / len(sizes) <= 300


def test_every_source_is_used() -> None:
    gen = _gen(sources=20)
    keys = Counter(k for k, _ in gen.batch(5000))
    assert set(keys) == {s.encode() for s in gen.sources}
    assert len(gen.sources) == 20


def test_source_names_beyond_the_builtin_list_are_distinct() -> None:
    names = source_names(50)
    assert len(set(names)) == 50
    assert names[0] == "checkout-api"


def _is_valid(key: bytes | None, value: bytes) -> bool:
    if key is None or not value:
        return False
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if not {"event_id", "event_type", "source", "timestamp"} <= event.keys():
        return False
    if not all(isinstance(event[f], str) for f in ("event_type", "source", "timestamp")):
        return False
    if "http" in event and not isinstance(event["http"], dict):
        return False
    return datetime.fromisoformat(event["timestamp"]) <= NOW


def test_invalid_ratio_is_roughly_honoured() -> None:
    gen = _gen(invalid_ratio=0.2)
    messages = gen.batch(5000)
    invalid = sum(not _is_valid(k, v) for k, v in messages)
    assert invalid == sum(gen.invalid_counts.values())
    assert 0.17 < invalid / len(messages) < 0.23
    assert all(n > 0 for n in gen.invalid_counts.values())
    assert any(k is None for k, _ in messages)
    assert any(v == b"" for _, v in messages)


def test_no_invalid_messages_by_default() -> None:
    assert all(_is_valid(k, v) for k, v in _gen().batch(3000))


@pytest.mark.parametrize("kwargs", [{"sources": 0}, {"invalid_ratio": 1.5}])
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _gen(**kwargs)


def test_the_error_share_stays_under_the_alerts_and_the_analyzers_five_percent() -> None:
    # README: about 3.8% of the synthetic events report an error, so that the project's
    # own traffic does not fire StreamsightErrorRateHigh (> 5%).
    events = [parse(key, value, None, now=NOW) for key, value in _gen().batch(20_000)]
    assert all(isinstance(e, Event) for e in events)
    share = sum(is_error(e) for e in events if isinstance(e, Event)) / len(events)
    assert 0.03 < share < 0.05
