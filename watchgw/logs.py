"""The one structlog configuration.

JSON lines when stderr is not a terminal (systemd's journal, log shippers), a readable console on
one. Standard-library loggers (``aiohttp.access``, ``aiohttp.server``) go through the same
renderer. Event names are stable ``noun.verb`` strings (``upstream.connected``,
``client.subscribed``) so dashboards and alerts can key on them.

Tokens never reach a log line: :func:`redact_secrets` runs on every event (before and after a
traceback is formatted) and masks the values of keys that carry credentials and, in every string,
what :func:`redact_text` finds: ``Authorization`` header values and ``Bearer <token>``. The same
function cleans upstream error text before it reaches a client (``watchgw.kube.errors``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from watchgw.config import LogConfig

REDACTED = "[redacted]"
_SECRET_KEYS = frozenset({"token", "authorization", "cookie", "password", "secret", "bearer"})
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
# The value of an Authorization header quoted in text (``Authorization: Basic ...``, JSON or Go's
# ``map[Authorization:[...]]``): up to the next quote, comma, semicolon or end of line.
# Already-redacted values are left alone (this runs twice on a log event).
_AUTHORIZATION = re.compile(
    r"""(?i)(authorization["']?\s*+[:=]\s*+(?!\[redacted\])[\["']?+)(?!\[redacted\])[^"',;\]\r\n]+"""
)
#: Secrets shorter than this are not searched for as a suffix cut off by truncation.
_MIN_SECRET_PREFIX = 4


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with credentials replaced by ``[redacted]``: ``Authorization`` header values,
    ``Bearer <token>``, and every occurrence of each of ``secrets`` (the tokens in use, which an
    upstream may echo bare). A text that was cut (ends with ``...``) right inside a secret loses
    that prefix too, so truncation never leaves the first characters of a token behind."""
    lowered = text.lower()
    if "authorization" in lowered:
        text = _AUTHORIZATION.sub(r"\1" + REDACTED, text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
            text = _redact_cut_prefix(text, secret)
    return text


def _redact_cut_prefix(text: str, secret: str) -> str:
    if not text.endswith("..."):
        return text
    body = text[:-3]
    for size in range(min(len(body), len(secret) - 1), _MIN_SECRET_PREFIX - 1, -1):
        if secret.startswith(body[-size:]):
            return body[:-size] + REDACTED + "..."
    return text


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask credential-bearing keys, and credentials inside strings."""
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS and value:
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def configure_logging(config: LogConfig, *, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger once, for the whole process."""
    stream = stream if stream is not None else sys.stderr
    level = getattr(logging, config.level.upper())
    fmt = config.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        import ujson  # local: only the JSON renderer needs it

        def serialize(obj: Any, **_kw: Any) -> str:
            return str(ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False, default=repr))

        renderer = structlog.processors.JSONRenderer(serializer=serialize)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redact_secrets,  # again: a traceback's text may quote a credential
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
