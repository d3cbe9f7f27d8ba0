"""The one structlog configuration.

JSON lines when stderr is not a terminal (systemd's journal, log shippers), a readable console on
one. Standard-library loggers (``aiohttp.access``, ``aiohttp.server``) go through the same
renderer. Event names are stable ``noun.verb`` strings (``upstream.connected``,
``client.subscribed``) so dashboards and alerts can key on them.

Tokens never reach a log line: :func:`redact_secrets` runs on every event and masks the values of
keys that carry credentials and anything that looks like a bearer token.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from watchgw.config import LogConfig

_SECRET_KEYS = frozenset({"token", "authorization", "cookie", "password", "secret", "bearer"})
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask credential-bearing keys and ``Bearer <token>`` in strings."""
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS and value:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str) and "earer" in value:
            event_dict[key] = _BEARER.sub(r"\1[redacted]", value)
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
