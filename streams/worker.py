"""Run the Faust worker process (signals, web server, agents) from settings."""

from __future__ import annotations

import asyncio

import faust
import uvloop

from streams.adapters import logs
from streams.app import create_app
from streams.config import Settings


def run_worker(settings: Settings, agents: list[str] | None) -> None:
    """Block until the worker stops (SIGTERM / SIGINT stop it cleanly)."""
    logs.configure(settings.log_level, settings.log_format)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(settings, agents)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()
