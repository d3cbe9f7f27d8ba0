"""Snapshots cost a session at most its buffer: nothing is built for a stream that is gone, and a
snapshot bigger than the buffer is written in parts, converging while its objects change."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from tests.conftest import make_config
from tests.stacks import fast_upstream, sim_and_gateway
from tests.web.test_slow_clients import stalled_stream
from watchgw.client.client import WatchClient, object_key
from watchgw.client.sse import SSEParser
from watchgw.hub.hub import WatchHub
from watchgw.sim import Simulator
from watchgw.web.keys import HUB

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-a", "namespace": "default"}
BUFFER = 64 * 1024
OBJECTS = 600
PAD = "p" * 8000  # ~8 KB a frame: a snapshot of ~5 MB, more than the kernel's socket buffers


def populate(sim: Simulator) -> None:
    for i in range(OBJECTS):
        sim.create(
            "api/v1/secrets",
            {"metadata": {"name": f"s{i}"}, "data": {"pad": PAD}},
            project="proj-a",
            namespace="default",
        )


def sim_state(sim: Simulator) -> dict[str, dict[str, Any]]:
    return {
        object_key(o): o for o in sim.list_objects("api/v1/secrets", project="proj-a", namespace="default")
    }


async def until(predicate: Callable[[], bool], tries: int = 100_000) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded: fails after ``tries`` turns)."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@contextlib.asynccontextmanager
async def stack(**limits: Any) -> AsyncIterator[tuple[Simulator, web.Application, str]]:
    config = lambda url: fast_upstream(make_config(url, limits={"client_buffer_bytes": BUFFER, **limits}))  # noqa: E731
    async with sim_and_gateway(config, prepare=populate) as parts:
        yield parts


async def test_sessions_whose_stream_is_gone_build_no_snapshot_and_resume_to_one() -> None:
    sessions = 20
    async with stack(session_ttl_s=60) as (sim, app, url):
        hub: WatchHub = app[HUB]
        warm = WatchClient(url)
        try:
            await warm.connect()
            channel = await warm.subscribe(**SECRETS)
            await warm.wait_synced(channel, timeout=20)
            snapshot_bytes = sum(len(s.wire) for s in hub.channels[channel].history) or OBJECTS * len(PAD)

            gone = [WatchClient(url, client_id=f"gone-client-{i:02d}", record=True) for i in range(sessions)]
            for client in gone:
                await client.connect()
                await client.disconnect()
            await hub.wait_for(lambda: all(not hub.sessions[c.client_id].attached for c in gone), timeout=10)
            for client in gone:
                await client.subscribe(**SECRETS)  # the session outlives its stream: subscribe works
            # Live changes meanwhile: superseded by the snapshot owed, not queued.
            for i in range(50):
                sim.update(
                    "api/v1/secrets",
                    {"metadata": {"name": f"s{i}"}, "data": {"pad": "u" + PAD}},
                    project="proj-a",
                    namespace="default",
                )
            await warm.wait_for(
                lambda c: c.objects(channel)["default/s49"]["data"]["pad"][0] == "u", timeout=10
            )

            held = [hub.sessions[c.client_id] for c in gone]
            pending = sum(s.pending_bytes for s in held)
            assert pending <= sessions * BUFFER
            assert pending < sessions * 2048, f"only their 'subscribed' frames are queued: {pending}"
            assert pending < OBJECTS * len(PAD) / 10
            del snapshot_bytes

            # One of them comes back (Last-Event-ID: its 'connected'): a snapshot, in parts, and synced.
            back = gone[0]
            connected = await back.connect(resume=True)
            assert connected["resumed"] is True
            await back.wait_synced(channel, timeout=20)
            assert back.objects(channel) == sim_state(sim)
            kinds = [e.event for e in back.events if e.event != "connected"]
            until_synced = kinds[: kinds.index("synced")]
            assert "resync" not in until_synced, "it never had anything of the channel: a plain snapshot"
            assert until_synced == ["subscribed"] + ["watch"] * OBJECTS
            for client in gone:
                await client.close()
        finally:
            await warm.close()


async def test_a_snapshot_over_the_buffer_is_written_in_parts_and_converges_while_objects_change() -> None:
    async with stack(stalled_client_timeout_s=60) as (sim, app, url):
        hub: WatchHub = app[HUB]
        warm = WatchClient(url)
        reader, writer = await stalled_stream(url, "slow-snapshot")
        try:
            await warm.connect()
            channel = await warm.subscribe(**SECRETS)
            await warm.wait_synced(channel, timeout=20)
            poster = WatchClient(url, client_id="slow-snapshot")
            slow = hub.sessions["slow-snapshot"]
            try:
                await poster.subscribe(**SECRETS)
            finally:
                await poster.close()
            # The reader reads nothing: the snapshot is begun and waits for the socket, in parts.
            await until(
                lambda: (
                    bool(slow._writers)
                    and slow.transport is not None
                    and slow.transport.get_write_buffer_size() > 0
                )
            )
            total = 0
            # Changes while the snapshot is being written: updates of objects already sent and
            # not yet sent, deletions, creations.
            for round_ in range(3):
                for i in range(round_, OBJECTS - 30, 7):
                    sim.update(
                        "api/v1/secrets",
                        {"metadata": {"name": f"s{i}"}, "data": {"pad": f"{round_}" + PAD}},
                        project="proj-a",
                        namespace="default",
                    )
                for i in range(round_ * 10, round_ * 10 + 10):
                    sim.delete("api/v1/secrets", f"s{OBJECTS - 1 - i}", project="proj-a", namespace="default")
                    sim.create(
                        "api/v1/secrets",
                        {"metadata": {"name": f"new-{round_}-{i}"}, "data": {"pad": "n"}},
                        project="proj-a",
                        namespace="default",
                    )
                expected = sim_state(sim)
                await warm.wait_for(lambda c, e=expected: c.objects(channel) == e, timeout=20)
                assert slow.pending_bytes <= BUFFER + 16384, "bounded by the buffer (plus one frame)"
                total += slow.pending_bytes
            assert slow._writers or slow.resyncs, "the snapshot was still being written"

            state = WatchClient(url, client_id="slow-snapshot")
            parser = SSEParser()
            expected = sim_state(sim)
            async with asyncio.timeout(30):
                while channel not in state.synced or state.objects(channel) != expected:
                    chunk = await reader.read(2**16)
                    assert chunk, "stream ended"
                    for event in parser.feed(chunk):
                        state.apply(event)
            assert state.objects(channel) == warm.objects(channel)
        finally:
            writer.close()
            await warm.close()
