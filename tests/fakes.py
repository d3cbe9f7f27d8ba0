"""A fake upstream for hub and HTTP tests: the test plays the informer."""

from __future__ import annotations

import asyncio
from typing import Any

import ujson

from watchgw.hub.channel import Channel
from watchgw.kube.types import (
    EventType,
    InformerPhase,
    InformerState,
    ObjectKey,
    WatchEvent,
    WatchTarget,
)


def make_object(name: str, *, namespace: str = "default", rv: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(rv)},
        **extra,
    }


def event_of(type: EventType, obj: dict[str, Any]) -> WatchEvent:
    meta = obj["metadata"]
    key = ObjectKey(f"{meta.get('namespace')}/{meta['name']}" if meta.get("namespace") else meta["name"])
    return WatchEvent(type, key, obj, ujson.dumps(obj).encode(), meta["resourceVersion"])


class FakeUpstream:
    def __init__(self, target: WatchTarget, listener: Channel) -> None:
        self.target = target
        self.listener = listener
        self.objects: dict[ObjectKey, WatchEvent] = {}
        self.resource_version = ""
        self.running = asyncio.Event()
        self.cancelled = False
        self.watch_restarts = 0
        self._crash: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        self.running.set()
        try:
            await self._crash
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def restart_watch(self) -> None:
        self.watch_restarts += 1

    def crash(self, error: Exception) -> None:
        """The informer dies of a bug."""
        self._crash.set_exception(error)

    def listed(self, *objects: dict[str, Any], rv: int) -> None:
        """The first LIST (or a relist) completed with these objects."""
        self.resource_version = str(rv)
        for obj in objects:
            self.emit("ADDED", obj)
        self.listener.on_state(InformerState(InformerPhase.WATCHING, resource_version=str(rv)))

    def emit(self, type: EventType, obj: dict[str, Any]) -> None:
        event = event_of(type, obj)
        if type == "DELETED":
            self.objects.pop(event.key, None)
        else:
            self.objects[event.key] = event
        self.resource_version = max(self.resource_version, event.resource_version, key=lambda v: int(v or 0))
        self.listener.on_events([event])

    def degraded(self, code: int = 503, reason: str = "ConnectionFailed", message: str = "down") -> None:
        self.listener.on_state(
            InformerState(InformerPhase.DEGRADED, error_code=code, error_reason=reason, error_message=message)
        )


class FakeUpstreams:
    """The upstream factory: remembers every upstream it made, by channel key."""

    def __init__(self) -> None:
        self.made: list[FakeUpstream] = []

    def __call__(self, target: WatchTarget, listener: Channel) -> FakeUpstream:
        upstream = FakeUpstream(target, listener)
        self.made.append(upstream)
        return upstream

    def for_key(self, key: str) -> FakeUpstream:
        matches = [u for u in self.made if u.listener.key == key]
        assert matches, f"no upstream for {key}"
        return matches[-1]
