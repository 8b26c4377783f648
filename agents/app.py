"""Build the Faust app from settings: one app, every agent, one worker process."""

from __future__ import annotations

from collections.abc import Callable

import faust
from faust.app.base import BootStrategy

from agents import broker, lag, web
from agents.registry import Agent
from agents.service import AgentService
from agents.supervisor import Agents, AgentSupervisor
from streams.config import Settings


def _builder(settings: Settings, agent: Agent) -> Callable[..., AgentService]:
    """What the agent's supervisor calls for each fresh instance."""
    service = agent.load()
    return lambda **kwargs: service(settings, agent, **kwargs)


def create_app(settings: Settings, agents: list[Agent]) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        web_port=settings.web_port,
        web_enabled=settings.web_enabled,
        topic_allow_declare=False,
    )
    app.add_dependency(Agents([
        AgentSupervisor(agent.name, _builder(settings, agent), loop=app.loop, beacon=app.beacon)
        for agent in agents], loop=app.loop, beacon=app.beacon))
    broker.install(app, settings)
    # Faust hosts the process: services, signals, the web server. The agents consume and
    # produce through clients of their own, so Faust's Kafka consumer and producer stay
    # off: idle, they still joined a group of their own, and in a broker outage their
    # shutdown hung (aiokafka's fetcher re-raises the cancellation of its retry sleep
    # while closing, and mode then waits for a thread that has died).
    app.boot_strategy = BootStrategy(app, enable_kafka=False)
    lag.install(app, settings)
    web.install(app)
    return app
