"""The OpenAI analyzer: the core's prompt sent, a strict JSON-schema answer, priced calls.

One ``OpenAIAnalyzer.call`` is one attempt as the analyst counts them: one chat completion,
plus at most one repair call when the answer is not valid JSON for ``ANALYSIS_SCHEMA``. The
openai client never retries on its own (``max_retries=0``): the analyst's rate limiter,
circuit breaker and retry policy decide whether and when to try again.

Every failure leaves as ``CallFailed``: ``cause`` is the streams.errors kind that says what
to do (``RateLimited``, ``RetryableError``, ``InvalidOutput``, ``PermanentError``), and the
wrapper carries what the attempt cost (outcome, tokens, latency) for its ``ai_usage`` row.
Messages never contain the API key, even when a server echoes it back.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import msgspec
import openai
import orjson
import structlog
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from openai.types.chat.completion_create_params import ResponseFormat

from streams.core.models import Analysis, AnalysisRequest, InsightSeverity, UsageOutcome
from streams.core.pricing import PRICES
from streams.core.prompt import MAX_PROMPT_TOKENS, analyzer_name, build_prompt, estimate_tokens
from streams.errors import (
    ConfigError,
    PermanentError,
    RateLimited,
    RetryableError,
    StreamsightError,
)

log = structlog.get_logger(__name__)

MAX_COMPLETION_TOKENS = 1000
# How much of an invalid answer goes back in the repair call.
MAX_REPAIR_ECHO_CHARS = 4000
# A proxy's HTML error page is no use in an error row.
MAX_ERROR_CHARS = 500

_CODE_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(?P<body>.*?)\n?```$", re.DOTALL)


def load_prices(path_or_json: str | None) -> dict[str, tuple[float, float]]:
    """``PRICES`` merged with overrides from a JSON file or an inline JSON object.

    The JSON maps a model to ``[prompt, completion]`` or ``{"prompt": .., "completion": ..}``
    in USD per 1M tokens. Bad input raises ConfigError with one line.
    """
    prices = dict(PRICES)
    if not path_or_json or not path_or_json.strip():
        return prices
    text = path_or_json.strip()
    origin = "inline JSON"
    if not text.startswith("{"):
        origin = text
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"price table {origin}: {exc.strerror or exc}") from None
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"price table {origin}: invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"price table {origin}: expected an object of model -> prices")
    for model, value in raw.items():
        pair = value
        if isinstance(value, dict):
            pair = [value.get("prompt"), value.get("completion")]
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(
                isinstance(p, int | float) and not isinstance(p, bool) and p >= 0 for p in pair
            )
        ):
            raise ConfigError(
                f"price table {origin}: {model!r} needs [prompt, completion] USD per 1M tokens"
            )
        prices[model] = (float(pair[0]), float(pair[1]))
    return prices


# Strict structured outputs need every property required and no extra properties. Ranges
# (confidence 0..1) are stated in descriptions and checked on decoding, because
# OpenAI-compatible servers differ in which numeric keywords their grammars accept.
_ANOMALY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["metric", "value", "baseline", "score", "evidence"],
    "properties": {
        "metric": {"type": "string", "description": "Name of the digest metric."},
        "value": {"type": "number", "description": "Observed value in this batch."},
        "baseline": {
            "type": ["number", "null"],
            "description": "Expected value, or null when unknown.",
        },
        "score": {
            "type": ["number", "null"],
            "description": "How unusual, e.g. a z-score, or null.",
        },
        "evidence": {"type": "string", "description": "The numbers that show it."},
    },
}

ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "summary",
        "severity",
        "confidence",
        "patterns",
        "anomalies",
        "recommendations",
    ],
    "properties": {
        "summary": {"type": "string", "description": "Two or three sentences."},
        "severity": {"type": "string", "enum": [s.value for s in InsightSeverity]},
        "confidence": {"type": "number", "description": "Between 0 and 1."},
        "patterns": {"type": "array", "items": {"type": "string"}},
        "anomalies": {"type": "array", "items": _ANOMALY_SCHEMA},
        "recommendations": {"type": "array", "items": {"type": "string"}},
    },
}

_RESPONSE_FORMAT_SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "batch_analysis", "strict": True, "schema": ANALYSIS_SCHEMA},
}
_RESPONSE_FORMAT_JSON: dict[str, Any] = {"type": "json_object"}

class InvalidOutput(RetryableError):
    """The answer was not JSON for ``ANALYSIS_SCHEMA``, even after the repair call."""


class CallFailed(StreamsightError):
    """One attempt failed; ``cause`` says what to do, the rest is its ``ai_usage`` row.

    ``cause`` is a ``RateLimited`` (wait ``retry_after``, then retry), a ``RetryableError``
    or ``InvalidOutput`` (back off and retry), or a ``PermanentError`` (do not retry). The
    tokens are those the provider billed before the failure (a first answer that the repair
    could not fix, for instance); the latency covers the whole attempt.
    """

    def __init__(
        self,
        cause: StreamsightError,
        outcome: UsageOutcome,
        *,
        model: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        latency_ms: float = 0.0,
    ) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.outcome = outcome
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.latency_ms = latency_ms

    @property
    def retryable(self) -> bool:
        return isinstance(self.cause, RetryableError)

    @property
    def retry_after(self) -> float | None:
        return self.cause.retry_after if isinstance(self.cause, RateLimited) else None


@dataclass(frozen=True)
class CallResult:
    analysis: Analysis
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    repaired: bool = False


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's hint: ``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _strip_fence(content: str) -> str:
    # Models in JSON mode sometimes wrap the object in a Markdown fence; that is no reason
    # to pay for a repair call.
    text = content.strip()
    match = _CODE_FENCE.match(text)
    return match.group("body").strip() if match else text


def validate_analysis(content: str | None) -> Analysis:
    """Decode an answer into ``Analysis``; ValueError says what is wrong with it."""
    if content is None or not content.strip():
        raise ValueError("empty answer")
    try:
        analysis = msgspec.json.decode(_strip_fence(content), type=Analysis, strict=True)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
    if not 0.0 <= analysis.confidence <= 1.0:
        raise ValueError(f"confidence {analysis.confidence} is outside 0..1 - at `$.confidence`")
    if not analysis.summary.strip():
        raise ValueError("summary is empty - at `$.summary`")
    return analysis


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Completion(msgspec.Struct):
    """The part of a chat completion we read, checked: the openai client builds its
    response objects without validation, so a broken server's body would arrive as
    whatever it was."""

    choices: Annotated[list[_Choice], msgspec.Meta(min_length=1)]
    model: str | None = None
    usage: _Usage | None = None


class _Attempt:
    """Tokens and time of one attempt, across the first call and the repair call."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started = time.perf_counter()

    @property
    def latency_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def add(self, completion: _Completion) -> None:
        if completion.usage is not None:
            self.prompt_tokens += completion.usage.prompt_tokens or 0
            self.completion_tokens += completion.usage.completion_tokens or 0
        if completion.model:
            self.model = completion.model

    def failed(self, cause: StreamsightError, outcome: UsageOutcome) -> CallFailed:
        return CallFailed(
            cause,
            outcome,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=self.latency_ms,
        )


