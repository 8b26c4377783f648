"""A local OpenAI-compatible server (chat completions) whose answers each test scripts.

Tests queue ``Reply`` values; each ``POST /v1/chat/completions`` takes the next one, or
``server.default`` when the queue is empty (a valid analysis unless a test changes it).
Every request is recorded with its headers, JSON body and arrival time, so tests can read
the prompt, count calls and measure pacing. The real openai client talks to it over HTTP.

    async with AIServer() as server:
        server.script(Reply.status(429, retry_after=2), Reply.ok())
        client = AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

VALID_ANALYSIS: dict[str, Any] = {
    "summary": "Error rate rose to 12% on /pay while latency stayed normal.",
    "severity": "warning",
    "confidence": 0.8,
    "patterns": ["5xx responses cluster on /pay"],
    "anomalies": [
        {
            "metric": "error_rate",
            "value": 0.12,
            "baseline": 0.01,
            "score": 4.2,
            "evidence": "12 of 100 requests failed",
        }
    ],
    "recommendations": ["Check the payment provider's status"],
}

# Valid JSON that breaks ANALYSIS_SCHEMA in several ways at once.
SCHEMA_VIOLATION: dict[str, Any] = {
    "summary": "All good",
    "severity": "catastrophic",
    "confidence": 7,
    "patterns": "none",
}

JSON_SCHEMA_UNSUPPORTED = (
    "Invalid parameter: 'response_format' of type 'json_schema' is not supported with "
    "this model."
)


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Build with the class methods, not the constructor."""

    code: int = 200
    payload: dict[str, Any] | None = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hangs: bool = False

    @classmethod
    def ok(
        cls,
        content: dict[str, Any] | str | None = None,
        prompt_tokens: int = 120,
        completion_tokens: int = 80,
        model: str | None = None,
        finish_reason: str = "stop",
    ) -> Reply:
        """A chat completion whose message content is ``content`` (a dict is JSON-encoded)."""
        if content is None:
            content = VALID_ANALYSIS
        text = content if isinstance(content, str) else json.dumps(content)
        return cls(
            payload={
                "content": text,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "model": model,
                "finish_reason": finish_reason,
            }
        )

    @classmethod
    def malformed(cls, text: str = '{"summary": "cut off', **usage: Any) -> Reply:
        """A completion whose content is not JSON at all."""
        return cls.ok(text, **usage)

    @classmethod
    def schema_violation(cls, content: dict[str, Any] | None = None, **usage: Any) -> Reply:
        """A completion whose content is JSON but not an analysis."""
        return cls.ok(content if content is not None else SCHEMA_VIOLATION, **usage)

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        message: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
    ) -> Reply:
        """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        error = {
            "message": message or f"scripted error {code}",
            "type": error_type or ("invalid_request_error" if code < 500 else "server_error"),
            "param": param,
            "code": None,
        }
        return cls(code=code, raw=json.dumps({"error": error}).encode(), headers=headers)

    @classmethod
    def rejects_json_schema(cls) -> Reply:
        """What a server without structured outputs says to ``response_format: json_schema``."""
        return cls.status(400, message=JSON_SCHEMA_UNSUPPORTED, param="response_format")

    @classmethod
    def body(cls, raw: bytes, code: int = 200, content_type: str = "application/json") -> Reply:
        """Any bytes, e.g. an HTML error page or a truncated completion."""
        return cls(code=code, raw=raw, headers={"Content-Type": content_type})

    @classmethod
    def slow(cls, seconds: float, then: Reply | None = None) -> Reply:
        """``then`` (a valid analysis by default) after ``seconds``."""
        base = then if then is not None else cls.ok()
        return cls(
            code=base.code,
            payload=base.payload,
            raw=base.raw,
            headers=base.headers,
            delay=seconds,
            hangs=base.hangs,
        )

    @classmethod
    def hang(cls) -> Reply:
        """Never answers; the request is released when the server stops."""
        return cls(hangs=True)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def prompt_text(self) -> str:
        """All message contents joined: what the model was shown."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)


class AIServer:
    """aiohttp on 127.0.0.1 and a free port, in the running event loop."""

    def __init__(self, models: tuple[str, ...] = ("gpt-4o-mini",)) -> None:
        self.models = models
        self.default = Reply.ok()
        self.requests: list[Recorded] = []
        self._queue: deque[Reply] = deque()
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` would be set to."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def script(self, *replies: Reply) -> None:
        """Queue answers for the next chat completions, in order."""
        self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        return len(self._queue)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        # Release hanging and slow handlers first, or cleanup would wait for them.
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(
            Recorded(request.method, request.path, dict(request.headers), body, time.monotonic())
        )
        return body

    async def _wait(self, seconds: float | None) -> bool:
        """Sleep, unless the server stops first; True when it did."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        reply = self._queue.popleft() if self._queue else self.default
        if reply.hangs or reply.delay:
            stopped = await self._wait(None if reply.hangs else reply.delay)
            if stopped:
                return web.Response(status=503, text="server stopping")
        if reply.payload is None:
            return web.Response(status=reply.code, body=reply.raw or b"", headers={
                "Content-Type": "application/json", **reply.headers})
        model = reply.payload["model"] or (body or {}).get("model") or self.models[0]
        prompt, completion = reply.payload["prompt_tokens"], reply.payload["completion_tokens"]
        return web.json_response(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.payload["content"]},
                        "logprobs": None,
                        "finish_reason": reply.payload["finish_reason"],
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
            status=reply.code,
            headers=reply.headers,
        )

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        created = int(time.time())
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "streamsight"}
                    for m in self.models
                ],
            }
        )


def closed_port() -> int:
    """A port nothing listens on, for connection-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
