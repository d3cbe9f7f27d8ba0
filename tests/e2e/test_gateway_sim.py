"""End to end: real sockets, the real informer, the simulator as the control plane."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import make_config
from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient
from watchgw.config import Config
from watchgw.hub.hub import WatchHub
from watchgw.sim import Fault, Simulator
from watchgw.web.keys import HUB

SECRETS = "api/v1/secrets"
ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"


@dataclasses.dataclass
class Stack:
    sim: Simulator
    url: str
    hub: WatchHub
    clients: list[WatchClient]

    async def client(self) -> WatchClient:
        client = WatchClient(self.url, record=True)
        self.clients.append(client)
        await client.connect()
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()


def fast_config(sim_url: str) -> Config:
    return fast_upstream(make_config(sim_url, limits={"grace_period_s": 0.5, "session_ttl_s": 0.5}))


@pytest.fixture
async def stack_factory() -> AsyncIterator[Callable[..., Any]]:
    async with contextlib.AsyncExitStack() as exits:

        async def start(config_of: Callable[[str], Config] = fast_config) -> Stack:
            sim, app, url = await exits.enter_async_context(sim_and_gateway(config_of))
            stack = Stack(sim, url, app[HUB], [])
            exits.push_async_callback(stack.close_clients)
            return stack

        yield start


@pytest.fixture
async def stack(stack_factory: Callable[..., Any]) -> Stack:
    result: Stack = await stack_factory()
    return result


def sim_state(sim: Simulator, resource_type: str, **scope: str) -> dict[str, Any]:
    return {
        f"{o['metadata']['namespace']}/{o['metadata']['name']}": o
        for o in sim.list_objects(resource_type, **scope)
    }


def churn(sim: Simulator, rng: random.Random, steps: int, *, project: str = "proj-abc") -> None:
    for _ in range(steps):
        names = [
            o["metadata"]["name"] for o in sim.list_objects(SECRETS, project=project, namespace="default")
        ]
        action = rng.random()
        if not names or action < 0.4:
            sim.create(
                SECRETS,
                {"metadata": {"name": f"s-{rng.randrange(10**9)}"}, "data": {"v": str(rng.random())}},
                project=project,
                namespace="default",
            )
        elif action < 0.75:
            name = rng.choice(names)
            obj = sim.get(SECRETS, name, project=project, namespace="default")
            assert obj is not None
            obj["data"] = {"v": str(rng.random())}
            sim.update(SECRETS, obj, project=project, namespace="default")
        else:
            sim.delete(SECRETS, rng.choice(names), project=project, namespace="default")


async def test_n_clients_one_channel_one_list_one_watch(stack: Stack) -> None:
    sim = stack.sim
    for i in range(3):
        sim.create(SECRETS, {"metadata": {"name": f"pre-{i}"}}, project="proj-abc", namespace="default")
    clients = [await stack.client() for _ in range(8)]
    keys = {
        await c.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default") for c in clients
    }
    (channel,) = keys
    for client in clients:
        await client.wait_synced(channel)
    await sim.wait_for(lambda: sim.open_watches == 1)
    assert sim.list_requests == 1
    assert sim.watch_requests == 1

    churn(sim, random.Random(7), 60)
    expected = sim_state(sim, SECRETS, project="proj-abc", namespace="default")
    for client in clients:
        await client.wait_for(lambda c: c.objects(channel) == expected)

    other = await clients[0].subscribe(resourceType=ZONES, projectId="proj-abc", namespace="default")
    await clients[0].wait_synced(other)
    await sim.wait_for(lambda: sim.open_watches == 2)
    assert sim.list_requests == 2


async def test_grace_period_upstream_that_ended_is_alive_for_the_next_subscriber(stack: Stack) -> None:
    """The original's bug: a stream that ended during the grace period stayed dead forever."""
    sim = stack.sim
    client = await stack.client()
    channel = await client.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    await client.wait_synced(channel)
    await client.unsubscribe(channel)
    watches_before = sim.watch_requests
    assert sim.cut_watches() == 1  # the upstream stream ends while nobody is subscribed
    await sim.wait_for(lambda: sim.watch_requests > watches_before and sim.open_watches == 1)

    again = await client.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    assert again == channel
    await client.wait_synced(channel)
    sim.create(SECRETS, {"metadata": {"name": "after-grace"}}, project="proj-abc", namespace="default")
    await client.wait_for(lambda c: "default/after-grace" in c.objects(channel))
    assert sim.list_requests == 1, "resumed from the resourceVersion: no new LIST"


