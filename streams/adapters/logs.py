"""structlog set-up: one pipeline for our loggers and for stdlib ones (Faust, aiokafka).

JSON lines (orjson) for machines, a console renderer for people; ISO-8601 UTC timestamps;
secrets and DSN passwords redacted before anything is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

# Exact names, plus the same names as a suffix (``openai_api_key``, ``db_password``), so
# that fields such as ``event_key`` or ``batch_key`` stay readable.
SECRET_KEYS = frozenset({"api_key", "password", "secret", "token", "authorization"})
REDACTED = "***"

# Libraries that log per message or per heartbeat at INFO; their warnings still show.
NOISY_LOGGERS = (
    "aiokafka",
    "kafka",
    "faust",
    "mode",
    "librdkafka",
    "asyncio",
    "httpx",
    "httpx2",
    "httpcore",
    "openai",
    "urllib3",
    "asyncpg",
)

_DSN_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")
_HANDLER_MARK = "_streamsight_handler"


def redact_dsn(text: str) -> str:
    """Replace the password of every ``scheme://user:password@`` in ``text``."""
    return _DSN_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}@", text)


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return lowered in SECRET_KEYS or any(lowered.endswith(f"_{name}") for name in SECRET_KEYS)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> Mapping[str, Any]:
    """structlog processor: hide secret-named fields and DSN passwords in string values."""
    for key, value in list(event_dict.items()):
        if value is None:
            continue
        if _is_secret(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = redact_dsn(value)
    return event_dict


def _orjson_dumps(obj: Any, **_kwargs: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _use_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Install the pipeline; calling it again replaces the previous set-up."""
    out = stream if stream is not None else sys.stderr
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        redact_secrets,
    ]
    renderer: Any
    if _use_json(fmt, out):
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        final: list[Any] = [
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=getattr(out, "isatty", lambda: False)(),
            # Local variables in tracebacks can hold DSNs and keys: never print them.
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
        final = []

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
