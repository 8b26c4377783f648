"""structlog set-up: one pipeline for our loggers and for stdlib ones (Faust, aiokafka).

JSON lines (orjson) for machines, a console renderer for people; ISO-8601 UTC timestamps;
secrets and DSN passwords redacted before anything is rendered; a warning or error that
repeats is told once per ``REPEAT_WINDOW_S``, with how many like it were held back.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from streams.core.repeats import Repeats

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

#: A kind of warning or error is told at most once per this many seconds.
REPEAT_WINDOW_S = 60.0

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


# What differs between repeats of one failure: librdkafka's client and thread names,
# addresses, counts and durations.
_VARYING = re.compile(r"\[thrd:[^\]]*\]|\[[^\]\s]*#(?:consumer|producer)-\d+\]|\d+")


class Collapse(logging.Filter):
    """Holds back warnings and errors that repeat within ``REPEAT_WINDOW_S``; the next one
    told carries ``repeated``, how many were held back since the one before. A kind is
    the logger, the level and the line with what varies between repeats taken out
    (numbers, librdkafka's client and thread names): ours by their event and fields, so
    that a state change (a breaker opening, then closing) is not a repeat; a library's by
    its message."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._repeats = Repeats(window_s)
        self._clock = clock
        # Clients log from their own threads (librdkafka's queue is served in consume()).
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            held = self._repeats.tell(_kind(record), self._clock())
        if held is None:
            return False
        if held:
            if isinstance(record.msg, dict):
                record.msg = {**record.msg, "repeated": held}
            else:
                record.repeated = held
        return True


def _kind(record: logging.LogRecord) -> Hashable:
    if isinstance(record.msg, dict):  # one of ours, through structlog
        fields = sorted((k, v) for k, v in record.msg.items() if k != "timestamp")
        return record.name, record.levelno, _VARYING.sub("#", repr(fields))
    return record.name, record.levelno, _VARYING.sub("#", record.getMessage())


def _orjson_dumps(obj: Any, **_kwargs: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _use_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None,
              clock: Callable[[], float] = time.monotonic) -> None:
    """Install the pipeline; calling it again replaces the previous set-up. ``clock``
    times the repeats held back."""
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
    handler.addFilter(Collapse(clock=clock))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # A thread's uncaught exception is told in the log's format too, not as a bare
    # traceback on stderr; so are warnings.
    threading.excepthook = _thread_crashed
    logging.captureWarnings(True)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    logging.getLogger("threading").error(
        "thread.crashed", exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"thread": args.thread.name if args.thread else None})


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
