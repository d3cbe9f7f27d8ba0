"""The one redaction helper (``watchgw.logs.redact_text``): what upstream error text and log lines
lose before anyone sees them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from watchgw.config import LogConfig
from watchgw.logs import configure_logging, redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def; next", "Authorization: [redacted]; next"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '{"authorization": "[redacted]"}'),
        ("map[Authorization:[Bearer x.y] Accept:[*/*]]", "map[Authorization:[[redacted]] Accept:[*/*]]"),
        ("token rejected: bearer eyJhbGciOi.x.y", "token rejected: bearer [redacted]"),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_patterns_and_idempotence(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # the log chain may run it twice


def test_known_secrets_and_a_secret_cut_by_truncation() -> None:
    assert redact_text("user sub-123456 denied", ["sub-123456", None, ""]) == "user [redacted] denied"
    # A message cut right inside a token must not keep its first characters.
    assert redact_text("denied for sub-12...", ["sub-123456"]) == "denied for [redacted]..."
    assert redact_text("cut at ab...", ["sub-123456"]) == "cut at ab..."


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_tracebacks_are_redacted_too() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(level="info", format="json"), stream=stream)
    try:
        raise RuntimeError("request with Authorization: Bearer tb-secret-token failed")
    except RuntimeError as exc:
        structlog.get_logger("watchgw.test").error("upstream.error", exc_info=exc)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert "RuntimeError" in line["exception"]
    assert "tb-secret-token" not in stream.getvalue()
