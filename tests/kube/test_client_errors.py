"""KubeClient against aioresponses: every typed error of LIST and WATCH, pagination."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qsl

import aiohttp
import pytest
import ujson
from aioresponses import aioresponses

from tests.kube.fakeapi import status
from watchgw.config import UpstreamConfig
from watchgw.kube import errors as e
from watchgw.kube.client import KubeClient
from watchgw.kube.types import WatchEvent, WatchTarget

URL = "http://kube.test"
PODS = re.compile(r"^http://kube\.test/api/v1/namespaces/default/pods(\?.*)?$")
TARGET = WatchTarget("api/v1/pods", namespace="default")
CONFIG = UpstreamConfig(url=URL, token="secret-token", list_page_size=2)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[KubeClient]:
    async with KubeClient(CONFIG) as c:
        yield c


async def collect(client: KubeClient, rv: str = "1", token: str | None = None) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async for batch in client.watch(TARGET, resource_version=rv, timeout_s=5, token=token):
        out.extend(batch)
    return out


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (401, "Unauthorized", e.UnauthorizedError),
        (403, "Forbidden", e.ForbiddenError),
        (404, "NotFound", e.NotFoundError),
        (409, "Conflict", e.ConflictError),
        (410, "Expired", e.GoneError),
        (500, "InternalError", e.ServerError),
        (503, "ServiceUnavailable", e.ServerError),
    ],
)
async def test_list_status_errors(
    mocked: aioresponses, client: KubeClient, code: int, reason: str, cls: type[e.APIError]
) -> None:
    mocked.get(PODS, status=code, payload=status(code, reason, f"{reason} happened"))
    with pytest.raises(cls) as info:
        await client.list_all(TARGET)
    assert info.value.status == code
    assert info.value.reason == reason
    assert info.value.message == f"{reason} happened"


@pytest.mark.parametrize("code", [401, 403, 404, 410, 500])
async def test_watch_http_status_errors(mocked: aioresponses, client: KubeClient, code: int) -> None:
    mocked.get(PODS, status=code, payload=status(code, "R", "m"))
    with pytest.raises(e.APIError) as info:
        await collect(client)
    assert info.value.status == code
    assert type(info.value) is type(e.error_for_status(code))


async def test_429_retry_after_header(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(
        PODS, status=429, payload=status(429, "TooManyRequests", "slow down"), headers={"Retry-After": "7"}
    )
    with pytest.raises(e.TooManyRequestsError) as info:
        await client.list_all(TARGET)
    assert info.value.retry_after_s == 7.0


async def test_429_without_retry_after(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(PODS, status=429, body="busy", content_type="text/plain")
    with pytest.raises(e.TooManyRequestsError) as info:
        await collect(client)
    assert info.value.retry_after_s is None
    assert info.value.message == "busy"


async def test_non_status_error_body_is_truncated(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(PODS, status=502, body="<html>" + "x" * 20_000, content_type="text/html")
    with pytest.raises(e.ServerError) as info:
        await client.list_all(TARGET)
    assert info.value.status == 502
    assert len(info.value.message) <= e.MAX_MESSAGE_CHARS
    assert info.value.message.startswith("<html>")


async def test_large_status_message_is_truncated(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(PODS, status=403, payload=status(403, "Forbidden", "no " * 5000))
    with pytest.raises(e.ForbiddenError) as info:
        await client.list_all(TARGET)
    assert len(info.value.message) == e.MAX_MESSAGE_CHARS


async def test_list_malformed_json(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(PODS, status=200, body='{"items": [', content_type="application/json")
    with pytest.raises(e.MalformedResponseError) as info:
        await client.list_all(TARGET)
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2],
        {"items": "nope", "metadata": {"resourceVersion": "1"}},
        {"items": [1]},
        {"items": []},
        {"items": [], "metadata": {"resourceVersion": "1", "continue": 5}},
        {"items": [], "metadata": {"resourceVersion": "v1"}},
        {"items": [{"metadata": {"name": "a", "resourceVersion": 7}}], "metadata": {"resourceVersion": "1"}},
        {
            "items": [{"metadata": {"name": "a", "resourceVersion": "x"}}],
            "metadata": {"resourceVersion": "1"},
        },
    ],
)
async def test_list_unexpected_shape(mocked: aioresponses, client: KubeClient, payload: object) -> None:
    mocked.get(PODS, status=200, body=ujson.dumps(payload))
    with pytest.raises(e.MalformedResponseError):
        await client.list_all(TARGET)


async def test_connection_error(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(PODS, exception=aiohttp.ClientConnectionError("refused"))
    with pytest.raises(e.UpstreamConnectionError) as info:
        await client.list_all(TARGET)
    assert info.value.status == 503
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), "ConnectionFailed"),
        (OSError(113, "No route to host"), "ConnectionFailed"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLSError"),
    ],
)
async def test_os_errors_aiohttp_does_not_wrap_are_connection_errors(
    mocked: aioresponses, client: KubeClient, raised: OSError, reason: str
) -> None:
    mocked.get(PODS, exception=raised)
    mocked.get(PODS, exception=raised)
    with pytest.raises(e.UpstreamConnectionError) as listing:
        await client.list_all(TARGET)
    with pytest.raises(e.UpstreamConnectionError) as watching:
        await collect(client)
    for info in (listing, watching):
        assert (info.value.status, info.value.reason) == (503, reason)
        assert type(raised).__name__ in info.value.message
        assert info.value.__cause__ is raised


async def test_timeout_is_connection_error(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(PODS, exception=TimeoutError())
    with pytest.raises(e.UpstreamConnectionError):
        await collect(client)


def pod(name: str, rv: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": rv}}


def line(kind: str, obj: object) -> str:
    return ujson.dumps({"type": kind, "object": obj}) + "\n"


async def test_watch_error_event_status(mocked: aioresponses, client: KubeClient) -> None:
    body = line("ADDED", pod("a", "5")) + line("ERROR", status(410, "Expired", "too old"))
    mocked.get(PODS, status=200, body=body)
    events: list[WatchEvent] = []

    async def consume() -> None:
        async for batch in client.watch(TARGET, resource_version="1", timeout_s=5):
            events.extend(batch)

    with pytest.raises(e.GoneError):
        await consume()
    assert [ev.key for ev in events] == ["default/a"]  # the event before the error is delivered


@pytest.mark.parametrize("obj", ['"oops"', '{"kind":"Pod"}', "null"])
async def test_watch_error_event_not_status(mocked: aioresponses, client: KubeClient, obj: str) -> None:
    mocked.get(PODS, status=200, body='{"type":"ERROR","object":' + obj + "}\n")
    with pytest.raises(e.MalformedResponseError):
        await collect(client)


@pytest.mark.parametrize(
    "bad_line",
    [
        "not json",
        "[1,2]",
        '{"type":"ADDED"}',
        '{"type":"ADDED","object":{"metadata":"x"}}',
        '{"type":"ADDED","object":{"metadata":{"name":"a"}}}',
        '{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":""}}}',
        '{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"0x1f"}}}',
        '{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"' + "1" * 40 + '"}}}',
    ],
)
async def test_watch_malformed_lines(mocked: aioresponses, client: KubeClient, bad_line: str) -> None:
    mocked.get(PODS, status=200, body=bad_line + "\n")
    with pytest.raises(e.MalformedResponseError):
        await collect(client)


async def test_error_text_echoing_the_token_is_redacted(mocked: aioresponses, client: KubeClient) -> None:
    echoed = "invalid header Authorization: Bearer secret-token; also secret-token"
    mocked.get(PODS, status=401, payload=status(401, "Unauthorized", echoed))
    mocked.get(PODS, status=403, body="no access for user-token\x00", content_type="text/plain")
    with pytest.raises(e.UnauthorizedError) as gateway:
        await client.list_all(TARGET)
    with pytest.raises(e.ForbiddenError) as subscriber:
        await collect(client, token="user-token")
    assert "secret-token" not in str(gateway.value)
    assert gateway.value.message.count("[redacted]") == 2
    assert subscriber.value.message == "no access for [redacted]"


async def test_watch_unknown_type_skipped(mocked: aioresponses, client: KubeClient) -> None:
    body = line("SURPRISE", pod("x", "2")) + line("MODIFIED", pod("a", "3"))
    mocked.get(PODS, status=200, body=body)
    events = await collect(client)
    assert [(ev.type, ev.key) for ev in events] == [("MODIFIED", "default/a")]


async def test_watch_sends_token_and_query(mocked: aioresponses, client: KubeClient) -> None:
    mocked.get(PODS, status=200, body=line("BOOKMARK", {"metadata": {"resourceVersion": "9"}}))
    events = await collect(client, rv="7")
    assert [(ev.type, ev.key, ev.resource_version) for ev in events] == [("BOOKMARK", "", "9")]
    ((_, url), calls) = next(iter(mocked.requests.items()))
    assert calls[0].kwargs["headers"]["Authorization"] == "Bearer secret-token"
    # aioresponses sorts the query; the order itself is tested in test_urls.py.
    assert sorted(parse_qsl(url.raw_query_string)) == [
        ("allowWatchBookmarks", "true"),
        ("resourceVersion", "7"),
        ("timeoutSeconds", "5"),
        ("watch", "true"),
    ]


async def test_list_paginates(mocked: aioresponses, client: KubeClient) -> None:
    page1 = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "10", "continue": "c/1"},
        "items": [pod("a", "3"), pod("b", "4")],
    }
    page2 = {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "10"},
        "items": [pod("c", "5")],
    }
    mocked.get(PODS, status=200, payload=page1)
    mocked.get(PODS, status=200, payload=page2)
    result = await client.list_all(TARGET)
    assert [i["metadata"]["name"] for i in result.items] == ["a", "b", "c"]  # type: ignore[index]
    assert result.resource_version == "10"
    assert result.pages == 2
    assert all(i["kind"] == "Pod" and i["apiVersion"] == "v1" for i in result.items)
    queries = sorted(sorted(parse_qsl(url.raw_query_string)) for (_, url) in mocked.requests)
    assert queries == [[("continue", "c/1"), ("limit", "2")], [("limit", "2")]]


async def test_list_restarts_when_continue_expires(mocked: aioresponses, client: KubeClient) -> None:
    page1 = {"metadata": {"resourceVersion": "10", "continue": "tok"}, "items": [pod("a", "3")]}
    mocked.get(PODS, status=200, payload=page1)
    mocked.get(PODS, status=410, payload=status(410, "Expired", "continue expired"))
    mocked.get(PODS, status=200, payload={"metadata": {"resourceVersion": "12"}, "items": [pod("b", "11")]})
    result = await client.list_all(TARGET)
    assert [i["metadata"]["name"] for i in result.items] == ["b"]  # type: ignore[index]
    assert result.resource_version == "12"


async def test_post_json_sends_body_and_maps_errors(mocked: aioresponses, client: KubeClient) -> None:
    ssar = "http://kube.test/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    mocked.post(ssar, status=201, payload={"status": {"allowed": True}})
    mocked.post(ssar, status=403, payload=status(403, "Forbidden", "nope"))
    answer = await client.post_json(ssar, {"kind": "SelfSubjectAccessReview"}, token="user-token")
    assert answer == {"status": {"allowed": True}}
    call = next(iter(mocked.requests.values()))[0]
    assert call.kwargs["headers"]["Authorization"] == "Bearer user-token"
    assert ujson.loads(call.kwargs["data"]) == {"kind": "SelfSubjectAccessReview"}
    with pytest.raises(e.ForbiddenError):
        await client.post_json(ssar, {}, token="user-token")
