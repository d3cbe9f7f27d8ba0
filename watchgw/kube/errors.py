"""Typed errors of the control plane, picked by status in one function.

Every error a request or a watch stream can end with is an :class:`APIError` with an HTTP-ish
``status``, a Kubernetes-style ``reason`` and a human ``message`` truncated to
:data:`MAX_MESSAGE_CHARS`, so it can be logged or forwarded to clients without leaking a large
upstream body. Transport failures are :class:`UpstreamConnectionError` (status 503) and
unparseable bodies or lines are :class:`MalformedResponseError` (status 502): the informer handles
every failure through the same three attributes.
"""

from __future__ import annotations

import math
from typing import Any

#: Upstream text longer than this is cut (with an ellipsis) before it is stored, logged or sent.
MAX_MESSAGE_CHARS = 300


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` when cut; control chars flattened."""
    if len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text


class APIError(Exception):
    """The control plane answered with an error (or could not be understood / reached)."""

    default_status: int = 500
    default_reason: str = "InternalError"

    def __init__(self, message: str = "", *, status: int | None = None, reason: str = "") -> None:
        self.status: int = self.default_status if status is None else status
        self.reason: str = reason or self.default_reason
        self.message: str = truncate(message or self.reason)
        super().__init__(self.message)

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
