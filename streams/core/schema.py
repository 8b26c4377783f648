"""Parse and validate one Kafka message into an ``Event`` or a ``Rejection``.

Three envelopes are accepted (see ``streams/schemas/event.schema.json`` for the native one):

1. native JSON: ``event_id``, ``event_type``, ``source``, ``timestamp`` plus optional sections;
2. CloudEvents 1.0 structured JSON mode, recognised by a top-level ``specversion``;
   ``data`` carries the optional sections;
3. CloudEvents 1.0 Kafka binary mode, recognised by any ``ce_`` header; the value is ``data``.

``parse`` never raises on message content: every problem becomes a ``Rejection`` whose
``field`` is the path inside the message (``http.status_code``, ``data.severity``) or, in
binary mode, the header name (``ce_id``).

Decisions a producer may trip over:

- A UTF-8 byte order mark before the JSON is ignored (RFC 8259 section 8.1 allows it);
  rejecting it would dead-letter whole streams from some Windows producers.
- A member name repeated in one object (``{"source": "a", "source": "b"}``) is refused
  (``duplicate_key``): parsers disagree on which value counts, so the event is ambiguous.
- No string anywhere in the message, member names and ``attributes`` included, may hold
  U+0000 (``nul_character``), nor may the key: PostgreSQL's text and jsonb cannot store it,
  and silently replacing it would change ids and what the producer wrote.
- Unknown fields are ignored, so producers can add fields before consumers know them.
- Nesting is limited to ``MAX_DEPTH`` levels inside ``attributes``, the only part of an
  event that is kept with arbitrary shape; unknown fields are dropped whatever their shape,
  and anything deep enough to exhaust the decoder's recursion guard is ``too_deep``.
- CloudEvents ``time`` is optional in the CloudEvents spec but required here: an event
  needs a timestamp, and inventing one from the clock would make replays differ.
- In binary mode an empty value means "no data", as the CloudEvents Kafka binding allows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from streams.core.models import ErrorInfo, Event, Http, Reason, Rejection
from streams.core.storable import nul_path

SUPPORTED_VERSION = 1
CLOUDEVENTS_VERSION = "1.0"
MAX_DEPTH = 32
MAX_ID_CHARS = 256
MAX_AHEAD = timedelta(days=1)
OLDEST = datetime(2000, 1, 1, tzinfo=UTC)
SEVERITIES = ("debug", "info", "warning", "error", "critical")

_BOM = b"\xef\xbb\xbf"
_CE_PREFIX = "ce_"

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_OptionalId = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]
_Time = Annotated[datetime, msgspec.Meta(tz=True)]
_Severity = Literal["debug", "info", "warning", "error", "critical"]


# Private decoding structs carry the constraints, so msgspec checks them in C during the
# one typed decode; the public models stay plain for every other module.
class _Sections(msgspec.Struct, kw_only=True):
    http: Http | None = None
    error: ErrorInfo | None = None
    user_id: _OptionalId | None = None
    session_id: _OptionalId | None = None
    severity: _Severity | None = None
    attributes: dict[str, Any] | None = None


class _Native(_Sections, kw_only=True):
    event_id: _Id
    event_type: _Id
    source: _Id
    timestamp: _Time
    version: int | None = None
    schema_version: int | None = None
    # Any JSON value: its presence alone routes the message to the CloudEvents path.
    specversion: Any = None


class _CloudEvent(msgspec.Struct):
    specversion: str
    id: _Id
    type: _Id
    source: _Id
    time: _Time
    data: _Sections | None = None


_NATIVE = msgspec.json.Decoder(_Native)
_CLOUDEVENT = msgspec.json.Decoder(_CloudEvent)
_SECTIONS = msgspec.json.Decoder(_Sections)
_ANY = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder().encode

_Result = Event | Rejection


def parse(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    *,
    now: datetime,
    max_bytes: int = 65536,
) -> Event | Rejection:
    """Turn one Kafka message into an ``Event`` or say why not; never raises on content.

    ``now`` must be timezone-aware; it bounds how far in the future a timestamp may lie.
    """
    if not key:
        return Rejection(Reason.MISSING_KEY, "message has no key; the key must name the source")
    if b"\x00" in key:
        return Rejection(Reason.NUL_CHARACTER, "message key contains a NUL character", "key")
    if not key.isascii():
        try:
            key.decode()
        except UnicodeDecodeError:
            return Rejection(Reason.NOT_UTF8, "message key is not valid UTF-8", "key")
    if headers:
        ce_headers: dict[str, bytes | str | None] = {
            name: raw for name, raw in headers if name.startswith(_CE_PREFIX)
        }
        if ce_headers:
            return _parse_binary(ce_headers, value, now, max_bytes)
    if not value:
        return Rejection(Reason.EMPTY, "message value is empty")
    checked = _check_bytes(value, max_bytes)
    if checked is None:
        checked = _check_ambiguity(value.removeprefix(_BOM))
    if checked is not None:
        return checked
    return _parse_native(value, now)


def _check_bytes(value: bytes, max_bytes: int) -> Rejection | None:
    if len(value) > max_bytes:
        return Rejection(
            Reason.TOO_LARGE, f"message value is {len(value)} bytes, the limit is {max_bytes}"
        )
    # msgspec only validates UTF-8 in strings it keeps, not in skipped fields.
    if not value.isascii():
        try:
            value.decode()
        except UnicodeDecodeError as exc:
            return Rejection(
                Reason.NOT_UTF8, f"message value is not valid UTF-8 (byte {exc.start})"
            )
    return None


def _check_ambiguity(value: bytes) -> Rejection | None:
    """Refuse a document with a NUL in a string or a repeated member name.

    Both are found without a Python walk in the common case: a JSON NUL can only be
    written as the escape ``\\u0000``, and a repeated name is dropped by the decoder, so
    its ``:`` is missing when the decoded document is encoded again (colons inside strings
    survive the round trip unless written as an escape, which takes the exact path too).
    Malformed documents pass here and are reported by the typed decode.
    """
    # Both escapes need a backslash, which most events do not have at all.
    escapes = b"\\" in value
    escaped_colon = escapes and (b"\\u003a" in value or b"\\u003A" in value)
    try:
        tree = _ANY.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if escapes and b"\\u0000" in value:
        path = nul_path(tree)
        if path is not None:
            return Rejection(
                Reason.NUL_CHARACTER, f"{path or 'message value'} contains a NUL character",
                path or None,
            )
    colons_lost = value.count(b":") != _ENCODE(tree).count(b":")
    if not (escaped_colon or colons_lost):
        return None
    try:
        repeated = _duplicate_path(value)
    except (ValueError, RecursionError):
        # Beyond what ``json`` reads (an integer of thousands of digits, deep nesting):
        # without escapes, lost colons can only be repeated names.
        if escaped_colon:
            return None
        return Rejection(Reason.DUPLICATE_KEY, "a member name appears more than once in "
                         "one object")
    if repeated is None:
        return None
    where, name = repeated
    field = f"{where}.{name}" if where else name
    return Rejection(Reason.DUPLICATE_KEY, f"{field} appears more than once in its object",
                     field)


class _Members(list[tuple[str, Any]]):
    """An object's members as written, repeats kept (``json``'s object_pairs_hook)."""


def _duplicate_path(value: bytes) -> tuple[str, str] | None:
    """(path of the object, repeated name) of the first object repeating a name."""
    tree = json.loads(value.decode().removeprefix("\ufeff"), object_pairs_hook=_Members)
    stack: list[tuple[object, str]] = [(tree, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Members):
            seen: set[str] = set()
            for name, child in node:
                if name in seen:
                    return path, name
                seen.add(name)
                stack.append((child, f"{path}.{name}" if path else name))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
    return None


def _parse_native(value: bytes, now: datetime) -> _Result:
    try:
        raw = _NATIVE.decode(value)
    except msgspec.ValidationError as exc:
        return _diagnose(value, exc, now)
    except msgspec.DecodeError as exc:
        return _malformed(value, exc, now)
    except RecursionError:
        return _too_deep(None)
    if raw.specversion is not None:
        return _parse_structured(value, raw.specversion, now)
    if raw.version is not None and raw.version != SUPPORTED_VERSION:
        return _unknown_version("version", raw.version)
    if raw.schema_version is not None and raw.schema_version != SUPPORTED_VERSION:
        return _unknown_version("schema_version", raw.schema_version)
    return _build(
        raw.event_id, raw.event_type, raw.source, raw.timestamp, "timestamp", raw, value, now
    )


def _diagnose(value: bytes, exc: msgspec.ValidationError, now: datetime) -> _Result:
    """Slow path: the typed decode failed; find out what the producer meant to send."""
    obj = _decode_any(value, exc)
    if isinstance(obj, Rejection):
        return obj
    if not isinstance(obj, dict):
        return _not_an_object(obj)
    if "specversion" in obj:
        return _parse_structured(value, obj["specversion"], now)
    # An unknown version explains every other mismatch, so it is reported first.
    for name in ("version", "schema_version"):
        version = obj.get(name)
        if type(version) is int and version != SUPPORTED_VERSION:
            return _unknown_version(name, version)
    return _from_validation_error(exc)


def _decode_any(value: bytes, typed_error: msgspec.ValidationError) -> object:
    """Decode without a type: a ``Rejection`` when the document itself is broken.

    The typed decode stops at the first mismatch, so malformed JSON further on is only
    found here.
    """
    try:
        return _ANY.decode(value)
    except msgspec.ValidationError:
        # Only a number beyond float range fails here, and the typed error locates it.
        return _from_validation_error(typed_error)
    except msgspec.DecodeError as exc:
        return _malformed_json(exc)
    except RecursionError:
        return _too_deep(None)


def _malformed(value: bytes, exc: msgspec.DecodeError, now: datetime) -> _Result:
    # Only one mark is forgiven, which also bounds the recursion.
    if value.startswith(_BOM) and not value.startswith(_BOM, len(_BOM)):
        return _parse_native(value[len(_BOM) :], now)
    return _malformed_json(exc)


def _malformed_json(exc: msgspec.DecodeError) -> Rejection:
    return Rejection(Reason.MALFORMED_JSON, f"message value is not valid JSON: {exc}")


def _parse_structured(value: bytes, specversion: object, now: datetime) -> _Result:
    if not isinstance(specversion, str):
        return Rejection(
            Reason.WRONG_TYPE,
            f"specversion must be a string, got {_json_type(specversion)}",
            "specversion",
        )
    if specversion != CLOUDEVENTS_VERSION:
        return _unknown_cloudevents_version("specversion", specversion)
    try:
        ce = _CLOUDEVENT.decode(value)
    except msgspec.ValidationError as exc:
        return _from_validation_error(exc)
    except RecursionError:
        return _too_deep(None)
    return _build(ce.id, ce.type, ce.source, ce.time, "time", ce.data, value, now, "data.")


def _parse_binary(
    ce_headers: dict[str, bytes | str | None], value: bytes | None, now: datetime, max_bytes: int
) -> _Result:
    texts: dict[str, str] = {}
    for name in ("ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time"):
        raw = ce_headers.get(name)
        if raw is None:
            return Rejection(
                Reason.MISSING_FIELD, f"CloudEvents binary mode needs the {name} header", name
            )
        # Some clients hand header values over already decoded.
        if isinstance(raw, str):
            texts[name] = raw
            continue
        try:
            texts[name] = raw.decode()
        except UnicodeDecodeError:
            return Rejection(Reason.NOT_UTF8, f"header {name} is not valid UTF-8", name)
        if "\x00" in texts[name]:
            return Rejection(Reason.NUL_CHARACTER, f"header {name} contains a NUL character",
                             name)
    if texts["ce_specversion"] != CLOUDEVENTS_VERSION:
        return _unknown_cloudevents_version("ce_specversion", texts["ce_specversion"])
    for name in ("ce_id", "ce_type", "ce_source"):
        if not 0 < len(texts[name]) <= MAX_ID_CHARS:
            return Rejection(Reason.INVALID_VALUE, f"{name} {_RULES['id']}", name)
    try:
        timestamp = msgspec.convert(texts["ce_time"], _Time)
    except msgspec.ValidationError as exc:
        return _bad_timestamp("ce_time", str(exc))
    sections: _Sections | None = None
    if value:
        checked = _check_bytes(value, max_bytes)
        if checked is None:
            checked = _check_ambiguity(value.removeprefix(_BOM))
        if checked is not None:
            return checked
        if value.startswith(_BOM):
            value = value[len(_BOM) :]
        try:
            sections = _SECTIONS.decode(value)
        except msgspec.ValidationError as exc:
            broken = _decode_any(value, exc)
            return broken if isinstance(broken, Rejection) else _from_validation_error(exc)
        except msgspec.DecodeError as exc:
            return _malformed_json(exc)
        except RecursionError:
            return _too_deep(None)
    return _build(
        texts["ce_id"],
        texts["ce_type"],
        texts["ce_source"],
        timestamp,
        "ce_time",
        sections,
        value or b"",
        now,
    )


def _build(
    event_id: str,
    event_type: str,
    source: str,
    timestamp: datetime,
    time_field: str,
    sections: _Sections | None,
    value: bytes,
    now: datetime,
    prefix: str = "",
) -> _Result:
    """Apply the checks msgspec cannot express; ``prefix`` is where the sections sit."""
    if timestamp < OLDEST:
        return Rejection(
            Reason.BAD_TIMESTAMP,
            f"{time_field} {timestamp.isoformat()} is before {OLDEST.year}; clock not set?",
            time_field,
        )
    if timestamp - now > MAX_AHEAD:
        return Rejection(
            Reason.FUTURE_TIMESTAMP,
            f"{time_field} {timestamp.isoformat()} is more than {MAX_AHEAD} ahead of "
            f"{now.isoformat()}",
            time_field,
        )
    if sections is None:
        return Event(event_id=event_id, event_type=event_type, source=source, timestamp=timestamp)
    attributes = sections.attributes
    # Nesting cannot be deeper than the brackets in the message: counting them runs in C
    # and spares almost every event the walk.
    if (
        attributes
        and value.count(b"{") + value.count(b"[") > MAX_DEPTH
        and _depth(attributes, 2 + prefix.count(".")) > MAX_DEPTH
    ):
        return _too_deep(f"{prefix}attributes")
    return Event(
        event_id=event_id,
        event_type=event_type,
        source=source,
        timestamp=timestamp,
        http=sections.http,
        error=sections.error,
        user_id=sections.user_id,
        session_id=sections.session_id,
        severity=sections.severity,
        attributes=attributes,
    )


def _depth(root: dict[str, Any], level: int) -> int:
    """Deepest container level under ``root``, which sits at ``level``.

    Iterative, so a hostile shape cannot exhaust the stack; stops once past the limit.
    """
    deepest = level
    stack: list[tuple[Iterable[Any], int]] = [(root.values(), level)]
    while stack and deepest <= MAX_DEPTH:
        children, depth = stack.pop()
        deepest = max(deepest, depth)
        for child in children:
            if isinstance(child, dict):
                stack.append((child.values(), depth + 1))
            elif isinstance(child, list):
                stack.append((child, depth + 1))
    return deepest


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_WRONG = re.compile(r"Expected `(?P<expected>[^`]*)`, got `(?P<got>[^`]*)`")
_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
    "datetime": "an RFC 3339 timestamp string",
}
# Keyed by the last path segment, so native and CloudEvents names share one wording.
_RULES = {
    "id": f"must be a non-empty string of at most {MAX_ID_CHARS} characters",
    "user_id": f"must be a string of at most {MAX_ID_CHARS} characters",
    "status_code": "must be an HTTP status code between 100 and 599",
    "duration_ms": "must be a finite number of milliseconds >= 0",
    "severity": f"must be one of {', '.join(SEVERITIES)}",
}
_RULE_ALIASES = {
    "event_id": "id",
    "event_type": "id",
    "type": "id",
    "source": "id",
    "session_id": "user_id",
}


def _from_validation_error(exc: msgspec.ValidationError) -> Rejection:
    """Map msgspec's message (``... - at `$.http.status_code```) onto a reason and path."""
    text = str(exc)
    field: str | None = None
    at = _AT.search(text)
    if at is not None:
        text = text[: at.start()]
        field = at["path"].removeprefix(".") or None
    missing = _MISSING.match(text)
    if missing is not None:
        name = f"{field}.{missing['name']}" if field else missing["name"]
        return Rejection(Reason.MISSING_FIELD, f"required field {name} is missing", name)
    wrong = _WRONG.match(text)
    if wrong is not None:
        got = _TYPE_NAMES.get(wrong["got"], wrong["got"])
        if field is None:
            return Rejection(Reason.NOT_AN_OBJECT, f"message must be a JSON object, got {got}")
        expected = " or ".join(
            _TYPE_NAMES.get(part, part) for part in wrong["expected"].split(" | ") if part != "null"
        )
        return Rejection(Reason.WRONG_TYPE, f"{field} must be {expected}, got {got}", field)
    if "datetime" in text:
        return _bad_timestamp(field or "timestamp", text)
    leaf = (field or "").rpartition(".")[2]
    rule = _RULES.get(_RULE_ALIASES.get(leaf, leaf))
    detail = rule if rule is not None else f"is invalid: {text}"
    return Rejection(Reason.INVALID_VALUE, f"{field or 'message value'} {detail}", field)


