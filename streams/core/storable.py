"""What PostgreSQL can store, checked before a record goes anywhere near it.

Text and jsonb cannot hold U+0000; integer columns have their ranges. Records on topics
that anyone can write are checked here, so that they are refused with a reason instead of
failing a write later.
"""

from __future__ import annotations

import uuid

import msgspec

from streams.core.models import AnalysisRequest, Reason, Rejection

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def nul_path(tree: object) -> str | None:
    """Dotted path of the first string or member name holding U+0000 in a decoded JSON
    document (``""`` for a bare string), or None."""
    stack: list[tuple[object, str]] = [(tree, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return path
        elif isinstance(node, dict):
            for name, child in node.items():
                inner = f"{path}.{name}" if path else str(name)
                if isinstance(name, str) and "\x00" in name:
                    return inner
                stack.append((child, inner))
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
    return None


def request_problem(request: AnalysisRequest) -> Rejection | None:
    """Why ``request`` (decoded, so typed) cannot be analysed and stored, or None."""
    try:
        uuid.UUID(request.batch_id)
    except ValueError:
        return Rejection(Reason.INVALID_VALUE, "batch_id must be a UUID", "batch_id")
    for name, value, high in (("partition", request.partition, INT32_MAX),
                              ("event_count", request.event_count, INT32_MAX),
                              ("first_offset", request.first_offset, INT64_MAX),
                              ("last_offset", request.last_offset, INT64_MAX)):
        if not 0 <= value <= high:
            return Rejection(Reason.INVALID_VALUE, f"{name} must lie in 0..{high}", name)
    path = nul_path(msgspec.to_builtins(request))
    if path is not None:
        return Rejection(Reason.NUL_CHARACTER, f"{path} contains a NUL character", path)
    return None
