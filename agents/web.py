"""The worker's HTTP views (Faust's web server)."""

from __future__ import annotations

from typing import Any

import faust

from streams.adapters.metrics import exposition


def install(app: faust.App) -> None:
    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # Prometheus' text format 0.0.4; aiohttp adds the charset itself.
        return web.bytes(exposition(), content_type="text/plain; version=0.0.4")
