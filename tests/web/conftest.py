from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from tests.fakes import FakeUpstreams
from watchgw.client.client import WatchClient
from watchgw.config import Config
from watchgw.hub.hub import WatchHub
from watchgw.web.app import make_app
from watchgw.web.keys import HUB
from watchgw.web.server import running_app


@dataclass
class Gateway:
    url: str
    app: web.Application
    upstreams: FakeUpstreams
    clients: list[WatchClient]

    @property
    def hub(self) -> WatchHub:
        return self.app[HUB]

    async def client(self, *, connect: bool = True, **kwargs: Any) -> WatchClient:
        client = WatchClient(self.url, record=True, **kwargs)
        self.clients.append(client)
        if connect:
            await client.connect()
        return client


@pytest.fixture
async def gateway_factory(fake_upstreams: FakeUpstreams) -> AsyncIterator[Callable[..., Any]]:
    stack: list[Any] = []

    async def start(config: Config) -> Gateway:
        app = make_app(config, upstream_factory=fake_upstreams)
        cm = running_app(app)
        url = await cm.__aenter__()
        gw = Gateway(url, app, fake_upstreams, [])
        stack.append((cm, gw))
        return gw

    yield start
    for cm, gw in reversed(stack):
        for client in gw.clients:
            await client.close()
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def gateway(gateway_factory: Callable[..., Any], config: Config) -> Gateway:
    gw: Gateway = await gateway_factory(config)
    return gw
