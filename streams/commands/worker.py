"""Run the Faust worker process (signals, web server, agents) from settings."""

from __future__ import annotations

import asyncio
import gc

import faust
import uvloop

from agents import registry
from agents.app import create_app
from streams.adapters import group_protocol, logs
from streams.adapters.db import migrate_and_apply_policies
from streams.adapters.ports import ensure_free
from streams.config import Settings


def run_worker(settings: Settings, agents: list[str] | None) -> None:
    """Block until the worker stops (SIGTERM / SIGINT stop it cleanly)."""
    logs.configure(settings.log_level, settings.log_format)
    chosen = registry.choose(agents)
    if settings.web_enabled:
        ensure_free(settings.web_port, "WEB_PORT")
    # Before anything asks for an event loop, so that the app's loop is uvloop.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # Every worker brings the schema up to date first; the runner's advisory lock makes
    # that safe when several start at once.
    changes = asyncio.run(migrate_and_apply_policies(
        settings.database_url, settings.db_retention_days, settings.db_compress_after_days))
    log = logs.get_logger(__name__)
    if changes:
        log.info("db.migrated", changes=changes)
    protocol = asyncio.run(group_protocol.resolve(
        settings.consumer_group_protocol, settings.kafka_bootstrap_servers,
        static=settings.worker_id is not None))
    log.info("consumer.group_protocol", protocol=protocol,
             setting=settings.consumer_group_protocol, worker_id=settings.worker_id)
    settings = settings.model_copy(update={"consumer_group_protocol": protocol})
    app = create_app(settings, chosen)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,
    )
    # Faust's start-up spinner writes terminal escapes that would corrupt JSON log lines.
    worker.spinner = None
    # Each fetch allocates objects by the hundred thousand, most of which live until
    # their batch seals: with the default thresholds the collector would run every 700
    # allocations and keep rescanning them (6% of the batcher's time under py-spy).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    worker.execute_from_commandline()
