"""Typed errors: status -> class, Status bodies, Retry-After, truncation (unit, no network)."""

from __future__ import annotations

import pytest

from watchgw.kube import errors as e


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, e.UnauthorizedError),
        (403, e.ForbiddenError),
        (404, e.NotFoundError),
        (409, e.ConflictError),
        (410, e.GoneError),
        (429, e.TooManyRequestsError),
        (500, e.ServerError),
        (502, e.ServerError),
        (503, e.ServerError),
        (504, e.ServerError),
        (400, e.APIError),
        (422, e.APIError),
    ],
)
def test_error_for_status_picks_class(status: int, cls: type[e.APIError]) -> None:
    err = e.error_for_status(status, reason="R", message="m")
    assert type(err) is cls
    assert (err.status, err.reason, err.message) == (status, "R", "m")


def test_default_reason_and_message() -> None:
    err = e.error_for_status(410)
    assert err.reason == "Expired"
    assert err.message == "Expired"
    assert "410" in str(err)


def test_message_truncated_and_flattened() -> None:
    err = e.error_for_status(500, message="x" * 10_000 + "\nline2")
    assert len(err.message) == e.MAX_MESSAGE_CHARS
    assert err.message.endswith("...")
    assert "\n" not in e.truncate("a\nb\rc")


def test_message_bounded_in_bytes_and_printable() -> None:
    err = e.error_for_status(500, message="\x1b[1m" + "€" * 300 + "\u2028\x00tail")
    assert err.message.isprintable()
    assert len(err.message.encode()) <= e.MAX_MESSAGE_BYTES
    assert err.message.endswith("...")
    assert e.truncate("a\tb\x00c\ud800d") == "a bcd"


def test_reason_short_and_printable() -> None:
    err = e.error_for_status(500, reason="Bad\nReason\x00" + "x" * 500)
    assert err.reason.startswith("BadReason")
    assert err.reason.isprintable()
    assert len(err.reason) <= e.MAX_REASON_CHARS


def test_credentials_in_upstream_text_are_redacted() -> None:
    err = e.error_for_status(
        401, reason="Bearer abc.def", message='header "Authorization: Basic Zm9vOmJhcg==", token s3cr3t-xyz'
    )
    assert "abc.def" not in err.reason
    assert "Zm9vOmJhcg" not in err.message
    err.redact(["s3cr3t-xyz", "", None])
    assert err.message == 'header "Authorization: [redacted]", token [redacted]'
    assert "s3cr3t" not in str(err)
    assert "s3cr3t" not in repr(err)


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("3", 3.0), (" 1.5 ", 1.5), ("-1", None), ("soon", None), ("nan", None), ("inf", None)],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert e.parse_retry_after(header) == expected


def test_status_object_maps_by_code() -> None:
    status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    err = e.error_from_status_object(status)
    assert isinstance(err, e.GoneError)
    assert err.message == "too old resource version"


def test_status_object_retry_after_from_details() -> None:
    status = {"kind": "Status", "code": 429, "reason": "TooManyRequests", "details": {"retryAfterSeconds": 2}}
    err = e.error_from_status_object(status)
    assert isinstance(err, e.TooManyRequestsError)
    assert err.retry_after_s == 2.0


@pytest.mark.parametrize("obj", [None, "text", 5, {"kind": "Pod"}, {"code": 410}])
def test_non_status_error_event_is_malformed(obj: object) -> None:
    assert isinstance(e.error_from_status_object(obj), e.MalformedResponseError)


def test_status_without_code_uses_http_status() -> None:
    err = e.error_from_status_object({"kind": "Status", "message": "no"}, http_status=403)
    assert isinstance(err, e.ForbiddenError)


def test_every_error_is_an_api_error() -> None:
    for cls in (e.MalformedResponseError, e.UpstreamConnectionError, e.ServerError, e.GoneError):
        assert issubclass(cls, e.APIError)
    assert e.UpstreamConnectionError().status == 503
    assert e.MalformedResponseError().status == 502