_decode_completion = msgspec.json.Decoder(_Completion).decode


def _rejects_json_schema(exc: openai.BadRequestError) -> bool:
    text = f"{exc.param or ''} {exc.message}".lower()
    return "response_format" in text or "json_schema" in text


class OpenAIAnalyzer:
    """Analyses one ``AnalysisRequest`` per ``call`` through any OpenAI-compatible server."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None,
        model: str,
        timeout: float = 60.0,
        client: AsyncOpenAI | None = None,
        *,
        max_prompt_tokens: int = MAX_PROMPT_TOKENS,
        max_completion_tokens: int = MAX_COMPLETION_TOKENS,
    ) -> None:
        self.model = model
        self.name = analyzer_name(model)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_completion_tokens = max_completion_tokens
        self._secret = api_key
        self._owns_client = client is None
        # Our retry policy counts attempts; a client retrying underneath would hide them.
        self._client = (
            client.with_options(max_retries=0)
            if client is not None
            else AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
        )
        self._json_schema = True

    @property
    def uses_json_schema(self) -> bool:
        """False once the server refused ``json_schema`` and calls fell back to JSON mode."""
        return self._json_schema

    def token_estimate(self, request: AnalysisRequest) -> int:
        """Tokens one call may use at most (prompt estimate + answer cap), for TPM budgets."""
        return estimate_tokens(build_prompt(request, self.max_prompt_tokens)) + (
            self.max_completion_tokens
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> OpenAIAnalyzer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, request: AnalysisRequest) -> CallResult:
        """One attempt; raises ``CallFailed`` (see there) on any failure."""
        messages = build_prompt(request, self.max_prompt_tokens)
        attempt = _Attempt(self.model)
        content = await self._complete(messages, attempt)
        try:
            analysis = validate_analysis(content)
            repaired = False
        except ValueError as first_problem:
            repair = [
                *messages,
                {"role": "assistant", "content": (content or "")[:MAX_REPAIR_ECHO_CHARS]},
                {
                    "role": "user",
                    "content": (
                        f"That answer is invalid: {first_problem}. Reply with only the "
                        "corrected JSON object, with exactly the keys and types asked for."
                    ),
                },
            ]
            content = await self._complete(repair, attempt)
            try:
                analysis = validate_analysis(content)
            except ValueError as problem:
                cause = InvalidOutput(
                    self._scrub(f"invalid answer from {attempt.model} after a repair: {problem}")
                )
                raise attempt.failed(cause, UsageOutcome.INVALID_OUTPUT) from cause
            repaired = True
        return CallResult(
            analysis=analysis,
            model=attempt.model,
            prompt_tokens=attempt.prompt_tokens,
            completion_tokens=attempt.completion_tokens,
            latency_ms=attempt.latency_ms,
            repaired=repaired,
        )

    async def _complete(self, messages: list[dict[str, str]], attempt: _Attempt) -> str | None:
        while True:
            response_format = (
                _RESPONSE_FORMAT_SCHEMA if self._json_schema else _RESPONSE_FORMAT_JSON
            )
            try:
                raw = await self._client.chat.completions.with_raw_response.create(
                    model=self.model,
                    messages=cast(list[ChatCompletionMessageParam], messages),
                    response_format=cast(ResponseFormat, response_format),
                    max_completion_tokens=self.max_completion_tokens,
                )
            except openai.BadRequestError as exc:
                # A capability answer, not a failed attempt: ask again in JSON mode, and
                # keep using it, since the server will not learn json_schema mid-run.
                if self._json_schema and _rejects_json_schema(exc):
                    self._json_schema = False
                    log.warning("openai.json_schema_unsupported", model=self.model)
                    continue
                failed = self._map(exc, attempt)
                raise failed from failed.cause
            except openai.OpenAIError as exc:
                failed = self._map(exc, attempt)
                raise failed from failed.cause
            try:
                completion = _decode_completion(raw.http_response.content)
            except msgspec.DecodeError as exc:
                # A broken server or proxy, not a model answer: no repair can fix it.
                cause = RetryableError(
                    self._scrub(f"openai: {self.model} answered with no chat completion: {exc}")
                )
                raise attempt.failed(cause, UsageOutcome.SERVER_ERROR) from None
            attempt.add(completion)
            return completion.choices[0].message.content

    def _scrub(self, text: str) -> str:
        # Shorter "keys" are placeholders for local servers; replacing them would garble.
        return text.replace(self._secret, "***") if len(self._secret) >= 4 else text

    def _map(self, exc: openai.OpenAIError, attempt: _Attempt) -> CallFailed:
        """The openai error as a streams.errors kind, wrapped with the attempt's usage.

        Raised ``from`` the mapped kind, not the openai error: the server's own text (which
        may echo the key) reaches tracebacks only through the scrubbed, clipped message.
        """
        detail = str(getattr(exc, "message", exc))
        if len(detail) > MAX_ERROR_CHARS:
            detail = detail[:MAX_ERROR_CHARS] + "…"
        message = self._scrub(f"openai {type(exc).__name__}: {detail}")
        cause: StreamsightError
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retry_after = retry_after_seconds(exc.response.headers)
            if status == 429 or (status == 503 and retry_after is not None):
                cause, outcome = RateLimited(message, retry_after), UsageOutcome.RATE_LIMITED
            elif status >= 500:
                cause, outcome = RetryableError(message), UsageOutcome.SERVER_ERROR
            elif status == 408:
                # The openai client's own policy retries 408 and 409: the server timed out
                # or hit a conflict, and the same request can succeed later.
                cause, outcome = RetryableError(message), UsageOutcome.TIMEOUT
            elif status == 409:
                cause, outcome = RetryableError(message), UsageOutcome.SERVER_ERROR
            else:
                cause, outcome = PermanentError(message), UsageOutcome.CLIENT_ERROR
        elif isinstance(exc, openai.APITimeoutError):
            cause, outcome = RetryableError(message), UsageOutcome.TIMEOUT
        elif isinstance(exc, openai.APIConnectionError):
            cause, outcome = RetryableError(message), UsageOutcome.CONNECTION_ERROR
        else:
            cause, outcome = PermanentError(message), UsageOutcome.CLIENT_ERROR
        return attempt.failed(cause, outcome)
