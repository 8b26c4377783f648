"""Keeps each agent running inside the worker: one agent's fault does not stop the others.

mode's default for a crashed service is a poison pill: the crash climbs to the root and
the whole worker exits, so a sink that cannot write would stop the batcher too. Each
agent therefore runs under an ``AgentSupervisor`` which mode tells of its crashes (it is
the ``supervisor`` of the agent and of its FetchLoop, and mode calls only ``wakeup`` on
that). The supervisor stops what is left of the agent, waits (1 s doubling to 60 s, with
jitter; back to 1 s once the agent has run for ``HEALTHY_AFTER_S``) and starts a fresh
one, which joins its consumer group again and goes on from the committed offsets: the
same recovery as a restarted process, inside the process.

What still ends the worker: a failure before it is up (bad settings, the database or
broker unreachable at start, an agent that cannot start the first time), so that a
broken deployment fails at once with one line instead of restarting in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from mode import Service
from mode.types import SupervisorStrategyT

from agents import web
from agents.service import AgentService
from streams.adapters import metrics
from streams.core.retry import restart_delay

log = structlog.get_logger(__name__)

#: An agent that ran this long before failing starts its backoff afresh.
HEALTHY_AFTER_S = 300.0

Build = Callable[..., AgentService]


class AgentSupervisor(Service):
    def __init__(self, name: str, build: Build, *,
                 rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.build = build
        self.rand = rand
        self.clock = clock
        self.restarts = 0
        self.failures = 0
        self.last_error: str | None = None
        self.running = False
        self._since = clock()
        self._woken = asyncio.Event()
        # Built now, so that a bad setting it reads stops the worker before it starts.
        self.agent = self._new()
        self._restarts = metrics.AGENT_RESTARTS.labels(name)
        self._up = metrics.AGENT_UP.labels(name)
        self._logged: set[str] = set()

    @property
    def label(self) -> str:
        return f"AgentSupervisor({self.name})"

    def _new(self) -> AgentService:
        agent = self.build(loop=self.loop, beacon=self.beacon)
        # mode calls only ``wakeup()`` on a supervisor.
        agent.supervisor = cast(SupervisorStrategyT, self)
        return agent

    def wakeup(self) -> None:
        """Called by mode when the agent or its FetchLoop crashed."""
        self._woken.set()

    async def on_start(self) -> None:
        web.check(f"agent:{self.name}", self._probe)
        web.report(f"agent:{self.name}", self._details)
        # The first start is part of the worker's start-up: failing it ends the worker.
        await self.agent.start()
        self._running()

    async def on_stop(self) -> None:
        await self.agent.stop()

    def _running(self) -> None:
        self.running = True
        self._since = self.clock()
        self._up.set(1)

    @Service.task
    async def _supervise(self) -> None:
        while not self.should_stop:
            await self._woken.wait()
            self._woken.clear()
            if self.should_stop or not self._crashed_agent():
                continue
            await self._restart(self._why())

    def _services(self) -> list[Service]:
        """The agent and, once it has one, its FetchLoop."""
        fetch = self.agent.fetch
        return [self.agent] if fetch is None else [self.agent, fetch]

    def _crashed_agent(self) -> bool:
        return any(service.crashed for service in self._services())

    def _why(self) -> BaseException | None:
        for service in self._services():
            if service.crash_reason is not None:
                return service.crash_reason
        return None

    async def _restart(self, reason: BaseException | None) -> None:
        """Stop what is left, wait, start anew; again until a start succeeds."""
        while not self.should_stop:
            self.running = False
            self._up.set(0)
            if self.clock() - self._since >= HEALTHY_AFTER_S:
                self.failures = 0
            self.failures += 1
            self.restarts += 1
            self._restarts.inc()
            self._note(reason)
            # Whatever state it was left in: stopping must not hang or fail the restart.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.agent.stop(), timeout=30)
            delay = restart_delay(self.failures, self.rand())
            log.info("agent.restarting", agent=self.name, in_s=round(delay, 1),
                     restarts=self.restarts)
            await self.sleep(delay)
            if self.should_stop:
                return
            self.agent = self._new()
            try:
                await self.agent.start()
            except Exception as exc:  # noqa: BLE001 - counted and retried like a crash
                reason = exc
                continue
            self._running()
            log.info("agent.restarted", agent=self.name, restarts=self.restarts)
            return

    def _note(self, reason: BaseException | None) -> None:
        """Log a failure the first time it is seen; after that it is only counted."""
        text = f"{type(reason).__name__}: {reason}" if reason is not None else "crashed"
        self.last_error = text
        if text in self._logged:
            return
        self._logged.add(text)
        log.error("agent.failed", agent=self.name, error=text, restarts=self.restarts,
                  exc_info=reason)

    async def _probe(self) -> tuple[bool, str]:
        if self.running and not self._crashed_agent():
            return True, "running"
        return False, f"restarting after: {self.last_error}"

    def _details(self) -> dict[str, object]:
        return {"running": self.running, "restarts": self.restarts,
                "last_error": self.last_error}


class Agents(Service):
    """Every agent's supervisor: started one after the other, as the worker starts up,
    and stopped all at once. A stopping agent may wait on a broker or database that is
    away (each wait is bounded); one after the other, the waits would add up."""

    def __init__(self, supervisors: list[AgentSupervisor], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supervisors = supervisors
        for supervisor in supervisors:
            self.add_dependency(supervisor)

    async def on_stop(self) -> None:
        await asyncio.gather(*(supervisor.stop() for supervisor in self.supervisors))
