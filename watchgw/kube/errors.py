"""Typed errors of the control plane, picked by status in one function.

Every error a request or a watch stream can end with is an :class:`APIError` with an HTTP-ish
``status``, a Kubernetes-style ``reason`` and a human ``message``, so it can be logged or forwarded
to clients (the hub's ``watch-error``) as it is. Upstream text is cleaned when the error is made:
credentials it quotes are replaced by ``[redacted]`` (:func:`watchgw.logs.redact_text`; the tokens
in use are removed by the client with :meth:`APIError.redact`), characters that are not printable
are dropped (line breaks become spaces), the reason is cut to :data:`MAX_REASON_CHARS` and the
message to :data:`MAX_MESSAGE_CHARS` characters and :data:`MAX_MESSAGE_BYTES` bytes of UTF-8.

Transport failures are :class:`UpstreamConnectionError` (status 503), unparseable bodies or lines
:class:`MalformedResponseError` (502), unusable local TLS files :class:`CredentialError` (500) and
bugs :class:`InternalError` (500): the informer handles every failure through the same three
attributes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from watchgw.logs import redact_text

#: Upstream text longer than this is cut (with an ellipsis) before it is stored, logged or sent.
MAX_MESSAGE_CHARS = 300
#: ... and never more than this many bytes of UTF-8 (300 characters of CJK would be 900).
MAX_MESSAGE_BYTES = 512
#: A reason is a short CamelCase word (``Expired``); anything longer is not one.
MAX_REASON_CHARS = 64


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` printable (line breaks and tabs become spaces, other control, format and surrogate
    characters are dropped) and at most ``limit`` characters and ``max_bytes`` UTF-8 bytes, marked
    with ``...`` when cut."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)
    if len(text) <= limit and (text.isascii() or len(text.encode()) <= max_bytes):
        return text
    head = text[: max(limit - 3, 0)]
    data = head.encode()
    if len(data) > max_bytes - 3:
        head = data[: max(max_bytes - 3, 0)].decode("utf-8", "ignore")
    return head + "..."


def _clean_reason(reason: str) -> str:
    """A reason fit for a frame: no credential, printable, no spaces, at most MAX_REASON_CHARS."""
    if reason.isalnum() and len(reason) <= MAX_REASON_CHARS:
        return reason  # the usual CamelCase word
    reason = redact_text(reason)
    reason = "".join(c for c in reason if c.isprintable() and not c.isspace())
    return truncate(reason, MAX_REASON_CHARS, 2 * MAX_REASON_CHARS)


class APIError(Exception):
    """The control plane answered with an error (or could not be understood / reached)."""

    default_status: int = 500
    default_reason: str = "InternalError"

    def __init__(
        self, message: str = "", *, status: int | None = None, reason: str = "", detail: str = ""
    ) -> None:
        self.status: int = self.default_status if status is None else status
        # Redact before cutting: a credential cut in half would no longer be recognised.
        self.reason: str = _clean_reason(reason) or self.default_reason
        self.message: str = (truncate(redact_text(message)) if message else "") or self.reason
        self.detail: str = truncate(redact_text(detail)) if detail else ""
        """For the log only (it may name internal addresses); ``message`` is what clients see."""
        super().__init__(self.message)

    def redact(self, secrets: Iterable[str | None]) -> None:
        """Replace each of ``secrets`` (the tokens the request used) in reason and message."""
        self.reason = redact_text(self.reason, secrets)
        self.message = redact_text(self.message, secrets)
        self.detail = redact_text(self.detail, secrets)
        self.args = (self.message,)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, reason={self.reason!r}, message={self.message!r})"
        )


class UnauthorizedError(APIError):
    default_status = 401
    default_reason = "Unauthorized"


class ForbiddenError(APIError):
    default_status = 403
    default_reason = "Forbidden"


class NotFoundError(APIError):
    default_status = 404
    default_reason = "NotFound"


class ConflictError(APIError):
    default_status = 409
    default_reason = "Conflict"


class GoneError(APIError):
    """410: the requested resourceVersion is too old (``Expired``/``Gone``); relist."""

    default_status = 410
    default_reason = "Expired"


class TooManyRequestsError(APIError):
    default_status = 429
    default_reason = "TooManyRequests"

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        reason: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.retry_after_s = retry_after_s


class ServerError(APIError):
    """5xx from the control plane."""

    default_status = 500
    default_reason = "InternalError"


class MalformedResponseError(APIError):
    """A body or a stream line that is not the JSON shape the protocol promises."""

    default_status = 502
    default_reason = "MalformedResponse"


class UpstreamConnectionError(APIError):
    """Connect failure, reset, TLS failure or timeout: the control plane could not be reached."""

    default_status = 503
    default_reason = "ConnectionFailed"


class ShortWatchError(UpstreamConnectionError):
    """A watch that ended at once without a single event or bookmark (client-go: "very short
    watch"): an error, not a success, or an upstream that does this would be asked again at once."""

    default_reason = "ShortWatch"


class InactiveWatchError(UpstreamConnectionError):
    """A watch that sent no complete event or bookmark for ``inactivity_timeout_s``."""

    default_reason = "Inactive"


class CredentialError(APIError):
    """The gateway's own credential cannot be used (a TLS file missing, unreadable or invalid):
    a problem on this side, reported to subscribers like any upstream failure and retried, since
    the file may be fixed without a restart. The message names the setting and the path."""

    default_status = 500
    default_reason = "CredentialError"


class InternalError(APIError):
    """A failure inside the gateway while serving a channel (a bug): the message names only the
    exception's type, the log has the traceback."""

    default_status = 500
    default_reason = "InternalError"


_BY_STATUS: dict[int, type[APIError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    429: TooManyRequestsError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (the delta-seconds form); ``None`` when absent or invalid."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def error_for_status(
    status: int,
    *,
    reason: str = "",
    message: str = "",
    retry_after_s: float | None = None,
) -> APIError:
    """The one place that maps a status code to its :class:`APIError` class."""
    cls = _BY_STATUS.get(status)
    if cls is TooManyRequestsError:
        return TooManyRequestsError(message, status=status, reason=reason, retry_after_s=retry_after_s)
    if cls is not None:
        return cls(message, status=status, reason=reason)
    if 500 <= status <= 599:
        return ServerError(message, status=status, reason=reason)
    return APIError(message, status=status, reason=reason or "Unknown")


def is_status_object(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == "Status"


def error_from_status_object(
    obj: Any, *, http_status: int | None = None, retry_after_s: float | None = None
) -> APIError:
    """An error from a ``metav1.Status`` body or in-stream ERROR object.

    ``obj`` that is not a Status gives :class:`MalformedResponseError` when ``http_status`` is None
    (an in-stream ERROR event), else the class of ``http_status`` with no upstream details.
    """
    if not is_status_object(obj):
        if http_status is None:
            return MalformedResponseError("watch ERROR event whose object is not a Status")
        return error_for_status(http_status, retry_after_s=retry_after_s)
    code = obj.get("code")
    if isinstance(code, bool) or not isinstance(code, int) or code <= 0:
        code = http_status if http_status is not None else 500
    reason = obj.get("reason")
    message = obj.get("message")
    if retry_after_s is None:
        details = obj.get("details")
        if isinstance(details, dict):
            seconds = details.get("retryAfterSeconds")
            if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
                retry_after_s = float(seconds)
    return error_for_status(
        code,
        reason=reason if isinstance(reason, str) else "",
        message=message if isinstance(message, str) else "",
        retry_after_s=retry_after_s,
    )
