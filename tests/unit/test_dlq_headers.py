"""The dead-letter header builder carries the redrive count of a redriven message."""

from __future__ import annotations

from typing import Any

from streams.core import deadletter
from streams.core.models import Reason, Rejection


class FakeRecord:
    def __init__(self, headers: Any) -> None:
        self._headers = headers

    def partition(self) -> int:
        return 2

    def offset(self) -> int:
        return 41

    def key(self) -> bytes:
        return b"svc"

    def value(self) -> bytes:
        return b"{not json"

    def headers(self) -> Any:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_764_000_000_000)


REJECTION = Rejection(Reason.MALFORMED_JSON, "bad json")


def test_a_record_never_redriven_gets_no_redrive_header() -> None:
    for headers in (None, [], [("ce_id", b"1")]):
        out = dict(deadletter.headers(REJECTION, "events", FakeRecord(headers)))
        assert deadletter.REDRIVE_HEADER not in out
        assert out["dlq.origin.offset"] == b"41" and out["dlq.origin.partition"] == b"2"


def test_the_redrive_count_travels_onto_the_new_dead_letter_message() -> None:
    record = FakeRecord([("ce_id", b"1"), ("dlq.redrive", b"3")])
    out = deadletter.headers(REJECTION, "events", record)
    assert ("dlq.redrive", b"3") in out
    assert [name for name, _ in out].count("dlq.redrive") == 1


def test_a_text_header_value_is_encoded_and_a_null_one_ignored() -> None:
    assert ("dlq.redrive", b"2") in deadletter.headers(
        REJECTION, "events", FakeRecord([("dlq.redrive", "2")]))
    out = dict(deadletter.headers(REJECTION, "events", FakeRecord([("dlq.redrive", None)])))
    assert "dlq.redrive" not in out
