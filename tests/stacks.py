"""The simulator and a gateway in front of it, as the end-to-end tests and the chaos run use them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from watchgw.config import Config
from watchgw.sim import Simulator, running_simulator
from watchgw.web.app import make_app
from watchgw.web.server import running_app


def fast_upstream(config: Config, **overrides: Any) -> Config:
    """Upstream timings for tests: retries in milliseconds, silence noticed within a second."""
    timings: dict[str, Any] = {
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.1,
        "inactivity_timeout_s": 1.0,
        "watch_timeout_s": 30,
        **overrides,
    }
    return dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, **timings))


@contextlib.asynccontextmanager
async def sim_and_gateway(
    config_of: Callable[[str], Config],
    *,
    prepare: Callable[[Simulator], None] | None = None,
    **sim_kwargs: Any,
) -> AsyncIterator[tuple[Simulator, web.Application, str]]:
    """A simulator, then a gateway configured for it; yields (sim, app, gateway URL).

    The simulator sends bookmarks every 0.25 s unless told otherwise, as an API server does every
    minute: a healthy idle watch is never silent for :func:`fast_upstream`'s inactivity timeout."""
    sim_kwargs.setdefault("bookmark_interval_s", 0.25)
    async with running_simulator(**sim_kwargs) as (sim, sim_url):
        if prepare is not None:
            prepare(sim)
        app = make_app(config_of(sim_url))
        async with running_app(app) as url:
            yield sim, app, url
