"""Logging: JSON lines off a terminal, stable event names, and no token ever in a line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from watchgw.config import LogConfig
from watchgw.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    structlog.reset_defaults()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_with_stable_fields_and_redaction() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(level="info", format="auto"), stream=stream)
    log = structlog.get_logger("watchgw.test")
    log.info("upstream.connected", channel="api/v1/secrets::::::", token="s3cr3t-token")
    log.info("request.seen", header="Authorization: Bearer abc.def.ghi")
    logging.getLogger("aiohttp.access").info("GET /x Bearer zzz-token-zzz")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "upstream.connected"
    assert lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")
    text = stream.getvalue()
    for secret in ("s3cr3t-token", "abc.def.ghi", "zzz-token-zzz"):
        assert secret not in text
    assert lines[2]["logger"] == "aiohttp.access"


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(level="warning", format="json"), stream=stream)
    structlog.get_logger("t").info("quiet.event")
    structlog.get_logger("t").warning("loud.event")
    assert "quiet.event" not in stream.getvalue()
    assert "loud.event" in stream.getvalue()
