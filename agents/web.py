"""The worker's HTTP views (Faust's web server): metrics, and health as far as built."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faust

from streams.adapters.metrics import exposition

#: Components that report on themselves in /health/detailed, by name.
DETAILS: dict[str, Callable[[], dict[str, object]]] = {}
_STARTED = time.monotonic()


def report(name: str, details: Callable[[], dict[str, object]]) -> None:
    """Let a component show its state in /health/detailed."""
    DETAILS[name] = details


def install(app: faust.App) -> None:
    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # Prometheus' text format 0.0.4; aiohttp adds the charset itself.
        return web.bytes(exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health/detailed")
    async def detailed(web: Any, request: Any) -> Any:
        return web.json({
            "uptime_s": round(time.monotonic() - _STARTED, 1),
            "components": {name: details() for name, details in sorted(DETAILS.items())},
        })
