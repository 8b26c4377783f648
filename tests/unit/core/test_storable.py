"""What PostgreSQL can store: analysis requests from a topic anyone can write."""

from __future__ import annotations

import msgspec
import pytest

from streams.core.models import AnalysisRequest, Reason
from streams.core.storable import INT32_MAX, nul_path, request_problem
from tests.unit.core.test_analysis import digest, request

BATCH_ID = "5f0c4b7e-2a51-4c3e-9d0b-6f1e8a2b3c4d"


def good() -> AnalysisRequest:
    return msgspec.structs.replace(request(digest()), batch_id=BATCH_ID)


def test_a_batchers_request_passes() -> None:
    assert request_problem(good()) is None


@pytest.mark.parametrize(("changes", "reason", "field"), [
    ({"batch_id": "b1"}, Reason.INVALID_VALUE, "batch_id"),
    ({"partition": INT32_MAX + 1}, Reason.INVALID_VALUE, "partition"),
    ({"partition": -1}, Reason.INVALID_VALUE, "partition"),
    ({"event_count": 2**40}, Reason.INVALID_VALUE, "event_count"),
    ({"last_offset": 2**63}, Reason.INVALID_VALUE, "last_offset"),
    ({"key": "check\x00out"}, Reason.NUL_CHARACTER, "key"),
    ({"event_ids": ["e1", "e\x00"]}, Reason.NUL_CHARACTER, "event_ids[1]"),
])
def test_what_a_table_cannot_hold_is_named(changes: dict[str, object], reason: Reason,
                                            field: str) -> None:
    problem = request_problem(msgspec.structs.replace(good(), **changes))

    assert problem is not None
    assert (problem.reason, problem.field) == (reason, field)
    assert field in problem.message


def test_a_nul_in_the_digest_is_found_by_its_path() -> None:
    tainted = msgspec.structs.replace(digest(), routes={"/a\x00": 3})

    problem = request_problem(msgspec.structs.replace(good(), digest=tainted))

    assert problem is not None
    assert problem.field == "digest.routes./a\x00"


def test_nul_path_walks_names_values_and_lists() -> None:
    assert nul_path({"a": [1, "x", {"b": "\x00"}]}) == "a[2].b"
    assert nul_path({"a\x00": 1}) == "a\x00"
    assert nul_path("\x00") == ""
    assert nul_path({"a": ["\\u0000", 1.5, None]}) is None
