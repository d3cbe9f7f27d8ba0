"""A small scripted Kubernetes API server (aiohttp) for stream-shape tests of the informer.

Each watch request takes the next script from ``watch_scripts`` (then ``default_watch``, which
stalls until teardown unless a test sets another);
each LIST takes the next from ``list_scripts`` (default: ``items`` at ``list_rv``). Requests are
recorded with their query and the loop time, so tests await conditions instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import ujson
from aiohttp import web

Script = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pod(name: str, rv: int | str, namespace: str = "default", **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(rv)},
        **extra,
    }


def line(kind: str, obj: Any) -> bytes:
    return ujson.dumps({"type": kind, "object": obj}, escape_forward_slashes=False).encode() + b"\n"


def bookmark(rv: int | str) -> bytes:
    return line("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}})


def status(code: int, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message or reason,
    }


class FakeAPI:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.list_rv = "1"
        self.list_scripts: list[Script] = []
        self.watch_scripts: list[Script] = []
        self.default_watch: Script | None = None
        self.list_requests: list[dict[str, str]] = []
        self.watch_requests: list[dict[str, str]] = []
        self.request_times: list[float] = []
        self.release = asyncio.Event()
        self.changed = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default/pods", self._handle)
        return app

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.request_times.append(asyncio.get_running_loop().time())
        if query.get("watch") == "true":
            assert request.query.getall("watch") == ["true"]  # each parameter exactly once
            self.watch_requests.append(query)
            if self.watch_scripts:
                script = self.watch_scripts.pop(0)
            else:
                script = self.default_watch if self.default_watch is not None else self.stall()
        else:
            self.list_requests.append(query)
            script = self.list_scripts.pop(0) if self.list_scripts else self._list
        self.changed.set()
        return await script(request)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": self.list_rv},
                "items": self.items,
            }
        )

    # -- scripts -----------------------------------------------------------------------------

    def stream(
        self, *chunks: bytes, then: str = "end", chunk_size: int | None = None, hold_s: float = 0.0
    ) -> Script:
        """200, ``chunks`` written one by one (re-cut to ``chunk_size``), ``hold_s`` of silence,
        then end/stall/cut."""

        async def script(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            await resp.prepare(request)
            data = b"".join(chunks)
            parts = (
                list(chunks)
                if chunk_size is None
                else [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
            )
            for part in parts:
                await resp.write(part)
            if hold_s:
                await asyncio.sleep(hold_s)  # the upstream's own pacing: a healthy, quiet watch
            if then == "stall":
                await self.release.wait()
            elif then == "cut":
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write_eof()
            return resp

        return script

    def stall(self) -> Script:
        return self.stream(then="stall")

    def drip(self, head: bytes, *, every_s: float = 0.01) -> Script:
        """200, ``head``, then one space every ``every_s`` forever: bytes flow, no line completes."""

        async def script(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            await resp.prepare(request)
            await resp.write(head)
            try:
                while not self.release.is_set():
                    await asyncio.sleep(every_s)
                    await resp.write(b" ")
            except ConnectionError:
                pass  # the client gave up on us: what the test waits for
            return resp

        return script

    def error(self, code: int, body: Any = None, headers: dict[str, str] | None = None) -> Script:
        async def script(request: web.Request) -> web.StreamResponse:
            payload = body if body is not None else status(code, "Err")
            return web.json_response(payload, status=code, headers=headers)

        return script

    def raw(self, body: bytes, status: int = 200) -> Script:
        """``body`` exactly as given (what ``json.dumps`` cannot write: ``1e999``, ``NaN``, bad UTF-8)."""

        async def script(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, status=status, content_type="application/json")

        return script

    def list_of(self, items: list[dict[str, Any]], rv: str) -> Script:
        async def script(request: web.Request) -> web.StreamResponse:
            return web.json_response(
                {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}
            )

        return script
