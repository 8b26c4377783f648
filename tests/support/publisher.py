"""A publisher for handler tests that keeps what it was given instead of sending it."""

from __future__ import annotations

from collections.abc import Iterable

from streams.adapters.publish import Send


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[Send] = []

    async def publish(self, messages: Iterable[Send]) -> None:
        self.sent.extend(messages)

    def topics(self) -> list[str]:
        return [m.topic for m in self.sent]

    def headers(self, topic: str) -> list[dict[str, bytes]]:
        return [dict(m.headers or ()) for m in self.sent if m.topic == topic]
