"""PROTOCOL.md section 3: every status of subscribe/unsubscribe/stream, with messages naming the field."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_config
from tests.fakes import make_object
from tests.web.conftest import Gateway
from watchgw.client.client import WatchClientError

SECRETS = {"resourceType": "api/v1/secrets", "projectId": "proj-abc", "namespace": "default"}


async def post(gateway: Gateway, path: str, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    kwargs.setdefault("headers", {"Content-Type": "application/json"})  # 415 without it
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.url}/api/watch/{path}", data=body, **kwargs) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_keys_have_eight_segments_as_the_portal_client_computes_them(gateway: Gateway) -> None:
    client = await gateway.client()
    key = await client.subscribe(
        resourceType="apis/networking.datumapis.com/v1alpha/domains",
        projectId="proj-abc",
        namespace="default",
    )
    assert key == "apis/networking.datumapis.com/v1alpha/domains::proj-abc:default::::"


async def test_seed_example_key_byte_for_byte_with_seven_segments(
    gateway_factory: Callable[..., Any],
) -> None:
    gateway: Gateway = await gateway_factory(make_config(server={"key_segments": 7}))
    client = await gateway.client()
    key = await client.subscribe(
        resourceType="apis/networking.datumapis.com/v1alpha/domains",
        projectId="proj-abc",
        namespace="default",
    )
    assert key == "apis/networking.datumapis.com/v1alpha/domains::proj-abc:default:::"
    with pytest.raises(WatchClientError) as refused:
        await client.subscribe(resourceType="api/v1/secrets", userScoped=True)
    assert refused.value.status == 400


@pytest.mark.parametrize("segments", [7, 8])
async def test_unsubscribe_accepts_either_key_form(
    gateway_factory: Callable[..., Any], segments: int
) -> None:
    gateway: Gateway = await gateway_factory(make_config(server={"key_segments": segments}))
    client = await gateway.client()
    key = await client.subscribe(**SECRETS)
    other_form = key + ":" if segments == 7 else key[:-1]
    await client.unsubscribe(other_form)
    await gateway.hub.wait_for(lambda: gateway.hub.channels[key].subscriber_count == 0)
    await client.wait_for(lambda c: c.unsubscribed.get(key) == "client")


async def test_selectors_with_colons_are_percent_encoded(gateway: Gateway) -> None:
    client = await gateway.client()
    key = await client.subscribe(resourceType="api/v1/pods", labelSelector="a in (x:1,y%2)")
    assert key == "api/v1/pods:::::a in (x%3A1,y%252)::"
    assert key.count(":") == 7


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"resourceType": ""}, "resourceType"),
        ({"resourceType": "api/v1/../secrets"}, "resourceType"),
        ({"resourceType": "apis/Group/v1/things"}, "resourceType"),
        ({"resourceType": "api/v1//secrets"}, "resourceType"),
        ({"resourceType": "api/v1/" + "a" * 300}, "resourceType"),
        ({"resourceType": "api/v1/secrets", "namespace": "Default"}, "namespace"),
        ({"resourceType": "api/v1/secrets", "projectId": "proj_abc"}, "projectId"),
        ({"resourceType": "api/v1/secrets", "orgId": "-org"}, "orgId"),
        ({"resourceType": "api/v1/secrets", "name": "a/b"}, "name"),
        ({"resourceType": "api/v1/secrets", "labelSelector": "a=b\r\nx"}, "labelSelector"),
        ({"resourceType": "api/v1/secrets", "fieldSelector": "x" * 513}, "fieldSelector"),
        ({"resourceType": "api/v1/secrets", "namespace": 5}, "namespace"),
        ({"resourceType": "api/v1/secrets", "snapshot": "yes"}, "snapshot"),
        ({"resourceType": "api/v1/secrets", "resourceVersion": 12}, "resourceVersion"),
        ({"resourceType": "api/v1/secrets", "bogus": 1}, "bogus"),
    ],
)
async def test_invalid_fields_name_the_field(gateway: Gateway, fields: dict[str, Any], names: str) -> None:
    client = await gateway.client()
    with pytest.raises(WatchClientError) as caught:
        await client.subscribe(**fields)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_request"
    assert names in caught.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"clientId": "abcdefgh", "clientId": "zzzzzzzz"}', "invalid_json"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"clientId": "short", "resourceType": "api/v1/secrets"}', "invalid_client_id"),
    ],
)
async def test_bad_bodies(gateway: Gateway, body: bytes, code: str) -> None:
    status, answer = await post(gateway, "subscribe", body, headers={"Content-Type": "application/json"})
    assert status == 400
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]


async def test_body_too_large_is_413_before_reading_it(gateway: Gateway) -> None:
    huge = b'{"clientId": "' + b"a" * 20000 + b'"}'
    status, answer = await post(gateway, "subscribe", huge)
    assert status == 413
    assert answer["error"]["code"] == "body_too_large"


async def test_chunked_body_over_the_limit_is_413(gateway: Gateway) -> None:
    async def gen() -> Any:
        for _ in range(40):
            yield b"x" * 1024

    status, answer = await post(gateway, "subscribe", gen())
    assert status == 413
    assert answer["error"]["code"] == "body_too_large"


async def test_unknown_client_is_404(gateway: Gateway) -> None:
    client = await gateway.client(connect=False)
    with pytest.raises(WatchClientError) as caught:
        await client.subscribe(**SECRETS)
    assert (caught.value.status, caught.value.code) == (404, "unknown_client")


async def test_query_cid_must_match_body(gateway: Gateway) -> None:
    client = await gateway.client()
    body = {"clientId": client.client_id, **SECRETS}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.url}/api/watch/subscribe", params={"cid": "someone-else"}, json=body
        ) as response,
    ):
        assert response.status == 400
        assert "clientId" in (await response.json())["error"]["message"]
        async with http.post(
            f"{gateway.url}/api/watch/subscribe", params={"cid": client.client_id}, json=body
        ) as ok:
            assert ok.status == 200


@pytest.mark.parametrize("cid", ["", "short", "a" * 65, "bad id!!", "ünïcödé123"])
async def test_stream_rejects_malformed_client_ids(gateway: Gateway, cid: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.url}/api/watch/stream", params={"cid": cid}) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_client_id"


async def test_subscribe_is_idempotent(gateway: Gateway) -> None:
    client = await gateway.client()
    first = await client.subscribe(**SECRETS)
    second = await client.subscribe(**SECRETS)
    assert first == second
    assert len(gateway.upstreams.made) == 1
    assert gateway.hub.channels[first].subscriber_count == 1


async def test_unsubscribe_unknown_channel_is_ok_and_bad_key_is_400(gateway: Gateway) -> None:
    client = await gateway.client()
    await client.unsubscribe("api/v1/secrets::nothing-here::::")
    with pytest.raises(WatchClientError) as caught:
        await client.unsubscribe("not a key")
    assert caught.value.status == 400
    assert "channel" in caught.value.message


async def test_unsubscribe_stops_events_and_says_so(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(make_object("a"), rv=2)
    await client.wait_synced(channel)
    await client.unsubscribe(channel)
    await client.wait_for(lambda c: c.unsubscribed.get(channel) == "client")
    upstream.emit("ADDED", make_object("b", rv=3))
    # A second channel's event proves the stream is alive and ordered after the one that must not come.
    other = await client.subscribe(resourceType="api/v1/configmaps")
    gateway.upstreams.for_key(other).listed(rv=4)
    await client.wait_synced(other)
    assert not [e for e in client.events if e.event == "watch" and '"name":"b"' in e.data]


@pytest.mark.parametrize(
    ("limits", "code", "status"),
    [
        ({"max_subscriptions_per_client": 2}, "too_many_subscriptions", 429),
        ({"max_channels": 2}, "too_many_channels", 429),
    ],
)
async def test_subscription_limits(
    gateway_factory: Callable[..., Any], limits: dict[str, int], code: str, status: int
) -> None:
    gateway: Gateway = await gateway_factory(make_config(limits=limits))
    client = await gateway.client()
    await client.subscribe(resourceType="api/v1/secrets")
    await client.subscribe(resourceType="api/v1/configmaps")
    with pytest.raises(WatchClientError) as caught:
        await client.subscribe(resourceType="api/v1/pods")
    assert (caught.value.status, caught.value.code) == (status, code)
    assert len(gateway.upstreams.made) == 2, "refused before any upstream work"


async def test_max_clients_is_503_before_the_stream(gateway_factory: Callable[..., Any]) -> None:
    gateway: Gateway = await gateway_factory(make_config(limits={"max_clients": 1}))
    await gateway.client()
    second = await gateway.client(connect=False)
    with pytest.raises(WatchClientError) as caught:
        await second.connect()
    assert (caught.value.status, caught.value.code) == (503, "too_many_clients")


async def test_stats_in_the_seed_shape(gateway: Gateway) -> None:
    a = await gateway.client()
    b = await gateway.client()
    channel = await a.subscribe(**SECRETS)
    await b.subscribe(**SECRETS)
    await b.subscribe(resourceType="api/v1/configmaps")
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/api/watch/stats") as response:
        stats = await response.json()
    assert stats["clients"] == 2
    assert stats["upstreams"] == 2
    assert stats["subscriptions"] == {channel: 2, "api/v1/configmaps:::::::": 1}


async def test_stats_and_metrics_are_404_unless_enabled(gateway_factory: Callable[..., Any]) -> None:
    config = make_config()
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, stats=False, metrics=False)
    )
    gateway: Gateway = await gateway_factory(config)
    async with aiohttp.ClientSession() as http:
        for path in ("/api/watch/stats", "/metrics"):
            async with http.get(gateway.url + path) as response:
                assert response.status == 404
                assert (await response.json())["error"]["code"] == "not_found"


async def test_metrics_exposition(gateway: Gateway) -> None:
    client = await gateway.client()
    await client.subscribe(**SECRETS)
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as response:
        text = await response.text()
    assert response.status == 200
    assert "watchgw_channels 1.0" in text
    assert "watchgw_streams 1.0" in text
    assert "process_resident_memory_bytes" in text


async def test_health_and_readiness(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{gateway.url}/readyz") as response:
            assert response.status == 200
        gateway.hub.draining = True
        async with http.get(f"{gateway.url}/readyz") as response:
            assert response.status == 503
        gateway.hub.draining = False


async def test_wrong_method_and_unknown_path_are_json_errors(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/api/watch/subscribe") as response:
            assert response.status == 405
            assert (await response.json())["error"]["code"] == "method_not_allowed"
        async with http.get(f"{gateway.url}/nope") as response:
            assert response.status == 404


async def test_other_clients_keep_streaming_after_bad_input(gateway: Gateway) -> None:
    good = await gateway.client()
    channel = await good.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(rv=1)
    for body in (b"{", b'{"clientId": 1}', b"\x00" * 100, b'{"a":' * 500):
        status, _ = await post(gateway, "subscribe", body)
        assert 400 <= status < 500
    upstream.emit("ADDED", make_object("after", rv=2))
    await good.wait_for(lambda c: "default/after" in c.objects(channel))


async def test_metric_totals_survive_closed_channels(gateway: Gateway) -> None:
    client = await gateway.client()
    channel = await client.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(rv=1)
    upstream.emit("ADDED", make_object("a", rv=2))
    await client.wait_for(lambda c: "default/a" in c.objects(channel))
    await client.unsubscribe(channel)
    hub = gateway.hub
    await hub.wait_for(lambda: channel not in hub.channels)
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as response:
        text = await response.text()
    assert "watchgw_deliveries_total 1.0" in text
    assert "watchgw_upstream_events_total 1.0" in text
    assert "watchgw_channels 0.0" in text


async def test_user_scoped_needs_an_authenticated_user(gateway: Gateway) -> None:
    client = await gateway.client()
    with pytest.raises(WatchClientError) as refused:
        await client.subscribe(resourceType="api/v1/secrets", userScoped=True)
    assert (refused.value.status, refused.value.code) == (400, "invalid_request")
    assert "userScoped" in refused.value.message
    assert "authenticated" in refused.value.message
    assert not gateway.hub.channels, "nothing was opened for it"