def _bad_timestamp(field: str, detail: str) -> Rejection:
    if "timezone" in detail:
        message = f"{field} has no UTC offset; end it with Z or +HH:MM"
    else:
        message = f"{field} is not an RFC 3339 timestamp like 2026-11-25T10:00:00.123Z"
    return Rejection(Reason.BAD_TIMESTAMP, message, field)


def _unknown_version(name: str, version: object) -> Rejection:
    return Rejection(
        Reason.UNKNOWN_VERSION,
        f"{name} {version!r} is not supported; this consumer reads version {SUPPORTED_VERSION}",
        name,
    )


def _unknown_cloudevents_version(field: str, version: str) -> Rejection:
    return Rejection(
        Reason.UNKNOWN_VERSION,
        f"CloudEvents {field} {version!r} is not supported; use {CLOUDEVENTS_VERSION!r}",
        field,
    )


def _too_deep(field: str | None) -> Rejection:
    where = field if field is not None else "message value"
    return Rejection(Reason.TOO_DEEP, f"{where} nests deeper than {MAX_DEPTH} levels", field)


def _not_an_object(obj: object) -> Rejection:
    return Rejection(Reason.NOT_AN_OBJECT, f"message must be a JSON object, got {_json_type(obj)}")


def _json_type(obj: object) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, int | float):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, list):
        return "an array"
    return "an object"
