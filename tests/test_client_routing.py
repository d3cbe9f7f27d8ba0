"""The Python client puts ``?cid=`` on every request, so a load balancer can route on it."""

from __future__ import annotations

from aiohttp import web

from watchgw.client.client import WatchClient
from watchgw.web.server import running_app


async def test_the_python_client_sends_its_cid_in_every_url() -> None:
    """A tiny server at the network edge that answers like the gateway and records each query."""
    seen: list[tuple[str, str | None]] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append(("stream", request.query.get("cid")))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: connected\ndata: {"clientId":"x","resumed":false}\n\n')
        return response

    async def subscribe(request: web.Request) -> web.Response:
        seen.append(("subscribe", request.query.get("cid")))
        return web.json_response({"channel": "api/v1/secrets:::::::"})

    async def unsubscribe(request: web.Request) -> web.Response:
        seen.append(("unsubscribe", request.query.get("cid")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/api/watch/stream", stream)
    app.router.add_post("/api/watch/subscribe", subscribe)
    app.router.add_post("/api/watch/unsubscribe", unsubscribe)
    async with running_app(app) as url, WatchClient(url, client_id="route-me-0001") as client:
        channel = await client.subscribe(resourceType="api/v1/secrets")
        await client.unsubscribe(channel)
    assert seen == [
        ("stream", "route-me-0001"),
        ("subscribe", "route-me-0001"),
        ("unsubscribe", "route-me-0001"),
    ]
