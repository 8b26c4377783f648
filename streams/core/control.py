"""Commands to the running batchers, carried on the events topic itself.

A command is a message on ``events`` with the source as its key and a
``streamsight.control`` header naming the command. Keyed like the source's events, it
reaches the one worker that holds that source's open batch, in order with the events
(everything produced before it is in the batch it seals), and a replay re-reads it at the
same place, so the batches come out the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HEADER = "streamsight.control"
#: Seal the key's open batch now (reason ``manual``).
SEAL = b"seal"


def command(headers: Sequence[tuple[str, Any]]) -> bytes | None:
    """The control command a message carries, if any."""
    for name, value in headers:
        if name == HEADER:
            return value if isinstance(value, bytes) else str(value).encode()
    return None
