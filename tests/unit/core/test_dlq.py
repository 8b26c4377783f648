"""The pure parts of `streamsight dlq`: reading headers, choosing messages, the redrive
count, time and position arguments."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.core import dlq
from streams.errors import ConfigError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def message(partition: int = 0, offset: int = 0, at_ms: int = NOW_MS, *,
            key: bytes | None = b"svc", value: bytes | None = b"{not json",
            **headers: str) -> dlq.DeadLetter:
    base = {"dlq.reason": "malformed_json", "dlq.origin.topic": "events",
            "dlq.origin.partition": "1", "dlq.origin.offset": "41",
            "dlq.origin.timestamp": str(NOW_MS - 60_000)}
    base.update({k.replace("_", "."): v for k, v in headers.items()})
    return dlq.from_message(partition, offset, at_ms, key, value,
                            [(k, v.encode()) for k, v in base.items()])


def test_headers_are_read_into_fields() -> None:
    m = message(2, 7, dlq_error="bad", dlq_field="timestamp")
    assert (m.position, m.reason, m.error, m.field) == ("2:7", "malformed_json", "bad",
                                                        "timestamp")
    assert (m.origin_topic, m.origin_partition, m.origin_offset) == ("events", 1, 41)
    assert m.origin_timestamp_ms == NOW_MS - 60_000
    assert m.redrive == 0 and m.attempts is None


def test_missing_or_unreadable_headers_do_not_fail() -> None:
    m = dlq.from_message(0, 1, -1, None, None, None)
    assert (m.reason, m.origin_topic, m.origin_offset, m.redrive) == ("unknown", None, None, 0)
    assert message(dlq_redrive="many").redrive == 0
    assert dlq.from_message(0, 1, 5, None, None, [("dlq.reason", None)]).reason == "unknown"
    assert dlq.iso(-1) is None


def test_json_keeps_text_values_and_base64_for_other_bytes() -> None:
    text = message().to_json()
    assert (text["value"], text["value_encoding"]) == ("{not json", "utf-8")
    assert text["origin"] == {"topic": "events", "partition": 1, "offset": 41,
                              "timestamp": "2026-11-25T11:59:00.000+00:00"}
    binary = message(value=b"\xff\x00").to_json()
    assert (binary["value"], binary["value_encoding"]) == ("/wA=", "base64")
    assert message(value=None).to_json()["value"] is None


def test_redrive_goes_to_the_origin_with_the_count_raised() -> None:
    out = dlq.outgoing(message(key=b"k", value=b"v"))
    assert out is not None
    assert (out.topic, out.partition, out.key, out.value) == ("events", 1, b"k", b"v")
    assert out.headers == [("dlq.redrive", b"1")]
    again = dlq.outgoing(message(dlq_redrive="2"))
    assert again is not None and again.headers == [("dlq.redrive", b"3")]


def test_a_message_without_an_origin_topic_cannot_be_redriven() -> None:
    assert dlq.outgoing(dlq.from_message(0, 0, 0, b"k", b"v", [("dlq.reason", b"empty")])) is None


def test_ai_failures_have_no_origin_partition_and_let_the_key_choose() -> None:
    m = dlq.from_message(0, 3, NOW_MS, b"svc", b"{}", [
        ("dlq.reason", b"ai_failed"), ("dlq.origin.topic", b"analysis-requests"),
        ("dlq.attempts", b"5"), ("dlq.batch_id", b"b-1")])
    out = dlq.outgoing(m)
    assert out is not None and (out.topic, out.partition) == ("analysis-requests", None)
    assert (m.attempts, m.batch_id) == (5, "b-1")


def test_every_criterion_of_a_selection_must_hold() -> None:
    old = message(0, 1, NOW_MS - 3_600_000)
    new = message(1, 2, NOW_MS, dlq_reason="empty")
    again = message(1, 3, NOW_MS, dlq_redrive="1")
    other = message(2, 4, NOW_MS, dlq_origin_topic="analysis-requests")
    everything = [old, new, again, other]

    def chosen(**kwargs: object) -> list[str]:
        selection = dlq.selection(now=NOW, **kwargs)  # type: ignore[arg-type]
        return [m.position for m in everything if selection.matches(m)]

    assert chosen() == ["0:1", "1:2", "1:3", "2:4"]
    assert chosen(reasons=["empty"]) == ["1:2"]
    assert chosen(reasons=["empty", "malformed_json"]) == ["0:1", "1:2", "1:3", "2:4"]
    assert chosen(origin_topics=["analysis-requests"]) == ["2:4"]
    assert chosen(since="30m") == ["1:2", "1:3", "2:4"]
    assert chosen(until="30m") == ["0:1"]
    assert chosen(redriven=0) == ["0:1", "1:2", "2:4"]
    assert chosen(redriven=1) == ["1:3"]
    assert chosen(positions=["1:3", "0:1"]) == ["0:1", "1:3"]
    assert chosen(positions=["0:1"], reasons=["empty"]) == []
    assert dlq.selection(now=NOW).everything
    assert not dlq.selection(redriven=0, now=NOW).everything


def test_ordered_is_oldest_first_and_limited() -> None:
    a, b, c = message(1, 5, NOW_MS), message(0, 9, NOW_MS - 10), message(0, 2, NOW_MS)
    assert [m.position for m in dlq.ordered([a, b, c])] == ["0:9", "0:2", "1:5"]
    assert [m.position for m in dlq.ordered([a, b, c], limit=2)] == ["0:9", "0:2"]


def test_counts_by_reason_and_origin() -> None:
    counts = dlq.count([message(), message(dlq_reason="empty"),
                        dlq.from_message(0, 0, 0, None, None, [])])
    assert counts.to_json() == {
        "total": 3,
        "by_reason": {"malformed_json": 1, "empty": 1, "unknown": 1},
        "by_origin_topic": {"events": 2, "(unknown)": 1},
    }


def test_positions() -> None:
    assert dlq.parse_position("3:17") == (3, 17)
    assert dlq.parse_position(" 0:0 ") == (0, 0)
    for bad in ("3", "3:", ":4", "a:1", "1:-2", "1:2:3"):
        with pytest.raises(ConfigError, match="partition:offset"):
            dlq.parse_position(bad)


def test_previews_are_one_short_line() -> None:
    assert dlq.preview(None) == "(null)" and dlq.preview(b"") == "(empty)"
    assert dlq.preview(b"a\nb") == "a\\nb"
    long = dlq.preview(b"x" * 500, width=20)
    assert len(long) == 20 and long.endswith("…")
