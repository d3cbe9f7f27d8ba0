"""A replica names itself (``server.replica``) in ``connected``, in subscribe answers and in
stats, so a client behind a load balancer can tell whether its requests reach its stream's
replica (PROTOCOL.md section 4, "Replicas")."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_config
from tests.web.conftest import Gateway
from watchgw.config import ConfigError

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-abc", "namespace": "default"}


async def _stats(gateway: Gateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/api/watch/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def test_a_configured_name_is_in_connected_subscribe_answers_and_stats(
    gateway_factory: Callable[..., Any],
) -> None:
    gateway: Gateway = await gateway_factory(make_config(server={"stats": True, "replica": "gw-east-2"}))
    client = await gateway.client()
    assert client.connected is not None
    assert client.connected["replica"] == "gw-east-2"
    assert client.replica == "gw-east-2"
    body = {"clientId": client.client_id, **SECRETS}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.url}/api/watch/subscribe", params={"cid": client.client_id}, json=body
        ) as response,
    ):
        assert await response.json() == {
            "channel": "api/v1/secrets::proj-abc:default::::",
            "replica": "gw-east-2",
        }
    await client.subscribe(**SECRETS)
    assert client.misrouted == 0, "the answer named the stream's replica"
    assert client.in_sync
    assert (await _stats(gateway))["replica"] == "gw-east-2"


async def test_the_default_name_is_the_host_and_the_listening_port(gateway: Gateway) -> None:
    client = await gateway.client()
    port = gateway.url.rsplit(":", 1)[1]
    assert client.replica == f"{socket.gethostname()}:{port}"
    assert (await _stats(gateway))["replica"] == client.replica


@pytest.mark.parametrize("name", ["gw\n1", "x" * 129])
def test_a_name_that_cannot_travel_in_a_frame_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.replica"):
        make_config(server={"replica": name})
