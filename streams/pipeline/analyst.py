"""The analyst: one insight per analysis request, whatever the AI provider does.

``Analyst.analyze`` handles one request: the built-in analyzer answers at once; the
OpenAI analyzer is called under the deployment-wide budget and the circuit breaker,
with backoff between attempts. While the breaker is open the request waits, and that
wait is not an attempt. After the last attempt the request goes to ``dead-letter`` and
an error record to ``errors``. Every outcome is produced with acks=all before
``analyze`` returns, so its offset may be committed after that.

``AnalystHandler`` drives it from a FetchLoop over ``analysis-requests``: requests run
as tasks, at most ``AI_MAX_CONCURRENCY`` calls at a time, off the consumer loop; an
offset is committed once every request below it is done.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from streams import config
from streams.adapters import metrics
from streams.adapters.budget import DailySpend, GlobalBudget
from streams.adapters.openai import CallFailed, CallResult
from streams.adapters.publish import Publisher, Send
from streams.core import analysis, deadletter
from streams.core.breaker import BreakerState, CircuitBreaker
from streams.core.ingest import Record, unprocessable
from streams.core.models import (
    AIUsage,
    Analysis,
    AnalysisRequest,
    Digest,
    ErrorRecord,
    Insight,
    Reason,
    Rejection,
    UsageOutcome,
    insight_id_for,
    usage_id_for,
)
from streams.core.pricing import PRICES, cost_usd
from streams.core.retry import RetryPolicy
from streams.core.storable import request_problem
from streams.errors import DataRejected, PermanentError, RetryableError

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_request = msgspec.json.Decoder(AnalysisRequest).decode

# Provider outages count towards opening the breaker; a provider that answers "no"
# (rate limit, bad request, unusable output) is up, and says so.
_OUTAGES = frozenset({UsageOutcome.SERVER_ERROR, UsageOutcome.TIMEOUT,
                      UsageOutcome.CONNECTION_ERROR})
# Requests a worker holds (waiting for a call slot) before it pauses consumption. A few
# kilobytes each; resuming a paused fetch costs librdkafka about a second, so the bar
# sits well above what a slow provider works through in that time.
MAX_WAITING = 1000
# Longest single sleep while waiting on the breaker or budget: short enough to notice
# shutdown and a probe's verdict promptly.
_MAX_NAP = 5.0


class AIClient(Protocol):
    name: str
    model: str
    max_completion_tokens: int

    def token_estimate(self, request: AnalysisRequest) -> int: ...

    async def call(self, request: AnalysisRequest) -> CallResult: ...


class History(Protocol):
    async def before(self, source: str, until: datetime) -> Sequence[Digest]: ...


class Statuses(Protocol):
    async def set(self, batch_id: str, first_event_at: datetime, status: str) -> None: ...


class Insights(Protocol):
    async def exists(self, batch_id: str, analyzer: str, window_start: datetime) -> bool: ...


class Analyst:
    def __init__(
        self,
        *,
        publisher: Publisher,
        history: History,
        statuses: Statuses,
        ai: AIClient | None,
        budget: GlobalBudget | None,
        spend: DailySpend | None,
        prices: Mapping[str, tuple[float, float]] = PRICES,
        breaker: CircuitBreaker,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        insights: Insights | None = None,
        topics: config.Topics = config.DEFAULT_TOPICS,
    ) -> None:
        self.publisher = publisher
        self.topics = topics
        self.insights = insights
        self.history = history
        self.statuses = statuses
        self.ai = ai
        self.budget = budget
        self.spend = spend
        self.prices = prices
        self.breaker = breaker
        self.policy = policy
        self.clock = clock
        self.sleep = sleep
        self.rand = rand

    @property
    def name(self) -> str:
        return self.ai.name if self.ai is not None else analysis.ANALYZER_VERSION

    async def analyze(self, request: AnalysisRequest, origin: Record | None = None) -> None:
        """Analyse ``request``, read from the message ``origin`` (which a dead-letter copy
        names as its origin, and whose redrive count it keeps)."""
        started = self.clock()
        if self.ai is None:
            history = await self.history.before(request.key, request.first_event_at)
            result = analysis.analyze(request, history)
            await self._publish_insight(request, self.name, result, 0, 0, 0.0,
                                        (self.clock() - started) * 1000, [])
            return
        await self._analyze_with_ai(request, self.ai, origin)

    async def _analyze_with_ai(self, request: AnalysisRequest, ai: AIClient,
                               origin: Record | None) -> None:
        # A redriven, replayed or re-sent request whose insight is stored already: the
        # call would cost money for the same insight id.
        if self.insights is not None and await self.insights.exists(
                request.batch_id, ai.name, request.first_event_at):
            log.info("analyst.already_analysed", batch_id=request.batch_id, analyzer=ai.name)
            return
        reserve = ai.token_estimate(request) + ai.max_completion_tokens
        usage: list[AIUsage] = []
        attempt = 0
        while True:
            await self._wait_for_breaker(request)
            probe = self.breaker.state is BreakerState.HALF_OPEN
            try:
                await self._wait_for_budget(reserve)
                # Last before the call: spend recorded while we waited for the budget counts.
                # Calls already in flight can still overshoot the day's limit by their cost.
                await self._wait_for_spend(request)
                attempt += 1
                request_id = usage_id_for(request.batch_id, ai.name, attempt)
                log.info("ai.call", batch_id=request.batch_id, request_id=request_id,
                         attempt=attempt, model=ai.model)
                try:
                    result = await ai.call(request)
                except CallFailed as failed:
                    usage.append(self._usage(request, ai, attempt, failed.outcome,
                                             failed.prompt_tokens, failed.completion_tokens,
                                             failed.latency_ms, str(failed)))
                    await self._settle_budget(reserve,
                                              failed.prompt_tokens + failed.completion_tokens)
                    await self._add_spend(usage[-1].cost_usd)
                    self._verdict(failed.outcome in _OUTAGES)
                    probe = False
                    log.warning("ai.failed", batch_id=request.batch_id,
                                request_id=request_id, attempt=attempt,
                                outcome=failed.outcome.value, error=str(failed))
                    if not self.policy.should_retry(attempt, failed.retryable):
                        await self._give_up(request, attempt, str(failed), usage,
                                            "DEAD" if failed.retryable else "FAILED", origin)
                        return
                    await self.sleep(self.policy.delay(attempt, failed.retry_after,
                                                       self.rand()))
                    continue
                self._verdict(False)
                probe = False
            finally:
                if probe:
                    # Cancelled (or failed in our own code) before the probe had a verdict.
                    self.breaker.release()
            await self._settle_budget(reserve, result.prompt_tokens + result.completion_tokens)
            cost = cost_usd(result.model, result.prompt_tokens, result.completion_tokens,
                            self.prices)
            await self._add_spend(cost)
            usage.append(self._usage(request, ai, attempt, UsageOutcome.OK,
                                     result.prompt_tokens, result.completion_tokens,
                                     result.latency_ms, None, cost))
            await self._publish_insight(request, ai.name, result.analysis,
                                        result.prompt_tokens, result.completion_tokens, cost,
                                        result.latency_ms, usage)
            return

    async def _wait_for_breaker(self, request: AnalysisRequest) -> None:
        while True:
            wait = self.breaker.allow(self.clock())
            self._log_transitions()
            if wait <= 0:
                return
            log.debug("ai.waiting_for_breaker", batch_id=request.batch_id, seconds=wait)
            await self.sleep(min(wait, _MAX_NAP))

    async def _wait_for_spend(self, request: AnalysisRequest) -> None:
        if self.spend is None or not await self.spend.exhausted():
            return
        log.warning("ai.daily_budget_spent", batch_id=request.batch_id,
                    limit_usd=self.spend.limit_usd)
        metrics.AI_DAILY_BUDGET_SPENT.set(1)
        while await self.spend.exhausted():
            # Until the next UTC day, or a raised limit after a restart.
            await self.sleep(60.0)
        metrics.AI_DAILY_BUDGET_SPENT.set(0)

    async def _add_spend(self, usd: float) -> None:
        if self.spend is not None:
            await self.spend.add(usd)

    async def _wait_for_budget(self, tokens: int) -> None:
        if self.budget is None:
            return
        started = self.clock()
        while (wait := await self.budget.reserve(tokens)) > 0:
            await self.sleep(min(wait, _MAX_NAP))
        metrics.AI_RATELIMIT_WAIT.observe(self.clock() - started)

    async def _settle_budget(self, reserved: int, used: int) -> None:
        if self.budget is not None:
            await self.budget.settle(reserved, used)

    def _verdict(self, outage: bool) -> None:
        now = self.clock()
        if outage:
            self.breaker.failure(now)
        else:
            self.breaker.success(now)
        self._log_transitions()

    def _log_transitions(self) -> None:
        for change in self.breaker.drain_transitions():
            log.warning("ai.breaker", old=change.old.value, new=change.new.value,
                        reason=change.reason)
            metrics.AI_BREAKER_STATE.set(metrics.BREAKER_STATES[change.new.value])

    def _usage(
        self, request: AnalysisRequest, ai: AIClient, attempt: int, outcome: UsageOutcome,
        prompt: int, completion: int, latency_ms: float, error: str | None,
        cost: float | None = None,
    ) -> AIUsage:
        if cost is None:
            cost = cost_usd(ai.model, prompt, completion, self.prices)
        metrics.AI_REQUESTS.labels(ai.model, outcome.value).inc()
        metrics.AI_TOKENS.labels(ai.model, "prompt").inc(prompt)
        metrics.AI_TOKENS.labels(ai.model, "completion").inc(completion)
        metrics.AI_COST.labels(ai.model).inc(cost)
        metrics.AI_REQUEST_DURATION.labels(ai.model).observe(latency_ms / 1000)
        return AIUsage(
            request_id=usage_id_for(request.batch_id, ai.name, attempt),
            batch_id=request.batch_id,
            analyzer=ai.name,
            model=ai.model,
            attempt=attempt,
            outcome=outcome,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            latency_ms=round(latency_ms, 3),
            at=datetime.fromtimestamp(self.clock(), UTC),
            error=error,
        )

    async def _publish_insight(
        self, request: AnalysisRequest, analyzer: str, result: Analysis,
        prompt: int, completion: int, cost: float, latency_ms: float, usage: list[AIUsage],
    ) -> None:
        insight = Insight(
            insight_id=insight_id_for(request.batch_id, analyzer),
            batch_id=request.batch_id,
            source=request.key,
            window_start=request.first_event_at,
            window_end=request.last_event_at,
            analysis=result,
            analyzer=analyzer,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            latency_ms=round(latency_ms, 3),
            created_at=datetime.fromtimestamp(self.clock(), UTC),
            usage=usage,
        )
        await self.publisher.publish([
            Send(self.topics.insights, _encode(insight), request.key.encode())])
        await self.statuses.set(request.batch_id, request.first_event_at, "ANALYZED")
        metrics.INSIGHTS.labels(analyzer, result.severity.value).inc()
        log.info("insight.published", batch_id=request.batch_id,
                 insight_id=insight.insight_id, severity=result.severity.value)

    async def _give_up(self, request: AnalysisRequest, attempts: int, error: str,
                       usage: list[AIUsage], status: str, origin: Record | None) -> None:
        if origin is not None:
            headers = deadletter.headers(Rejection(Reason.AI_FAILED, error),
                                         self.topics.analysis_requests, origin)
        else:
            headers = [
                ("dlq.reason", Reason.AI_FAILED.value.encode()),
                ("dlq.error", error.encode()[:deadletter.MAX_ERROR_BYTES]),
                ("dlq.origin.topic", self.topics.analysis_requests.encode()),
            ]
        headers += [("dlq.attempts", str(attempts).encode()),
                    ("dlq.batch_id", request.batch_id.encode())]
        # The batch's seal time, not now: a give-up redone after a crash is the same row.
        record = ErrorRecord(time=request.sealed_at, source=request.key,
                             type=Reason.AI_FAILED.value,
                             message=f"analysis failed after {attempts} attempts: {error}",
                             batch_id=request.batch_id, usage=usage)
        key = request.key.encode()
        await self.publisher.publish([
            Send(self.topics.dead_letter, _encode(request), key, headers),
            Send(self.topics.errors, _encode([record]), key),
        ])
        metrics.DEAD_LETTERS.labels(Reason.AI_FAILED.value).inc()
        await self.statuses.set(request.batch_id, request.first_event_at, status)
        log.error("ai.gave_up", batch_id=request.batch_id, attempts=attempts, error=error,
                  status=status)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("analyst.retry", attempt=state.attempt_number, error=str(exc))


class AnalystHandler:
    """FetchLoop handler over ``analysis-requests``: requests become tasks."""

    def __init__(self, analyst: Analyst, publisher: Publisher, concurrency: int) -> None:
        self.analyst = analyst
        self.publisher = publisher
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[int, dict[int, asyncio.Task[None]]] = {}
        self._position: dict[int, int] = {}
        self._cancelled: list[asyncio.Task[None]] = []
        self._reasons_logged: set[str] = set()

    async def assigned(self, starts: dict[int, int]) -> None:
        for partition, start in starts.items():
            self._tasks[partition] = {}
            self._position[partition] = start

    def revoked(self, partitions: Sequence[int]) -> None:
        # Their next owner redoes them (the insight id keeps the result single).
        for partition in partitions:
            for task in self._tasks.pop(partition, {}).values():
                task.cancel()
                self._cancelled.append(task)
            self._position.pop(partition, None)

    def records(self, partition: int, records: Sequence[Record], now: float) -> None:
        tasks = self._tasks[partition]
        for message in records:
            offset: int = message.offset()  # type: ignore[assignment]
            tasks[offset] = asyncio.get_running_loop().create_task(self._run(message))
            self._position[partition] = offset + 1

    async def _run(self, message: Record) -> None:
        """Analyse one message; whatever in it makes that fail sends it to dead-letter.

        What does not lie in the message is raised: the database or broker away is
        retried here until they are back; anything else (a missing table, say) stops the
        agent, which its supervisor restarts, and the request is read again.
        """
        try:
            request = _decode_request(message.value() or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_letter(message, Rejection(
                Reason.MALFORMED_JSON, f"not an analysis request: {exc}"))
            return
        problem = request_problem(request)
        if problem is not None:
            await self._dead_letter(message, problem)
            return
        async with self._slots:
            try:
                await self._analyze(request, message)
            except DataRejected as exc:
                await self._dead_letter(message, Rejection(Reason.DB_REJECTED, exc.detail))
            except (RetryableError, PermanentError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - one request must not stop the others
                await self._dead_letter(message, unprocessable(exc))

    async def _analyze(self, request: AnalysisRequest, message: Record) -> None:
        # The database or broker away for a while: the request waits and tries again
        # (a call it already made may be made again; the insight id stays the same).
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            wait=wait_exponential_jitter(multiplier=0.5, max=30.0),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                await self.analyst.analyze(request, message)

    async def _dead_letter(self, message: Record, rejection: Rejection) -> None:
        topics = self.analyst.topics
        headers = deadletter.headers(rejection, topics.analysis_requests, message)
        await self.publisher.publish([
            Send(topics.dead_letter, message.value(), message.key(), headers)])
        reason = rejection.reason.value
        metrics.DEAD_LETTERS.labels(reason).inc()
        if reason not in self._reasons_logged:
            self._reasons_logged.add(reason)
            (log.error if rejection.reason is Reason.UNPROCESSABLE else log.warning)(
                "request.dead_lettered", partition=message.partition(),
                offset=message.offset(), reason=reason, error=rejection.message)

    def wants_more(self) -> bool:
        return sum(len(t) for t in self._tasks.values()) < MAX_WAITING

    def tick(self, now: float) -> None:
        return None

    def drain(self, now: float) -> None:
        # Requests in flight are redone after the restart; their offsets stay uncommitted.
        for tasks in self._tasks.values():
            for task in tasks.values():
                task.cancel()
                self._cancelled.append(task)

    async def settle(self) -> dict[int, int]:
        if self._cancelled:
            await asyncio.gather(*self._cancelled, return_exceptions=True)
            self._cancelled.clear()
        offsets: dict[int, int] = {}
        for partition, tasks in self._tasks.items():
            for offset in sorted(tasks):
                task = tasks[offset]
                if not task.done() or task.cancelled():
                    break
                error = task.exception()
                if error is not None:
                    # A bug or a lost dependency: stop here, loudly, rather than skip it.
                    raise error
                del tasks[offset]
            offsets[partition] = min(tasks, default=self._position[partition])
        return offsets
