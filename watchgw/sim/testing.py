"""Run a simulator on a free local port for tests: ``async with running_simulator() as (sim, url)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from .server import make_sim_app
from .store import Simulator

__all__ = ["running_simulator"]


@asynccontextmanager
async def running_simulator(
    sim: Simulator | None = None, **sim_kwargs: Any
) -> AsyncIterator[tuple[Simulator, str]]:
    """Serve ``sim`` (or ``Simulator(**sim_kwargs)``) on 127.0.0.1 with a free port.

    Yields ``(sim, "http://127.0.0.1:PORT")``. On exit every open stream is ended and the runner is
    cleaned up, so no task or socket outlives the block.
    """
    if sim is None:
        sim = Simulator(**sim_kwargs)
    elif sim_kwargs:
        raise TypeError("pass either a Simulator or keyword arguments for one, not both")
    runner = web.AppRunner(
        make_sim_app(sim), handler_cancellation=True, access_log=None, shutdown_timeout=5.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        sim.closing = False
        yield sim, f"http://127.0.0.1:{port}"
    finally:
        await sim.end_streams()
        await runner.cleanup()
