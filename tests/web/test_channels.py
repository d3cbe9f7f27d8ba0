"""Channel sharing, grace period, joining an open channel, catch-up, errors, sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import ujson

from tests.conftest import make_config
from tests.fakes import make_object
from tests.web.conftest import Gateway
from watchgw.client.client import WatchClient

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-abc", "namespace": "default"}


async def test_many_clients_one_upstream(gateway: Gateway) -> None:
    clients = [await gateway.client() for _ in range(5)]
    keys = {await c.subscribe(**SECRETS) for c in clients}
    assert len(keys) == 1
    assert len(gateway.upstreams.made) == 1
    (channel,) = keys
    gateway.upstreams.for_key(channel).listed(make_object("a"), rv=3)
    for client in clients:
        await client.wait_synced(channel)
        assert set(client.objects(channel)) == {"default/a"}
    await clients[0].subscribe(resourceType="api/v1/configmaps")
    assert len(gateway.upstreams.made) == 2


async def test_joining_open_channel_gets_snapshot_from_cache(gateway: Gateway) -> None:
    first = await gateway.client()
    channel = await first.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a", rv=2), make_object("b", rv=3), rv=3)
    upstream.emit("MODIFIED", make_object("a", rv=4, data={"v": "2"}))
    await first.wait_for(lambda c: c.resource_versions.get(channel) == "4")

    late = await gateway.client()
    await late.subscribe(**SECRETS)
    await late.wait_synced(channel)
    assert late.objects(channel) == first.objects(channel)
    assert late.objects(channel)["default/a"]["data"] == {"v": "2"}
    kinds = [e.event for e in late.events]
    assert kinds == ["connected", "subscribed", "watch", "watch", "synced"]
    assert len(gateway.upstreams.made) == 1


async def test_snapshot_false_gets_only_live_events(gateway: Gateway) -> None:
    first = await gateway.client()
    channel = await first.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a"), rv=2)
    live = await gateway.client()
    await live.subscribe(**SECRETS, snapshot=False)
    upstream.emit("ADDED", make_object("b", rv=3))
    await live.wait_for(lambda c: "default/b" in c.objects(channel))
    assert "default/a" not in live.objects(channel)
    assert [e.event for e in live.events] == ["connected", "subscribed", "watch"]


async def test_resource_version_catch_up_from_history(gateway: Gateway) -> None:
    first = await gateway.client()
    channel = await first.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a", rv=10), rv=10)
    upstream.emit("ADDED", make_object("b", rv=11))
    upstream.emit("DELETED", make_object("a", rv=12))

    returning = await gateway.client()
    await returning.subscribe(**SECRETS, resourceVersion="11")
    await returning.wait_synced(channel)
    watch = [e for e in returning.events if e.event == "watch"]
    # From the first event at 11 (harmless to apply again), not after it: several events may
    # share a version, and the client may have applied only some of them.
    assert [ujson.loads(e.data)["type"] for e in watch] == ["ADDED", "DELETED"]
    assert set(returning.objects(channel)) == {"default/b"}
    assert returning.resource_versions[channel] == "12"
    assert returning.ids == sorted(set(returning.ids))


async def test_resource_version_too_old_gets_resync_and_snapshot(gateway_factory: Callable[..., Any]) -> None:
    gateway: Gateway = await gateway_factory(make_config(limits={"channel_history": 2}))
    first = await gateway.client()
    channel = await first.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(rv=10)
    for rv in range(11, 16):
        upstream.emit("ADDED", make_object(f"o{rv}", rv=rv))
    returning = await gateway.client()
    await returning.subscribe(**SECRETS, resourceVersion="11")
    await returning.wait_synced(channel)
    kinds = [e.event for e in returning.events]
    assert kinds[:3] == ["connected", "subscribed", "resync"]
    assert returning.ids == sorted(set(returning.ids)), "resync is made before the snapshot it precedes"
    assert set(returning.objects(channel)) == {f"default/o{rv}" for rv in range(11, 16)}


async def test_grace_period_reuses_the_upstream(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a"), rv=2)
    await client.wait_synced(channel)
    await client.unsubscribe(channel)
    assert channel in gateway.hub.channels, "kept during the grace period"
    again = await client.subscribe(**SECRETS)
    assert again == channel
    assert len(gateway.upstreams.made) == 1, "no new upstream within the grace period"
    assert not upstream.cancelled


async def test_grace_period_expiry_closes_the_upstream(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    await upstream.running.wait()
    await client.unsubscribe(channel)
    hub = gateway.hub
    await hub.wait_for(lambda: channel not in hub.channels and upstream.cancelled)
    await client.subscribe(**SECRETS)
    assert len(gateway.upstreams.made) == 2, "a fresh upstream after the grace period"


async def test_watch_error_reaches_subscribers_and_joiners(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(rv=1)
    upstream.degraded(code=503, reason="ConnectionFailed", message="control plane unreachable")
    await client.wait_for(lambda c: channel in c.errors)
    assert client.errors[channel] == {
        "channel": channel,
        "code": 503,
        "reason": "ConnectionFailed",
        "message": "control plane unreachable",
    }
    joiner = await gateway.client()
    await joiner.subscribe(**SECRETS)
    await joiner.wait_for(lambda c: channel in c.errors)


async def test_gone_resource_unsubscribes_with_reason_gone(gateway: Gateway) -> None:
    from watchgw.kube.types import InformerPhase, InformerState

    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listener.on_state(InformerState(InformerPhase.GONE))
    await client.wait_for(lambda c: c.unsubscribed.get(channel) == "gone")
    assert channel not in gateway.hub.channels


async def test_upstream_crash_is_restarted_with_resync(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a"), rv=1)
    await client.wait_synced(channel)
    # The informer dies of an unexpected error: the hub must restart it, not go silent.
    upstream.crash(RuntimeError("informer bug"))
    await gateway.hub.wait_for(lambda: len(gateway.upstreams.made) == 2)
    fresh = gateway.upstreams.made[-1]
    await fresh.running.wait()
    fresh.listed(make_object("b"), rv=2)
    await client.wait_for(lambda c: channel in c.synced and set(c.objects(channel)) == {"default/b"})
    assert client.resyncs == 1


async def test_disconnect_releases_subscriptions_after_session_ttl(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    await client.disconnect()
    hub = gateway.hub
    await hub.wait_for(lambda: not hub.sessions and channel not in hub.channels and upstream.cancelled)
    assert upstream.cancelled
    assert hub.stats()["clients"] == 0


async def test_same_identity_takes_over_a_streaming_cid(gateway: Gateway) -> None:
    first = await gateway.client()
    second = WatchClient(gateway.url, client_id=first.client_id, record=True)
    gateway.clients.append(second)
    await second.connect()
    async with asyncio.timeout(5):
        await first.stream_ended.wait()
    channel = await second.subscribe(**SECRETS)
    gateway.upstreams.for_key(channel).listed(rv=1)
    await second.wait_synced(channel)


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_with_last_event_id_replays_missed_frames(gateway: Gateway, how: str) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a"), rv=1)
    await client.wait_synced(channel)
    last_seen = client.last_event_id
    await client.disconnect()
    upstream.emit("ADDED", make_object("b", rv=2))
    upstream.emit("DELETED", make_object("a", rv=3))
    if how == "header":
        connected = await client.connect(resume=True)
    else:
        client.base_path = "/api/watch"
        client.headers.pop("Last-Event-ID", None)
        connected = await _connect_with_query(client, last_seen)
    assert connected["resumed"] is True
    await client.wait_for(lambda c: set(c.objects(channel)) == {"default/b"})
    ids = client.ids
    assert ids == sorted(set(ids)), "no duplicates, in order"


async def _connect_with_query(client: WatchClient, last_id: str | None) -> dict[str, Any]:
    # The fallback for clients that cannot set headers: ?lastEventId=
    original = client._url

    def url(path: str) -> str:
        base = original(path)
        return f"{base}?lastEventId={last_id}" if path == "stream" else base

    client._url = url  # type: ignore[method-assign]
    try:
        return await client.connect()
    finally:
        client._url = original  # type: ignore[method-assign]


async def test_reconnect_without_last_event_id_starts_over(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    await client.disconnect()
    connected = await client.connect()
    assert connected["resumed"] is False
    assert channel not in gateway.hub.sessions[client.client_id].channels


async def test_a_snapshot_never_read_is_not_resumed_from(gateway: Gateway) -> None:
    """A client that re-subscribed but never read the snapshot must not later claim the
    version it had before: it would catch up from a state it does not hold."""
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a", rv=5), rv=5)
    await client.wait_synced(channel)
    assert client.resource_versions[channel] == "5"
    await client.unsubscribe(channel)
    client.pause_reading()
    await client.subscribe(**SECRETS)  # its snapshot is never read
    upstream.emit("ADDED", make_object("b", rv=6))
    await client.disconnect()
    client.resume_reading()
    hub = gateway.hub
    await hub.wait_for(lambda: client.client_id not in hub.sessions)  # too late to resume
    connected = await client.reconnect()
    assert connected["resumed"] is False
    await client.wait_for(
        lambda c: channel in c.synced and set(c.objects(channel)) == {"default/a", "default/b"}
    )


async def test_subscribing_twice_keeps_the_state(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    gateway.upstreams.for_key(channel).listed(make_object("a"), rv=1)
    await client.wait_synced(channel)
    await client.subscribe(**SECRETS)
    assert set(client.objects(channel)) == {"default/a"}
    assert channel in client.synced


async def test_history_and_tombstones_are_bounded_in_bytes(gateway_factory: Callable[..., Any]) -> None:
    """``channel_history_bytes`` trims history like ``channel_history`` does (catch-ups start above
    what was trimmed: an older position gets resync + snapshot), and bounds the tombstones."""
    bound = 20_000
    gateway: Gateway = await gateway_factory(
        make_config(limits={"channel_history": 1000, "channel_history_bytes": bound})
    )
    first = await gateway.client()
    channel = await first.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(rv=10)
    pad = "x" * 2000
    for rv in range(11, 41):  # 30 events of ~2 KB: ~60 KB, three times the bound
        upstream.emit("ADDED", make_object(f"o{rv}", rv=rv, pad=pad))
    for rv in range(41, 61):
        upstream.emit("DELETED", make_object(f"o{rv - 30}", rv=rv, pad=pad))
    held = gateway.hub.channels[channel]
    assert held.history_size <= bound
    assert held.history_size == sum(len(f.wire) for _end, f in held.history)
    assert len(held.history) < 50, "trimmed by bytes, far below the count bound"
    assert held.complete_from is not None
    assert held.complete_from == held.history[0][0], "catch-ups start where the history does"
    assert held.tombstone_bytes <= bound
    assert len(held.tombstones) < 20

    returning = await gateway.client()
    await returning.subscribe(**SECRETS, resourceVersion="12")
    await returning.wait_synced(channel)
    kinds = [e.event for e in returning.events]
    assert kinds[:3] == ["connected", "subscribed", "resync"]
    assert set(returning.objects(channel)) == {f"default/o{rv}" for rv in range(31, 41)}
