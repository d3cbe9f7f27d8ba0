"""A client that behaves like the portal's browser client (cloud-portal ``watch.manager.ts``), for tests.

Written from its observable behaviour, not its code: it computes eight-segment channel keys itself
(the seven fields joined with ``:``, then ``user`` or empty) and drops events whose ``channel`` it
does not know; it reads the stream as a plain byte stream (``fetch`` and a body reader: split on a
blank line, keep only ``event:`` and ``data:`` lines), never sends ``Last-Event-ID``, ignores
``connected`` beyond "now I may subscribe", and ignores ``synced``, ``resync``, ``reconnect``,
``unsubscribed`` and ``retry:``. It never clears what it holds: ADDED and MODIFIED set an object,
DELETED removes it. After a broken stream it reconnects with the same ``cid`` and subscribes every
channel again. ``waitFor`` rejects on the first ``watch-error`` of its channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import ujson

FIELDS = ("resourceType", "orgId", "projectId", "namespace", "name", "labelSelector", "fieldSelector")


def portal_key(options: dict[str, Any]) -> str:
    return ":".join([*(options.get(f) or "" for f in FIELDS), "user" if options.get("userScoped") else ""])


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


class WatchError(Exception):
    pass


class PortalClient:
    def __init__(self, base_url: str, *, client_id: str, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.headers = dict(headers or {})
        self.channels: dict[str, dict[str, Any]] = {}
        """Key -> subscribe options, as the client computed the key."""
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.dropped = 0
        """Events whose channel the client does not know (a key it did not compute)."""
        self.connected = asyncio.Event()
        self._changed = asyncio.Condition()
        self._session = aiohttp.ClientSession()
        self._reader: asyncio.Task[None] | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def connect(self) -> None:
        """Open the stream; once ``connected`` arrives, subscribe every channel (again)."""
        await self.disconnect()
        self.connected = asyncio.Event()
        response = await self._session.get(
            f"{self.base_url}/api/watch/stream",
            params={"cid": self.client_id},
            headers={"Accept": "text/event-stream", **self.headers},
            timeout=aiohttp.ClientTimeout(total=None),
        )
        assert response.status == 200, f"stream: {response.status}"
        self._response = response
        self._reader = asyncio.create_task(self._read(response))
        async with asyncio.timeout(5):
            await self.connected.wait()
        for options in list(self.channels.values()):
            await self._server_subscribe(options)

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        buffer = ""
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            async for chunk in response.content.iter_any():
                buffer += chunk.decode()
                *messages, buffer = buffer.split("\n\n")
                for message in messages:
                    self._handle(message)
                async with self._changed:
                    self._changed.notify_all()

    def _handle(self, raw: str) -> None:
        event, data = "", []
        for line in raw.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if not event or not data:
            return
        parsed = ujson.loads("\n".join(data))
        if event == "connected":
            self.connected.set()
        elif event in ("watch", "watch-error"):
            channel = parsed.get("channel")
            if channel not in self.channels:
                self.dropped += 1
                return
            if event == "watch-error":
                self.errors[channel] = parsed
                return
            held = self.objects.setdefault(channel, {})
            obj = parsed["object"]
            if parsed["type"] in ("ADDED", "MODIFIED"):
                held[object_key(obj)] = obj
            elif parsed["type"] == "DELETED":
                held.pop(object_key(obj), None)

    async def subscribe(self, **options: Any) -> str:
        key = portal_key(options)
        self.channels[key] = options
        if self.connected.is_set():
            await self._server_subscribe(options)
        return key

    async def _server_subscribe(self, options: dict[str, Any]) -> None:
        body = {"clientId": self.client_id, **options}
        async with self._session.post(
            f"{self.base_url}/api/watch/subscribe", json=body, headers=self.headers
        ) as response:
            assert response.status == 200, f"subscribe: {response.status} {await response.text()}"

    async def unsubscribe(self, key: str) -> int:
        self.channels.pop(key, None)
        body = {"clientId": self.client_id, "channel": key}
        async with self._session.post(
            f"{self.base_url}/api/watch/unsubscribe", json=body, headers=self.headers
        ) as response:
            return response.status

    async def wait_for(self, key: str, expected: dict[str, Any], *, timeout: float = 5.0) -> None:
        """Until the channel holds exactly ``expected`` (by key); a ``watch-error`` fails at once."""

        def done() -> bool:
            if key in self.errors:
                raise WatchError(self.errors[key])
            return self.objects.get(key, {}).keys() == expected.keys() and all(
                self.objects[key][k] == v for k, v in expected.items()
            )

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(done)

    async def disconnect(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def close(self) -> None:
        await self.disconnect()
        await self._session.close()
