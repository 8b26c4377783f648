"""A consumed Kafka message for pure tests, with confluent-kafka's accessor methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Record:
    offset_: int
    key_: bytes | None
    value_: bytes | None
    headers_: list[tuple[str, bytes]] | None = None
    partition_: int = 0
    timestamp_ms: int = 0

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> Any:
        return self.headers_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.timestamp_ms)