async def test_relist_after_410_converges_without_resync(stack: Stack) -> None:
    sim = stack.sim
    for i in range(5):
        sim.create(SECRETS, {"metadata": {"name": f"o{i}"}}, project="proj-abc", namespace="default")
    client = await stack.client()
    channel = await client.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    await client.wait_synced(channel)
    # While the watch is down, objects change and the history that could replay it is compacted.
    sim.inject(Fault(kind="error500", on="watch", count=1))
    sim.cut_watches()
    sim.delete(SECRETS, "o1", project="proj-abc", namespace="default")
    sim.create(SECRETS, {"metadata": {"name": "new"}}, project="proj-abc", namespace="default")
    obj = sim.get(SECRETS, "o2", project="proj-abc", namespace="default")
    assert obj is not None
    obj["data"] = {"changed": "yes"}
    sim.update(SECRETS, obj, project="proj-abc", namespace="default")
    sim.compact()
    expected = sim_state(sim, SECRETS, project="proj-abc", namespace="default")
    await client.wait_for(lambda c: c.objects(channel) == expected)
    assert client.resyncs == 0
    deleted = [e for e in client.events if e.event == "watch" and '"DELETED"' in e.data]
    assert len(deleted) == 1
    assert '"o1"' in deleted[0].data
    assert sim.list_requests == 2, "exactly one relist"


async def test_watch_error_while_down_then_the_difference(stack: Stack) -> None:
    sim = stack.sim
    sim.create(SECRETS, {"metadata": {"name": "keep"}}, project="proj-abc", namespace="default")
    client = await stack.client()
    channel = await client.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    await client.wait_synced(channel)
    sim.inject(Fault(kind="error500", on="any", count=6))
    sim.compact()
    sim.cut_watches()
    await client.wait_for(lambda c: c.errors.get(channel, {}).get("code") == 500)
    sim.create(SECRETS, {"metadata": {"name": "while-down"}}, project="proj-abc", namespace="default")
    expected = sim_state(sim, SECRETS, project="proj-abc", namespace="default")
    await client.wait_for(lambda c: c.objects(channel) == expected, timeout=10)
    assert client.resyncs == 0


async def test_unknown_resource_type_is_unsubscribed_gone(stack: Stack) -> None:
    sim = stack.sim
    client = await stack.client()
    # The simulator serves every plural; a removed CRD is modelled by a 404 Status on the LIST.
    sim.inject(Fault(kind="not_found", on="list", count=1))
    channel = await client.subscribe(resourceType="apis/example.com/v1/widgets")
    await client.wait_for(lambda c: c.unsubscribed.get(channel) == "gone")
    assert channel not in stack.hub.channels


async def test_clients_match_the_simulator_after_random_churn_on_two_channels(stack: Stack) -> None:
    sim = stack.sim
    rng = random.Random(11)
    clients = [await stack.client() for _ in range(6)]
    channels: dict[WatchClient, list[str]] = {}
    for i, client in enumerate(clients):
        projects = ["proj-abc", "proj-xyz"] if i % 2 == 0 else ["proj-abc"]
        channels[client] = [
            await client.subscribe(resourceType=SECRETS, projectId=p, namespace="default") for p in projects
        ]
    for _ in range(4):
        churn(sim, rng, 25, project="proj-abc")
        churn(sim, rng, 25, project="proj-xyz")
        sim.cut_watches()
    for client, keys in channels.items():
        for key in keys:
            project = key.split(":")[2]
            expected = sim_state(sim, SECRETS, project=project, namespace="default")
            await client.wait_for(lambda c, k=key, e=expected: c.objects(k) == e, timeout=10)
    await sim.wait_for(lambda: sim.open_watches == 2)
