"""An informer running against the scripted :class:`~tests.kube.fakeapi.FakeAPI`, and a listener
that records what it is told so tests await conditions instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from watchgw.config import UpstreamConfig
from watchgw.kube.client import KubeClient
from watchgw.kube.informer import Informer
from watchgw.kube.types import InformerPhase, InformerState, WatchEvent, WatchTarget

from .fakeapi import FakeAPI

TARGET = WatchTarget("api/v1/pods", namespace="default")


class Recorder:
    """An InformerListener that records, and lets tests await a condition."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.states: list[InformerState] = []
        self.changed = asyncio.Event()

    def on_events(self, events: list[WatchEvent]) -> None:
        self.events.extend(events)
        self.changed.set()

    def on_relist(self, events: list[WatchEvent], resource_version: str) -> None:
        self.on_events(events)

    def on_state(self, state: InformerState) -> None:
        self.states.append(state)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def phases(self) -> list[InformerPhase]:
        return [s.phase for s in self.states]

    def degraded(self) -> list[InformerState]:
        return [s for s in self.states if s.phase is InformerPhase.DEGRADED]

    def applied(self) -> dict[str, str]:
        """The events applied in order from an empty map: key -> resourceVersion."""
        state: dict[str, str] = {}
        for ev in self.events:
            if ev.type == "DELETED":
                state.pop(ev.key, None)
            elif ev.type != "BOOKMARK":
                state[ev.key] = ev.resource_version
        return state


@dataclasses.dataclass
class Harness:
    fake: FakeAPI
    rec: Recorder
    informer: Informer
    client: KubeClient
    task: asyncio.Task[None]

    def cache(self) -> dict[str, str]:
        return {k: ev.resource_version for k, ev in self.informer.objects.items()}


class TopOfRange(random.Random):
    """Full jitter without the jitter: every backoff is its ceiling, so delays are predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


@contextlib.asynccontextmanager
async def running(
    fake: tuple[FakeAPI, str],
    *,
    rng: random.Random | None = None,
    listener: Recorder | None = None,
    token_provider: Callable[[], str | None] | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """An informer on ``fake`` with tiny timings (``overrides`` are :class:`UpstreamConfig` fields)."""
    api, url = fake
    settings: dict[str, Any] = {
        "url": url,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "inactivity_timeout_s": 5.0,
        "watch_timeout_s": 60.0,
        **overrides,
    }
    config = UpstreamConfig(**settings)
    rec = listener if listener is not None else Recorder()
    async with KubeClient(config) as client:
        informer = Informer(
            target=TARGET,
            client=client,
            config=config,
            listener=rec,
            token_provider=token_provider,
            rng=rng if rng is not None else random.Random(1),
        )
        task = asyncio.create_task(informer.run())
        try:
            yield Harness(api, rec, informer, client, task)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            api.release.set()
