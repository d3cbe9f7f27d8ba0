"""Request bodies and errors: bounded reads, strict JSON, one error shape.

Every error is ``{"error": {"code": "<snake_case>", "message": "<sentence>"}}`` (PROTOCOL.md 3).
Bodies are read up to ``max_body_bytes`` and no further, whatever ``Content-Length`` claims; JSON
with duplicate keys or nested deeper than :data:`MAX_DEPTH` is refused (a client must not be able
to make two readers of one body disagree, or make the parser recurse without bound). A body must
be ``application/json`` (415 otherwise) and arrive within ``server.body_timeout_s`` (408).

Every JSON answer goes through :func:`json_response`, which ends the body with a newline: ``curl``
prints answers as they are, and without it the shell prompt lands on the answer's last line.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, NoReturn

from aiohttp import web

from watchgw.hub.errors import HubError

MAX_DEPTH = 8


class RequestError(HubError):
    """A request-level refusal with an explicit status and code; ``close_connection``: the
    answer ends the connection (``Connection: close``, no lingering read of the rest)."""

    def __init__(self, status: int, code: str, message: str, *, close_connection: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.close_connection = close_connection


class RateLimited(HubError):
    """429 ``rate_limited``. ``retry_after_s`` is the wait in whole seconds, rounded up (at least
    1): the one figure the ``Retry-After`` header, the body's ``retryAfter`` and the message all
    carry, so a client reading any of them waits long enough and they never disagree."""

    status, code = 429, "rate_limited"

    def __init__(self, wait_s: float) -> None:
        retry_after_s = max(1, math.ceil(wait_s))
        super().__init__(f"too many requests: retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def _dumps(value: Any) -> str:
    return json.dumps(value) + "\n"


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer that ends with a newline (the one place every JSON answer is made)."""
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """The error shape; ``extra``: more members of the error object (``retryAfter`` of a 429)."""
    error = {"code": code, "message": message, **(extra or {})}
    return json_response({"error": error}, status=status, headers=headers)


def fail(status: int, code: str, message: str) -> NoReturn:
    raise RequestError(status, code, message)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            fail(400, "invalid_json", f"duplicate key {json.dumps(key)[:80]} in the body")
        out[key] = value
    return out


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max([level, *(_depth(v, level + 1) for v in value.values())])
    if isinstance(value, list):
        return max([level, *(_depth(v, level + 1) for v in value)])
    return level


def require_json(request: web.Request) -> None:
    """``Content-Type: application/json`` (parameters such as ``charset=utf-8`` allowed), or 415.

    What a cross-site HTML form cannot send: a form can POST ``text/plain`` with the victim's
    cookies and no preflight, so a body that JSON-parses is not enough."""
    if "Content-Type" not in request.headers or request.content_type != "application/json":
        fail(
            415,
            "unsupported_media_type",
            "the body must be sent with Content-Type: application/json",
        )


async def read_json_object(request: web.Request, max_bytes: int, *, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object, or a :class:`RequestError` that says what is wrong. The whole
    body must arrive within ``timeout_s`` (one deadline, so trickling a byte at a time does not
    extend it); otherwise 408 and the connection is closed."""
    if request.content_length is not None and request.content_length > max_bytes:
        fail(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    fail(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(
            408,
            "request_timeout",
            f"the body was not received within {timeout_s:g} s",
            close_connection=True,
        ) from None
    raw = b"".join(chunks)
    if not raw.strip():
        fail(400, "invalid_json", "the body is empty: send a JSON object")
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:
        fail(400, "invalid_json", f"the body is nested deeper than {MAX_DEPTH} levels")
    except UnicodeDecodeError:
        fail(400, "invalid_json", "the body is not UTF-8")
    except ValueError as exc:
        fail(400, "invalid_json", f"the body is not valid JSON: {str(exc)[:120]}")
    if not isinstance(value, dict):
        fail(400, "invalid_json", "the body must be a JSON object")
    if _depth(value) > MAX_DEPTH:
        fail(400, "invalid_json", f"the body is nested deeper than {MAX_DEPTH} levels")
    return value
