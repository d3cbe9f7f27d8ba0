"""The portal's own client, unchanged, against watchgw (issue: a drop-in behind ``/api/watch``).

``tests/portal_client.py`` behaves like the portal's ``watch.manager.ts``: eight-segment keys it
computes itself, fetch-style reading, no ``Last-Event-ID``, never clears what it holds, gives up on
the first ``watch-error``. Against the simulator, through real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_config
from tests.forward_auth import ForwardAuthServer
from tests.portal_client import PortalClient, object_key
from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient
from watchgw.sim import Fault, Simulator, running_simulator
from watchgw.web.app import make_app
from watchgw.web.server import running_app

SECRETS = "api/v1/secrets"
ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"


def objects_of(sim: Simulator, resource_type: str, *, project: str, namespace: str) -> dict[str, Any]:
    return {object_key(o): o for o in sim.list_objects(resource_type, project=project, namespace=namespace)}


#: The portal's session cookie -> the user's control-plane token (what the forward-auth service knows).
SESSIONS = {"portal-session-of-alice": "tok-alice-0123456789"}


@pytest.fixture(params=["none", "forward"])
def auth_mode(request: pytest.FixtureRequest) -> str:
    """Each test runs without authentication and with the portal's session cookie only."""
    return str(request.param)


@contextlib.asynccontextmanager
async def portal(auth_mode: str, **limits: Any) -> AsyncIterator[tuple[Simulator, str, PortalClient]]:
    async with contextlib.AsyncExitStack() as stack:
        auth: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if auth_mode == "forward":
            forward_url = await stack.enter_async_context(ForwardAuthServer(SESSIONS).running())
            auth = {"mode": "forward", "forward_url": forward_url, "recheck_s": 3600}
            headers = {"Cookie": "session=portal-session-of-alice"}

        # As the portal does: the shared watch runs with a subscriber's own token.
        upstream = {"credential": "subscriber"} if auth_mode == "forward" else {}

        def config_of(url: str) -> Any:
            config = make_config(url, auth=auth, upstream=upstream, limits={"session_ttl_s": 30, **limits})
            return fast_upstream(config)

        def prepare(sim: Simulator) -> None:
            if auth_mode == "forward":
                sim.tokens = {"tok-alice-0123456789": "alice"}  # any authenticated user may read

        sim, _app, url = await stack.enter_async_context(sim_and_gateway(config_of, prepare=prepare))
        client = PortalClient(url, client_id="6b0f5a8e-portal-tab-1", headers=headers)
        stack.push_async_callback(client.close)
        yield sim, url, client


async def stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/watch/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_lists_fill_live_changes_arrive_and_unsubscribe_releases(auth_mode: str) -> None:
    async with portal(auth_mode) as (sim, url, client):
        for name in ("a", "b"):
            sim.create(SECRETS, {"metadata": {"name": name}}, project="p1", namespace="default")
        sim.create(SECRETS, {"metadata": {"name": "elsewhere"}}, project="p1", namespace="other")
        sim.create(ZONES, {"metadata": {"name": "z"}}, project="p1", namespace="default")
        await client.connect()
        # No namespace: the portal means the project's "default" namespace (and keys it as sent).
        secrets = await client.subscribe(resourceType=SECRETS, projectId="p1")
        zones = await client.subscribe(resourceType=ZONES, projectId="p1", namespace="default")
        assert secrets == f"{SECRETS}::p1:::::"
        await client.wait_for(secrets, objects_of(sim, SECRETS, project="p1", namespace="default"))
        await client.wait_for(zones, objects_of(sim, ZONES, project="p1", namespace="default"))
        sim.create(SECRETS, {"metadata": {"name": "c"}}, project="p1", namespace="default")
        sim.update(
            SECRETS, {"metadata": {"name": "a"}, "data": {"v": "2"}}, project="p1", namespace="default"
        )
        sim.delete(SECRETS, "b", project="p1", namespace="default")
        await client.wait_for(secrets, objects_of(sim, SECRETS, project="p1", namespace="default"))
        assert client.dropped == 0, "every event carried a key the client computed"
        assert await client.unsubscribe(zones) == 200
        assert (await stats(url))["subscriptions"].get(zones, 0) == 0


