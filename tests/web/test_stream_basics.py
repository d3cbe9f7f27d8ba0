"""The stream and subscribe flow over real sockets, with the test playing the upstream."""

from __future__ import annotations

import socket

from tests.fakes import make_object
from tests.web.conftest import Gateway

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-abc", "namespace": "default"}


async def test_subscribe_snapshot_then_live_events(gateway: Gateway) -> None:
    client = await gateway.client()
    port = gateway.url.rsplit(":", 1)[1]
    # Unnamed, a replica is "<hostname>:<port>": unique per process on a host.
    replica = f"{socket.gethostname()}:{port}"
    assert client.connected == {"clientId": client.client_id, "resumed": False, "replica": replica}
    channel = await client.subscribe(**SECRETS)
    assert channel == "api/v1/secrets::proj-abc:default::::"
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a", rv=5), make_object("b", rv=6), rv=7)
    await client.wait_synced(channel)
    assert set(client.objects(channel)) == {"default/a", "default/b"}
    upstream.emit("DELETED", make_object("a", rv=8))
    upstream.emit("ADDED", make_object("c", rv=9))
    await client.wait_for(lambda c: set(c.objects(channel)) == {"default/b", "default/c"})
    kinds = [e.event for e in client.events]
    assert kinds[:2] == ["connected", "subscribed"]
    assert kinds.count("synced") == 1
    assert client.ids == sorted(set(client.ids)), "ids strictly increasing"
