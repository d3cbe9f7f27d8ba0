"""Replicas behind nginx: a replica that dies, one that comes back, a rolling restart, and every
client still ends with exactly the control plane's objects (issue 11).

The simulator, three ``watchgw serve`` replicas and nginx with the shipped configuration run as
processes on loopback ports (``tests/cluster.py``). Three dozen Python clients (``auto_reconnect``:
they do everything by themselves) watch four channels through nginx while the simulator's objects
are created, updated and deleted throughout and clients subscribe and unsubscribe. One replica is
SIGKILLed mid-churn; its clients' streams break and move to the others. It comes back, and nginx
routes its clients' requests to it again while their streams still sit elsewhere: the clients
notice (the answers name another replica) and start over there. Then the two others are restarted
in turn with SIGTERM (clients get ``reconnect``). At the end every client's state equals the
simulator's, every client's requests and stream are on one replica (the replicas' stats count
exactly those streams), and the simulator never had more than channels x replicas watches open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster import Cluster, running_cluster
from tests.nginx_config import find_binary
from watchgw.client.client import WatchClient, object_key

pytestmark = pytest.mark.skipif(
    (find_binary("nginx") is None or find_binary("openssl") is None) and not os.environ.get("CI"),
    reason="nginx or openssl is not installed (CI installs them; there this test must run)",
)

SECRETS = "api/v1/secrets"
ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"
CHANNELS: list[dict[str, str]] = [
    {"resourceType": SECRETS, "projectId": "proj-a", "namespace": "default"},
    {"resourceType": SECRETS, "projectId": "proj-b", "namespace": "default"},
    {"resourceType": ZONES, "projectId": "proj-a", "namespace": "default"},
    {"resourceType": ZONES, "projectId": "proj-b", "namespace": "default"},
]
CLIENTS = 36
REPLICAS = 3
PROJECT_PREFIX = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/{}/control-plane"


def collection_url(sim_url: str, fields: dict[str, str]) -> str:
    group_version, plural = fields["resourceType"].rsplit("/", 1)
    prefix = PROJECT_PREFIX.format(fields["projectId"])
    return f"{sim_url}{prefix}/{group_version}/namespaces/{fields['namespace']}/{plural}"


def versions(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Object key -> resourceVersion: equal maps mean the same objects, each at the same version."""
    return {key: obj["metadata"]["resourceVersion"] for key, obj in objects.items()}


class Churn:
    """Random creates, updates and deletes at the simulator, over its HTTP API (it runs in its
    own process), paced and bounded in count."""

    def __init__(self, http: aiohttp.ClientSession, sim_url: str, *, seed: int) -> None:
        self.http = http
        self.sim_url = sim_url
        self.rng = random.Random(seed)
        self.names: list[list[str]] = [[] for _ in CHANNELS]
        self.serial = 0
        self.changes = 0
        self._progress = asyncio.Condition()

    async def change(self) -> None:
        index = self.rng.randrange(len(CHANNELS))
        url = collection_url(self.sim_url, CHANNELS[index])
        names = self.names[index]
        roll = self.rng.random()
        spec = {"v": self.rng.random()}
        if len(names) < 3 or roll < 0.4:
            self.serial += 1
            name = f"o-{self.serial}"
            body = {"metadata": {"name": name}, "spec": spec}
            async with self.http.post(url, json=body) as response:
                assert response.status == 201, await response.text()
            names.append(name)
        elif roll < 0.75:
            name = self.rng.choice(names)
            async with self.http.put(f"{url}/{name}", json={"metadata": {"name": name}, "spec": spec}) as r:
                assert r.status == 200, await r.text()
        else:
            name = names.pop(self.rng.randrange(len(names)))
            async with self.http.delete(f"{url}/{name}") as response:
                assert response.status == 200, await response.text()
        self.changes += 1
        async with self._progress:
            self._progress.notify_all()

    async def run(self, stop: asyncio.Event, *, limit: int = 5000) -> None:
        while not stop.is_set() and self.changes < limit:
            await self.change()
            await asyncio.sleep(0.01)  # pacing of the churn (about 100 changes/s), not a wait

    async def wait_changes(self, count: int, *, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: self.changes >= count)

    async def expected(self, fields: dict[str, str]) -> dict[str, str]:
        async with self.http.get(collection_url(self.sim_url, fields)) as response:
            body = await response.json()
        return versions({object_key(item): item for item in body["items"]})


async def every(clients: list[WatchClient], predicate: Callable[[WatchClient], bool], timeout: float) -> None:
    """Wait until ``predicate`` holds for every client (each woken by its own events)."""
    waits: list[Awaitable[None]] = [c.wait_for(predicate, timeout=timeout) for c in clients]
    await asyncio.gather(*waits)


