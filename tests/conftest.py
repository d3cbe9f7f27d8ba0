"""Fixtures shared by every test: leak detection, a fake upstream, a gateway on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import FakeUpstreams
from watchgw.config import Config, config_from_mapping


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running behind it (upstreams, streams, timers' tasks)."""
    before = {t for t in asyncio.all_tasks() if not t.done()}
    yield
    current = asyncio.current_task()
    for _ in range(20):  # let cancelled tasks finish unwinding (bounded, no wall-clock sleep)
        leaked = [t for t in asyncio.all_tasks() if not t.done() and t is not current and t not in before]
        if not leaked:
            return
        await asyncio.sleep(0)
    pytest.fail(f"tasks leaked: {[t.get_name() + ' ' + repr(t.get_coro()) for t in leaked]}")


def make_config(upstream_url: str = "http://127.0.0.1:1", **sections: dict[str, Any]) -> Config:
    # Failures reach clients at once in tests (the default hides blips of up to 10 s).
    raw: dict[str, Any] = {
        "upstream": {"url": upstream_url},
        "server": {"stats": True, "metrics": True},
        "limits": {"watch_error_after_s": 0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_mapping(raw)


@pytest.fixture
def fake_upstreams() -> FakeUpstreams:
    return FakeUpstreams()


@pytest.fixture
def config() -> Config:
    return make_config(limits={"grace_period_s": 0.2, "session_ttl_s": 0.5})