async def test_a_cut_stream_converges_although_the_client_never_clears_its_state(auth_mode: str) -> None:
    async with portal(auth_mode) as (sim, _url, client):
        for name in ("a", "b", "c"):
            sim.create(SECRETS, {"metadata": {"name": name}}, project="p1", namespace="default")
        await client.connect()
        key = await client.subscribe(resourceType=SECRETS, projectId="p1", namespace="default")
        await client.wait_for(key, objects_of(sim, SECRETS, project="p1", namespace="default"))
        await client.disconnect()  # the stream breaks; the gateway keeps running
        sim.delete(SECRETS, "a", project="p1", namespace="default")
        sim.delete(SECRETS, "b", project="p1", namespace="default")
        sim.create(SECRETS, {"metadata": {"name": "d"}}, project="p1", namespace="default")
        await client.connect()  # same cid, no Last-Event-ID; subscribes everything again
        await client.wait_for(key, objects_of(sim, SECRETS, project="p1", namespace="default"))
        assert set(client.objects[key]) == {"default/c", "default/d"}


async def test_a_blip_upstream_is_not_an_error_a_long_failure_is_one_without_addresses(
    auth_mode: str,
) -> None:
    async with portal(auth_mode, watch_error_after_s=1.0) as (sim, _url, client):
        sim.create(SECRETS, {"metadata": {"name": "a"}}, project="p1", namespace="default")
        await client.connect()
        key = await client.subscribe(resourceType=SECRETS, projectId="p1", namespace="default")
        await client.wait_for(key, objects_of(sim, SECRETS, project="p1", namespace="default"))
        # A blip: two failed watches, then the upstream is back; the change made meanwhile arrives.
        sim.inject(Fault(kind="error500", on="watch", count=2))
        sim.cut_watches()
        sim.create(SECRETS, {"metadata": {"name": "b"}}, project="p1", namespace="default")
        await client.wait_for(key, objects_of(sim, SECRETS, project="p1", namespace="default"))
        assert key not in client.errors
        # A failure that lasts: reported once it has lasted watch_error_after_s.
        sim.inject(Fault(kind="error500", on="any", count=10_000))
        sim.cut_watches()
        async with asyncio.timeout(10), client._changed:
            await client._changed.wait_for(lambda: key in client.errors)
        error = client.errors[key]
        assert error["code"] == 500
        assert "127.0.0.1" not in error["message"]


async def test_user_scoped_lists_fill_with_the_session_cookie_only() -> None:
    async with portal("forward") as (sim, _url, client):
        uid = sim.uid_of("alice")
        sim.create(SECRETS, {"metadata": {"name": "mine"}}, user=uid, namespace="default")
        await client.connect()
        key = await client.subscribe(resourceType=SECRETS, namespace="default", userScoped=True)
        assert key == f"{SECRETS}:::default::::user"
        mine = {object_key(o): o for o in sim.list_objects(SECRETS, user=uid, namespace="default")}
        await client.wait_for(key, mine)
        sim.create(SECRETS, {"metadata": {"name": "mine-2"}}, user=uid, namespace="default")
        mine = {object_key(o): o for o in sim.list_objects(SECRETS, user=uid, namespace="default")}
        await client.wait_for(key, mine)


async def test_across_a_gateway_restart_watchgws_own_client_converges() -> None:
    """A new process cannot know what a client held, so a client that never clears its state
    cannot be made exact there; watchgw's own client clears on ``"resumed": false`` (or resyncs
    from its resourceVersion) and converges."""
    async with running_simulator(bookmark_interval_s=0.25) as (sim, sim_url):
        for name in ("a", "b", "c"):
            sim.create(SECRETS, {"metadata": {"name": name}}, project="p1", namespace="default")
        config = fast_upstream(make_config(sim_url))
        async with running_app(make_app(config)) as url:
            port = int(url.rsplit(":", 1)[1])
            client = WatchClient(url)
            try:
                await client.connect()
                key = await client.subscribe(resourceType=SECRETS, projectId="p1", namespace="default")
                await client.wait_for(lambda c: key in c.synced and len(c.objects(key)) == 3)
            except BaseException:
                await client.close()
                raise
        # The gateway is gone; the control plane changes meanwhile.
        sim.delete(SECRETS, "a", project="p1", namespace="default")
        sim.create(SECRETS, {"metadata": {"name": "d"}}, project="p1", namespace="default")
        try:
            async with running_app(make_app(config), port=port):
                connected = await client.reconnect()
                assert connected["resumed"] is False
                expected = objects_of(sim, SECRETS, project="p1", namespace="default")
                await client.wait_for(lambda c: key in c.synced and c.objects(key) == expected)
        finally:
            await client.close()
