"""The worker's HTTP views (Faust's web server): metrics and health.

- ``/metrics``: Prometheus' text format.
- ``/health/live``: 200 while the process runs (a liveness probe restarts it otherwise).
- ``/health/ready``: 503 until every agent's consumer has its share of partitions and
  the database answers; 200 after (a readiness probe holds traffic and start order).
- ``/health``: a short summary, 200 while live.
- ``/health/detailed``: every component's state as JSON (Kafka, PostgreSQL, AI, lag,
  uptime, memory).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from streams.adapters.metrics import exposition

#: Components that report on themselves in /health/detailed, by name.
DETAILS: dict[str, Callable[[], dict[str, object]]] = {}
#: What must hold for the worker to be ready, by name: each answers (ok, detail).
CHECKS: dict[str, Callable[[], Awaitable[tuple[bool, str]]]] = {}
#: Longest a readiness check may take before it counts as failed.
CHECK_TIMEOUT_S = 3.0
_STARTED = time.monotonic()


def report(name: str, details: Callable[[], dict[str, object]]) -> None:
    """Let a component show its state in /health/detailed."""
    DETAILS[name] = details


def check(name: str, probe: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
    """Make readiness depend on ``probe``."""
    CHECKS[name] = probe


async def readiness() -> tuple[bool, dict[str, dict[str, object]]]:
    names = sorted(CHECKS)
    results = await asyncio.gather(*(_run(CHECKS[name]) for name in names))
    checks = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in zip(
        names, results, strict=True)}
    return bool(checks) and all(ok for ok, _ in results), checks


async def _run(probe: Callable[[], Awaitable[tuple[bool, str]]]) -> tuple[bool, str]:
    try:
        return await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
    except TimeoutError:
        return False, f"no answer within {CHECK_TIMEOUT_S:.0f}s"
    except Exception as exc:  # noqa: BLE001  # any failure means not ready, with its reason
        return False, f"{type(exc).__name__}: {exc}"


def _memory() -> dict[str, object]:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_kib = None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_kib = int(line.split()[1])
    except OSError:
        pass  # not Linux: the peak is still known
    return {"rss_mib": round(rss_kib / 1024, 1) if rss_kib else None,
            "peak_rss_mib": round(peak_kib / 1024, 1)}


def install(app: faust.App) -> None:
    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # Prometheus' text format 0.0.4; aiohttp adds the charset itself.
        return web.bytes(exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health/live")
    async def live(web: Any, request: Any) -> Any:
        return web.json({"status": "live"})

    @app.page("/health/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok, checks = await readiness()
        return web.json({"status": "ready" if ok else "not ready", "checks": checks},
                        status=200 if ok else 503)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        ok, _checks = await readiness()
        return web.json({**_summary(ok), "components": sorted(DETAILS)})

    @app.page("/health/detailed")
    async def detailed(web: Any, request: Any) -> Any:
        ok, checks = await readiness()
        return web.json({
            **_summary(ok),
            "checks": checks,
            "memory": _memory(),
            "components": {name: details() for name, details in sorted(DETAILS.items())},
        })


def _summary(ready: bool) -> dict[str, object]:
    return {"status": "live", "ready": ready,
            "uptime_s": round(time.monotonic() - _STARTED, 1)}
