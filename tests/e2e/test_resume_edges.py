"""Resume and subscribe at their edges, through HTTP against the simulator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import make_config
from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient, WatchClientError
from watchgw.sim import Simulator, running_simulator
from watchgw.web.app import make_app
from watchgw.web.server import running_app

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-a", "namespace": "default"}
ZONES = {
    "resourceType": "apis/dns.networking.miloapis.com/v1alpha1/dnszones",
    "projectId": "proj-a",
    "namespace": "default",
}


@contextlib.asynccontextmanager
async def gateway(**limits: Any) -> AsyncIterator[tuple[Simulator, WatchClient]]:
    async with sim_and_gateway(lambda url: fast_upstream(make_config(url, limits=limits))) as (
        sim,
        _app,
        url,
    ):
        client = WatchClient(url, record=True)
        try:
            await client.connect()
            yield sim, client
        finally:
            await client.close()


async def test_a_resume_whose_log_lost_an_unsubscribed_still_hears_it() -> None:
    async with gateway(client_buffer_bytes=4096, session_ttl_s=30) as (sim, client):
        zones = await client.subscribe(**ZONES)
        secrets = await client.subscribe(**SECRETS)
        await client.wait_for(lambda c: {zones, secrets} <= c.synced)
        position = client.last_event_id
        await client.unsubscribe(zones)
        await client.wait_for(lambda c: c.unsubscribed.get(zones) == "client")
        for i in range(40):  # enough frames of another channel to push it out of the resume log
            sim.create(
                "api/v1/secrets",
                {"metadata": {"name": f"s{i}"}, "data": {"pad": "x" * 200}},
                project="proj-a",
                namespace="default",
            )
        await client.wait_for(lambda c: len(c.objects(secrets)) == 40)
        # The stream breaks, and what came after ``position`` never reached the client.
        await client.disconnect()
        client.last_event_id = position
        client.unsubscribed.clear()
        client.state[zones] = {}
        connected = await client.connect(resume=True)
        assert connected["resumed"] is True
        await client.wait_for(lambda c: c.unsubscribed.get(zones) == "client")
        assert zones not in client.state


@pytest.mark.parametrize("version", ["\uff11\uff12", "12a", "-1", " 12", "9" * 5000, "1" * 33])
async def test_a_resource_version_that_is_not_short_ascii_digits_is_refused_cleanly(version: str) -> None:
    async with gateway() as (sim, client):
        sim.create("api/v1/secrets", {"metadata": {"name": "a"}}, project="proj-a", namespace="default")
        with pytest.raises(WatchClientError) as refused:
            await client.subscribe(**SECRETS, resourceVersion=version)
        assert (refused.value.status, refused.value.code) == (400, "invalid_request")
        assert "resourceVersion" in refused.value.message
        # Nothing half-made: the same channel subscribes normally afterwards and gets its snapshot.
        channel = await client.subscribe(**SECRETS)
        await client.wait_synced(channel)
        assert set(client.objects(channel)) == {"default/a"}
        subscribed = [e for e in client.events if e.event == "subscribed"]
        assert len(subscribed) == 1, "the refused subscribe sent nothing"


@pytest.mark.parametrize("home_first", [True, False], ids=["home-replica-older", "home-replica-newer"])
async def test_an_event_id_from_another_replica_never_resumes_a_session_here(home_first: bool) -> None:
    # Behind a load balancer a client can come back to a replica that still holds its session
    # (within session_ttl_s) carrying the Last-Event-ID of a frame another replica wrote. That
    # position says nothing about what this replica delivered: the client must start over.
    async with running_simulator(bookmark_interval_s=0.25) as (sim, sim_url):
        sim.create("api/v1/secrets", {"metadata": {"name": "a"}}, project="proj-a", namespace="default")
        config = fast_upstream(make_config(sim_url, limits={"session_ttl_s": 30}))
        async with contextlib.AsyncExitStack() as stack:
            urls = [await stack.enter_async_context(running_app(make_app(config))) for _ in range(2)]
            home, other = urls if home_first else urls[::-1]
            client = WatchClient(home, client_id="moving-client", record=True)
            stack.push_async_callback(client.close)
            await client.connect()
            await client.wait_synced(await client.subscribe(**SECRETS))
            await client.disconnect()  # the session here lives on for session_ttl_s

            elsewhere = WatchClient(other, client_id="moving-client", record=True)
            stack.push_async_callback(elsewhere.close)
            await elsewhere.connect()
            await elsewhere.wait_synced(await elsewhere.subscribe(**SECRETS))
            foreign_id = elsewhere.last_event_id
            await elsewhere.disconnect()

            client.last_event_id = foreign_id
            connected = await client.connect(resume=True)
            assert connected["resumed"] is False, "a position written by another replica was resumed"