async def streams_by_replica(cluster: Cluster) -> dict[str, int]:
    """Each live replica's count of open streams, from its own stats."""
    counts: dict[str, int] = {}
    for replica in cluster.live():
        stats = await cluster.stats(replica.index)
        assert stats["replica"] == replica.name
        counts[replica.name] = stats["streams"]
    return counts


def claimed(clients: list[WatchClient], cluster: Cluster) -> dict[str, int]:
    """What the clients say: how many streams each live replica's ``connected`` announced."""
    return {r.name: sum(1 for c in clients if c.replica == r.name) for r in cluster.live()}


async def routing_matches(cluster: Cluster, clients: list[WatchClient]) -> bool:
    """Each live replica's stats hold exactly what the clients it announced itself to hold: their
    sessions, their streams and their subscriptions, nothing of any other client (no session
    without a stream, no subscription that landed away from its client's stream)."""
    for replica in cluster.live():
        stats = await cluster.stats(replica.index)
        mine = [c for c in clients if c.replica == replica.name]
        wanted: dict[str, int] = {}
        for client in mine:
            for channel in client.subscriptions:
                wanted[channel] = wanted.get(channel, 0) + 1
        held = {channel: n for channel, n in stats["subscriptions"].items() if n}
        if (stats["clients"], stats["streams"], held) != (len(mine), len(mine), wanted):
            return False
    return True


async def until(condition: Callable[[], Awaitable[bool]], *, timeout: float) -> None:
    """Poll another process's state until ``condition`` holds (bounded): nothing in it tells
    when, e.g., the sessions left behind on a replica reach their ``session_ttl_s``."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.1)  # the poll's interval: stats is all that process offers


def streaming_again(reconnects: dict[str, int]) -> Callable[[WatchClient], bool]:
    """In sync on a stream opened after ``reconnects`` (client id -> its count then)."""
    return lambda c: c.in_sync and c.reconnects > reconnects[c.client_id]


async def toggle(client: WatchClient, index: int) -> None:
    """A client action: its third channel on or off (subscribe, unsubscribe: requests that nginx
    routes by cid, which is how a client notices its requests reach another replica)."""
    fields = CHANNELS[(index + 2) % len(CHANNELS)]
    held = [channel for channel, f in client.subscriptions.items() if f == fields]
    if held:
        await client.unsubscribe(held[0])
    else:
        await client.subscribe(**fields)


async def probe(clients: list[WatchClient]) -> int:
    """Each client subscribes again to a channel it holds (idempotent: nothing new is sent):
    answered by another replica than its stream's, it starts over. Returns the misrouted count."""
    before = sum(c.misrouted for c in clients)
    for client in clients:
        fields = next(iter(client.subscriptions.values()))
        await client.subscribe(**fields)
    return sum(c.misrouted for c in clients) - before


