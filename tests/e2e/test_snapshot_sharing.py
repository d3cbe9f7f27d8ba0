"""Snapshots are encoded once per version of a channel and written to every client that needs one
(hub/snapshot.py), and still show each client the objects as they are when it subscribes."""

from __future__ import annotations

import contextlib

from tests.conftest import make_config
from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient
from watchgw.hub.hub import WatchHub
from watchgw.sim import Simulator
from watchgw.web.keys import HUB

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-a", "namespace": "default"}


def _populate(sim: Simulator) -> None:
    for i in range(300):
        sim.create(
            "api/v1/secrets",
            {"metadata": {"name": f"s{i:03}"}, "data": {"pad": "x" * 100}},
            project="proj-a",
            namespace="default",
        )


def _state_of(sim: Simulator) -> dict[str, str]:
    return {
        f"{o['metadata']['namespace']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for o in sim.list_objects("api/v1/secrets", project="proj-a", namespace="default")
    }


async def test_clients_snapshotting_one_version_share_its_parts_and_see_later_changes() -> None:
    async with sim_and_gateway(
        lambda url: fast_upstream(make_config(url)), prepare=_populate, bookmark_interval_s=60
    ) as (sim, app, url):
        hub: WatchHub = app[HUB]
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for i in range(4):
                client = WatchClient(url, client_id=f"sharing-{i}")
                stack.push_async_callback(client.close)
                await client.connect()
                clients.append(client)
            first = await clients[0].subscribe(**SECRETS)
            await clients[0].wait_synced(first)
            (channel,) = hub.channels.values()
            built = channel.snapshot_parts_built
            assert built >= 1
            for client in clients[1:3]:
                await client.wait_synced(await client.subscribe(**SECRETS))
            # Three snapshots of the same version: the parts were encoded for the first only.
            assert channel.snapshot_parts_built == built
            assert channel.snapshot_parts_written == 3 * built

            # A change makes a new version: the next client gets the new state, from new parts.
            sim.update(
                "api/v1/secrets",
                {"metadata": {"name": "s007"}, "data": {"pad": "changed"}},
                project="proj-a",
                namespace="default",
            )
            sim.delete("api/v1/secrets", "s008", project="proj-a", namespace="default")
            expected = _state_of(sim)
            await clients[0].wait_for(lambda c: _versions(c, first) == expected)
            late = clients[3]
            await late.wait_synced(await late.subscribe(**SECRETS))
            assert _versions(late, first) == expected
            assert late.objects(first)["default/s007"]["data"] == {"pad": "changed"}
            assert channel.snapshot_parts_built == 2 * built
            for client in clients:
                assert _versions(client, first) == expected


def _versions(client: WatchClient, channel: str) -> dict[str, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in client.objects(channel).items()}
