"""Resume from ANY position a client saw, on this gateway or on another replica (PROTOCOL.md §4).

Through the real pieces: the simulator, the informer, the channel, the session and HTTP. A
recording client follows one channel while the simulator changes, cuts watches, answers 410 and
compacts its history (so relists send their difference as several events), and sends bookmarks.
Then, for every prefix of the recorded sequence, a client holding exactly the state that prefix
gives re-subscribes with the ``resourceVersion`` of the prefix's last event, on the same gateway
and on a second gateway (a replica with its own history of the same control plane), and must end
equal to the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections.abc import AsyncIterator
from typing import Any

import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_config
from tests.stacks import fast_upstream
from watchgw.client.client import WatchClient, object_key
from watchgw.client.sse import SSEEvent
from watchgw.sim import Fault, Simulator, running_simulator
from watchgw.web.app import make_app
from watchgw.web.server import running_app

SECRETS = "api/v1/secrets"
FIELDS = {"resourceType": SECRETS, "projectId": "proj-a", "namespace": "default"}
NAMES = ["a", "b", "c", "d", "e"]

mutation = st.tuples(st.sampled_from(["put", "put", "delete"]), st.sampled_from(NAMES))
step = st.tuples(
    st.sampled_from(["plain", "plain", "gone", "compact", "cut"]), st.lists(mutation, max_size=4)
)


def expected(sim: Simulator) -> dict[str, Any]:
    objects = sim.list_objects(SECRETS, project="proj-a", namespace="default")
    return {object_key(o): o for o in objects}


def mutate(sim: Simulator, op: str, name: str, serial: int) -> None:
    present = sim.get(SECRETS, name, project="proj-a", namespace="default") is not None
    if op == "delete":
        if present:
            sim.delete(SECRETS, name, project="proj-a", namespace="default")
        return
    obj = {"metadata": {"name": name}, "data": {"serial": str(serial)}}
    if present:
        sim.update(SECRETS, obj, project="proj-a", namespace="default")
    else:
        sim.create(SECRETS, obj, project="proj-a", namespace="default")


def prefixes(client: WatchClient, channel: str) -> list[tuple[dict[str, Any], str]]:
    """(state, resourceVersion) after the first ``synced`` and after every later watch event."""
    out: list[tuple[dict[str, Any], str]] = []
    state: dict[str, Any] = {}
    synced = False
    for event in client.events:
        data = ujson.loads(event.data) if event.data else {}
        if data.get("channel") != channel:
            continue
        if event.event == "resync":
            break  # a fresh snapshot starts another sequence; the prefixes before it suffice
        if event.event == "synced" and not synced:
            synced = True
            out.append((copy.deepcopy(state), data["resourceVersion"]))
        elif event.event == "watch":
            obj = data["object"]
            if data["type"] in ("ADDED", "MODIFIED"):
                state[object_key(obj)] = obj
            elif data["type"] == "DELETED":
                state.pop(object_key(obj), None)
            if synced and (state, data["resourceVersion"]) != out[-1]:  # repeated bookmarks: once
                out.append((copy.deepcopy(state), data["resourceVersion"]))
    return out


def brief(events: list[SSEEvent]) -> list[str]:
    """``event:type:name:objectVersion@position`` per event, for a failure message."""
    out = []
    for event in events:
        data = ujson.loads(event.data) if event.data else {}
        meta = data.get("object", {}).get("metadata", {})
        out.append(
            f"{event.event}:{data.get('type', '')}:{meta.get('name', '')}:{meta.get('resourceVersion', '')}"
            f"@{data.get('resourceVersion', '')}"
        )
    return out


@contextlib.asynccontextmanager
async def replicas() -> AsyncIterator[tuple[Simulator, list[str]]]:
    """The simulator (bookmarks every 50 ms) and two gateways in front of it."""
    async with running_simulator(bookmark_interval_s=0.05) as (sim, sim_url):
        config = fast_upstream(
            make_config(sim_url, limits={"channel_history": 1000, "session_ttl_s": 5}),
            backoff_initial_s=0.001,
            backoff_max_s=0.01,
        )
        async with running_app(make_app(config)) as url_a, running_app(make_app(config)) as url_b:
            yield sim, [url_a, url_b]


async def converge(client: WatchClient, channel: str, sim: Simulator) -> None:
    await client.wait_for(lambda c: channel in c.synced and c.objects(channel) == expected(sim), timeout=5)


async def scenario(steps: list[tuple[str, list[tuple[str, str]]]]) -> None:
    async with replicas() as (sim, urls):
        mutate(sim, "put", "a", 0)
        recorders = [WatchClient(url, record=True) for url in urls]
        resumers = [WatchClient(url, record=True) for url in urls]
        try:
            for client in (*recorders, *resumers):
                await client.connect()
            channel = ""
            for recorder in recorders:
                channel = await recorder.subscribe(**FIELDS)
                await converge(recorder, channel, sim)
            serial = 0
            for kind, mutations in steps:
                if kind == "gone":  # the next watch (one replica's) is answered 410: it relists
                    sim.inject(Fault(kind="gone", on="watch", count=1))
                elif kind == "compact":  # every replica's version is too old: both relist
                    sim.compact()
                if kind != "plain":
                    sim.cut_watches()
                for op, name in mutations:  # during the cut: the relist's difference
                    serial += 1
                    mutate(sim, op, name, serial)
                for recorder in recorders:
                    await converge(recorder, channel, sim)
            # Bookmarks, and the relist of the last step, reach both recorders before we start.
            for recorder in recorders:
                rv = sim.rv
                await recorder.wait_for(
                    lambda c, r=rv: int(c.resource_versions.get(channel) or 0) >= r, timeout=5
                )
            for recorder in recorders:
                for state, rv in prefixes(recorder, channel):
                    for resumer in resumers:
                        resumer.state[channel] = copy.deepcopy(state)
                        await resumer.subscribe(**FIELDS, resourceVersion=rv)
                        try:
                            await converge(resumer, channel, sim)
                        except TimeoutError:
                            raise AssertionError(
                                f"resumed at {rv} on {resumer.base_url} from a state of {recorder.base_url}:"
                                f" got {sorted(resumer.objects(channel))}, expected {sorted(expected(sim))}\n"
                                f"recorded: {brief(recorder.events)}\nresumed: {brief(resumer.events[-12:])}"
                            ) from None
                        await resumer.unsubscribe(channel)
                        await resumer.wait_for(lambda c: channel not in c.state)
        finally:
            for client in (*recorders, *resumers):
                await client.close()


# RESUME_EXAMPLES=200 runs a longer search than CI does.
@settings(
    max_examples=int(os.environ.get("RESUME_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_resume_from_every_prefix_converges(steps: list[tuple[str, list[tuple[str, str]]]]) -> None:
    asyncio.run(scenario(steps))


def test_resume_inside_a_relist_with_two_deletions() -> None:
    """The case that broke: a relist deletes two objects; a client that applied only the first
    deletion re-subscribes with its version and must still lose the second."""
    asyncio.run(
        scenario([("gone", [("put", "b"), ("put", "c")]), ("gone", [("delete", "b"), ("delete", "c")])])
    )