async def test_failover_and_rolling_restart_behind_nginx_converge(tmp_path: Path) -> None:
    started = time.monotonic()
    async with (
        running_cluster(tmp_path, replicas=REPLICAS) as cluster,
        cluster.http_session() as http,
        contextlib.AsyncExitStack() as stack,
    ):
        clients = [
            WatchClient(
                cluster.url,
                client_id=f"cluster-client-{i:03d}",
                session=http,
                auto_reconnect=True,
                max_retry_delay_s=1.0,
            )
            for i in range(CLIENTS)
        ]
        for client in clients:
            stack.push_async_callback(client.close)
        async with aiohttp.ClientSession() as sim_http:
            churn = Churn(sim_http, cluster.sim_url, seed=11)
            for _ in range(16):
                await churn.change()

            async def start(client: WatchClient, index: int) -> None:
                await client.connect()
                for fields in (CHANNELS[index % 4], CHANNELS[(index + 1) % 4]):
                    await client.subscribe(**fields)

            await asyncio.gather(*(start(c, i) for i, c in enumerate(clients)))
            await every(clients, lambda c: c.in_sync and c.synced >= set(c.subscriptions), timeout=15)

            # Routing by cid: each client's subscribes were answered by its stream's replica, and
            # each replica's own count of streams is the number of clients it told "connected".
            assert sum(c.misrouted for c in clients) == 0
            assert await streams_by_replica(cluster) == claimed(clients, cluster)
            assert await routing_matches(cluster, clients)
            home = {c.client_id: c.replica for c in clients}
            assert len(set(home.values())) == REPLICAS, "the hash spreads 36 clients over every replica"

            stop = asyncio.Event()
            churning = asyncio.create_task(churn.run(stop), name="churn")
            stack.push_async_callback(_stop_task, churning, stop)

            actions_done = asyncio.Event()

            async def act() -> None:
                # Round-robin, so every client acts every CLIENTS x 20 ms (about 0.7 s).
                step = 0
                while not actions_done.is_set() and step < 3000:
                    index = step % CLIENTS
                    await toggle(clients[index], index)
                    step += 1
                    await asyncio.sleep(0.02)  # pacing of the client actions, not a wait

            acting = asyncio.create_task(act(), name="client actions")
            stack.push_async_callback(_stop_task, acting, actions_done)
            await churn.wait_changes(churn.changes + 30)

            # 1. SIGKILL the busiest replica mid-churn: its clients' streams break, they come back
            # through nginx on the others ("resumed": false) and subscribe again.
            counts = claimed(clients, cluster)
            victim = next(r for r in cluster.live() if counts[r.name] == max(counts.values()))
            moved = [c for c in clients if c.replica == victim.name]
            await cluster.kill(victim.index)
            await every(moved, lambda c: c.in_sync and c.replica != victim.name, timeout=15)

            # 2. It comes back on its port. Once nginx tries it again (max_fails: after its
            # fail_timeout), its clients' requests go there while their streams do not: the
            # answers say so, and each starts over there. The client actions are the requests.
            await cluster.start(victim.index)
            await every(moved, lambda c: c.in_sync and c.replica == victim.name, timeout=20)
            assert sum(c.misrouted for c in moved) >= len(moved)
            assert sum(c.start_overs for c in moved) >= len(moved)

            # 3. Rolling restart of the others: SIGTERM, clients get "reconnect" and come back.
            for replica in [r for r in cluster.replicas if r is not victim]:
                leaving = [c for c in clients if c.streaming and c.replica == replica.name]
                start_overs = {c.client_id: c.start_overs for c in leaving}
                reconnects = {c.client_id: c.reconnects for c in leaving}
                for client in leaving:
                    client.reconnect_requested = False
                await cluster.restart(replica.index)
                # Told to come back, unless it was starting over elsewhere by itself meanwhile.
                for client in leaving:
                    assert client.reconnect_requested or client.start_overs > start_overs[client.client_id]
                # Each is streaming again, on a new stream (wherever nginx sent it: the restarted
                # replica has the same name, on the same port, once it is back in rotation).
                await every(leaving, streaming_again(reconnects), 15)

            actions_done.set()
            stop.set()
            await acting
            await churning
            assert churn.changes > 100

            # Every client's requests reach its stream's replica: until a whole round of probes
            # is answered by the streams' replicas (a replica restarted last may be coming back
            # into nginx's rotation meanwhile, which the probes notice as above).
            for _ in range(5):
                await every(clients, lambda c: c.in_sync, timeout=15)
                if await probe(clients) == 0:
                    break
            else:
                pytest.fail("clients' requests kept reaching other replicas than their streams")
            await every(clients, lambda c: c.in_sync, timeout=15)

            # Convergence: every channel of every client is exactly the simulator's.
            expected = [await churn.expected(fields) for fields in CHANNELS]
            for client in clients:
                for channel, fields in client.subscriptions.items():
                    want = expected[CHANNELS.index(fields)]
                    try:
                        await client.wait_for(
                            lambda c, ch=channel, w=want: ch in c.synced and versions(c.objects(ch)) == w,
                            timeout=15,
                        )
                    except TimeoutError:
                        got = versions(client.objects(channel))
                        pytest.fail(
                            f"{client.client_id} {channel}: missing {sorted(set(want) - set(got))[:5]}, "
                            f"extra {sorted(set(got) - set(want))[:5]}, "
                            f"stale {[k for k in want if k in got and got[k] != want[k]][:5]}; "
                            f"synced {channel in client.synced}, in sync {client.in_sync}, "
                            f"replica {client.replica}, pending {sorted(client.pending)}"
                        )
            assert all(c.ids_out_of_order == 0 for c in clients)

        # From the replicas' side: once the sessions the clients left behind have expired
        # (session_ttl_s), each replica holds exactly the streams, sessions and subscriptions of
        # the clients it announced itself to. (Streams a client closed are gone at once: with a
        # TLS close through nginx they stayed until the replica's next write, up to heartbeat_s.)
        assert sum(claimed(clients, cluster).values()) == CLIENTS
        await until(lambda: routing_matches(cluster, clients), timeout=cluster.limits["session_ttl_s"] + 8)
        # One upstream watch per channel per replica, at most, at any time.
        sim_stats = await cluster.sim_stats()
        assert 0 < sim_stats["peakOpenWatches"] <= len(CHANNELS) * REPLICAS, sim_stats
        print(
            f"cluster: {time.monotonic() - started:.1f} s, {churn.changes} changes, "
            f"{sum(c.reconnects for c in clients)} reconnects, {sum(c.start_overs for c in clients)} "
            f"start-overs, {sum(c.misrouted for c in clients)} misrouted answers, "
            f"{sum(c.kept_failures for c in clients)} requests kept after failing, "
            f"peak upstream watches {sim_stats['peakOpenWatches']}"
        )


async def _stop_task(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Stop a load loop (also when the test failed): ask it, then cancel what is left."""
    stop.set()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
