"""Fixtures of the upstream-side tests (``watchgw.kube``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.pytest_plugin import AiohttpServer

from . import aioresponses_shim
from .fakeapi import FakeAPI

aioresponses_shim.install()


@pytest.fixture
async def fake(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[FakeAPI, str]]:
    """A scripted API server on loopback, and its base URL."""
    api = FakeAPI()
    server = await aiohttp_server(api.app(), host="127.0.0.1")
    yield api, str(server.make_url("")).rstrip("/")
    api.release.set()
