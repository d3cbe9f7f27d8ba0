"""Hostile input: each gets a clear 4xx, and the gateway keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_config
from tests.fakes import FakeUpstreams, make_object
from tests.web.conftest import Gateway
from watchgw.client.client import WatchClientError
from watchgw.web import routes
from watchgw.web.app import make_app
from watchgw.web.keys import HUB
from watchgw.web.server import running_app

SECRETS = {"resourceType": "api/v1/secrets", "namespace": "default"}


async def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resourceType", "api/v1/../../secrets"),
        ("resourceType", "apis/x/v1/%2e%2e"),
        ("resourceType", "api/v1/secrets/../configmaps"),
        ("resourceType", "/api/v1/secrets"),
        ("resourceType", "api/v1/secrets?watch=1"),
        ("resourceType", "api/v1/sécrets"),
        ("namespace", "default\r\nevent: connected"),
        ("namespace", "déf"),
        ("name", "x\ndata: {}"),
        ("labelSelector", "app=x\n\nevent: reconnect"),
        ("fieldSelector", "metadata.name=\u2028x"),
        ("projectId", "../../etc"),
        ("orgId", "a" * 64),
        ("name", "a" * 254),
        ("resourceType", ["api/v1/secrets"]),
        ("namespace", {"$ne": ""}),
        ("snapshot", None),
    ],
)
async def test_hostile_fields_are_400_naming_the_field(gateway: Gateway, field: str, value: Any) -> None:
    client = await gateway.client()
    body = {"clientId": client.client_id, **SECRETS, field: value}
    if value is None:
        body[field] = "null-is-not-a-boolean"
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.url}/api/watch/subscribe", json=body) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert field in error["message"]
    assert not gateway.upstreams.made, "nothing reached an upstream"


@pytest.mark.parametrize(
    ("request_bytes", "statuses"),
    [
        (b"GET /api/watch/stream?cid=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (400, 414)),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n", (400, 431)),
        (b"GET /api/watch/stream?cid=abcdefgh%0d%0aX HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
        (
            b"POST /api/watch/subscribe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999\r\n\r\n{",
            (413,),
        ),
        (b"GARBAGE\r\n\r\n", (400,)),
    ],
)
async def test_oversized_and_malformed_requests(
    gateway: Gateway, request_bytes: bytes, statuses: tuple[int, ...]
) -> None:
    answer = await raw_request(gateway.url, request_bytes)
    status = int(answer.split(b" ", 2)[1])
    assert status in statuses
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200


async def test_subscribe_rate_limit_per_identity(gateway_factory: Callable[..., Any]) -> None:
    gateway: Gateway = await gateway_factory(
        make_config(
            limits={"subscribe_rate_per_s": 1, "subscribe_burst": 3},
            server={"trusted_proxies": ["127.0.0.1"]},
        )
    )
    client = await gateway.client()
    async with aiohttp.ClientSession() as http:
        statuses = []
        for i in range(5):
            body = {"clientId": client.client_id, "resourceType": "api/v1/secrets", "namespace": f"ns-{i}"}
            async with http.post(f"{gateway.url}/api/watch/subscribe", json=body) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
                    assert (await response.json())["error"]["code"] == "rate_limited"
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3:] == [429, 429]
    # Without authentication every caller is "anonymous": the bucket is per client address, so a
    # fresh cid from the same address does not get a fresh bucket; another address does.
    fresh = await gateway.client()
    with pytest.raises(WatchClientError) as caught:
        await fresh.subscribe(resourceType="api/v1/secrets", namespace="ns-0")
    assert (caught.value.status, caught.value.code) == (429, "rate_limited")
    other = await gateway.client(headers={"X-Forwarded-For": "198.51.100.7"})
    await other.subscribe(resourceType="api/v1/secrets", namespace="ns-0")


async def test_cors_allowlist(gateway_factory: Callable[..., Any]) -> None:
    gateway: Gateway = await gateway_factory(
        make_config(server={"cors_origins": ["https://console.example"]})
    )
    async with aiohttp.ClientSession() as http:
        preflight = {"Origin": "https://console.example", "Access-Control-Request-Method": "POST"}
        async with http.options(f"{gateway.url}/api/watch/subscribe", headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "https://console.example"
            assert response.headers["Access-Control-Allow-Credentials"] == "true"
        evil = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        async with http.options(f"{gateway.url}/api/watch/subscribe", headers=evil) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
        async with http.get(f"{gateway.url}/healthz", headers={"Origin": "https://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_no_cors_headers_without_configuration(gateway: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.url}/healthz", headers={"Origin": "https://console.example"}) as response,
    ):
        assert "Access-Control-Allow-Origin" not in response.headers


# ---------------------------------------------------------------------------- fuzzing
class ThreadedGateway:
    """A gateway on its own loop in a thread, so hypothesis can drive it with blocking calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        upstreams = FakeUpstreams()
        app = make_app(
            make_config(limits={"subscribe_burst": 100000, "max_subscriptions_per_client": 10000}),
            upstream_factory=upstreams,
        )
        async with running_app(app) as url:
            # A session the fuzzed bodies can name, so subscribe gets past the client lookup.
            app[HUB].open_stream(client_id="fuzz-client-1", identity="anonymous", last_event_id=None)
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def threaded_gateway() -> Iterator[ThreadedGateway]:
    with ThreadedGateway() as gateway:
        yield gateway


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_start(url: str) -> tuple[int, bytes]:
    """The status and the first bytes of a GET (a stream is left after its first frame)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=10) as response:
            return response.status, response.read(16)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(sorted(routes._SUBSCRIBE_FIELDS | routes._UNSUBSCRIBE_FIELDS | {"extra"}))
plausible = st.sampled_from(
    ["fuzz-client-1", "api/v1/secrets", "apis/a.b/v1/things", "default", "proj-abc", "", "a=b", "x:y%"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(field_names, plausible | json_values, max_size=8), raw=st.binary(max_size=64))
def test_fuzz_subscribe_bodies(threaded_gateway: ThreadedGateway, body: dict[str, Any], raw: bytes) -> None:
    for payload in (json.dumps(body).encode(), raw):
        for path in ("subscribe", "unsubscribe"):
            status, answer = http(
                "POST",
                f"{threaded_gateway.url}/api/watch/{path}",
                payload,
                {"Content-Type": "application/json"},
            )
            assert 200 <= status < 500, answer
            if status >= 400:
                assert json.loads(answer)["error"]["code"]
    assert http("GET", f"{threaded_gateway.url}/healthz")[0] == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.dictionaries(st.sampled_from(["cid", "lastEventId", "x"]), st.text(max_size=80), max_size=3))
def test_fuzz_stream_query_strings(threaded_gateway: ThreadedGateway, query: dict[str, str]) -> None:
    url = f"{threaded_gateway.url}/api/watch/stream?{urllib.parse.urlencode(query)}"
    status, first = http_start(url)
    if status == 200:
        assert first.startswith(b"retry: "), "a valid cid opens a stream"
    else:
        assert 400 <= status < 500
        assert json.loads(first)["error"]["code"]
    assert http("GET", f"{threaded_gateway.url}/healthz")[0] == 200


async def test_gateway_keeps_serving_a_live_client_through_the_table(gateway: Gateway) -> None:
    live = await gateway.client()
    channel = await live.subscribe(**SECRETS)
    upstream = gateway.upstreams.for_key(channel)
    upstream.listed(rv=1)
    await live.wait_synced(channel)
    for request_bytes in (
        b"GARBAGE\r\n\r\n",
        b"POST /api/watch/subscribe HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{",
    ):
        await raw_request(gateway.url, request_bytes)
    upstream.emit("ADDED", make_object("still-here", rv=2))
    await live.wait_for(lambda c: "default/still-here" in c.objects(channel))
