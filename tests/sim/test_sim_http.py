from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import ujson

from watchgw.sim import Fault, Simulator, running_simulator

from .helpers_sim import CM, ZONES, Lines, cm, summary

NS_CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
async def env() -> AsyncIterator[tuple[Simulator, str, aiohttp.ClientSession]]:
    async with (
        running_simulator(bookmark_interval_s=0.05) as (sim, url),
        aiohttp.ClientSession(url) as session,
    ):
        yield sim, url, session


Env = tuple[Simulator, str, aiohttp.ClientSession]


async def get_json(session: aiohttp.ClientSession, path: str, status: int = 200, **params: Any) -> Any:
    async with session.get(path, params=params) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


def assert_status(body: dict[str, Any], code: int, reason: str) -> None:
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason


# ------------------------------------------------------------------ LIST
async def test_list_shape_and_namespaces(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("b"), namespace="default")
    sim.create(CM, cm("a"), namespace="default")
    sim.create(CM, cm("c"), namespace="other")
    body = await get_json(s, NS_CM)
    assert body["kind"] == "ConfigMapList"
    assert body["apiVersion"] == "v1"
    assert body["metadata"] == {"resourceVersion": sim.resource_version}
    assert [i["metadata"]["name"] for i in body["items"]] == ["a", "b"]
    everything = await get_json(s, "/api/v1/configmaps", resourceVersion="0")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everything["items"]] == [
        ("default", "a"),
        ("default", "b"),
        ("other", "c"),
    ]
    assert sim.list_requests == 2


async def test_list_pagination_is_a_consistent_snapshot(env: Env) -> None:
    sim, _, s = env
    for i in range(7):
        sim.create(CM, cm(f"cm-{i}"), namespace="default")
    first = await get_json(s, NS_CM, limit="3")
    rv = first["metadata"]["resourceVersion"]
    assert first["metadata"]["remainingItemCount"] == 4
    # Concurrent changes must not show up in later pages.
    sim.delete(CM, "cm-4", namespace="default")
    sim.create(CM, cm("cm-9"), namespace="default")
    sim.update(CM, {"metadata": {"name": "cm-5"}, "data": {"k": "new"}}, namespace="default")
    names = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    while token:
        page = await get_json(s, NS_CM, limit="3", **{"continue": token})
        assert page["metadata"]["resourceVersion"] == rv
        names += [i["metadata"]["name"] for i in page["items"]]
        assert all(i["data"]["k"] != "new" for i in page["items"])
        token = page["metadata"].get("continue")
    assert names == [f"cm-{i}" for i in range(7)]
    assert sim.list_requests == 3


async def test_list_continue_expired_and_invalid(env: Env) -> None:
    sim, _, s = env
    for i in range(3):
        sim.create(CM, cm(f"cm-{i}"), namespace="default")
    first = await get_json(s, NS_CM, limit="1")
    sim.compact()
    body = await get_json(s, NS_CM, 410, **{"continue": first["metadata"]["continue"]})
    assert_status(body, 410, "Expired")
    assert body["message"].startswith("The provided continue parameter is too old")
    assert_status(await get_json(s, NS_CM, 400, **{"continue": "garbage!"}), 400, "BadRequest")


async def test_list_selectors_and_bad_selector(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a", app="web"), namespace="default")
    sim.create(CM, cm("b", app="db"), namespace="default")
    body = await get_json(s, NS_CM, labelSelector="app in (web)")
    assert [i["metadata"]["name"] for i in body["items"]] == ["a"]
    body = await get_json(s, NS_CM, fieldSelector="metadata.name!=a")
    assert [i["metadata"]["name"] for i in body["items"]] == ["b"]
    assert_status(await get_json(s, NS_CM, 400, labelSelector="app in ("), 400, "BadRequest")
    body = await get_json(s, NS_CM, 400, fieldSelector="spec.x=y")
    assert_status(body, 400, "BadRequest")
    assert "field label not supported" in body["message"]


# ----------------------------------------------------------------- WATCH
async def open_watch(
    s: aiohttp.ClientSession, path: str, **params: str
) -> tuple[aiohttp.ClientResponse, Lines]:
    resp = await s.get(path, params={"watch": "true", **params})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    return resp, Lines(resp)


@pytest.mark.parametrize("rv", ["", "0"])
async def test_watch_initial_state_then_live(env: Env, rv: str) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    sim.create(CM, cm("x"), namespace="other")
    resp, lines = await open_watch(s, NS_CM, resourceVersion=rv)
    async with resp:
        assert summary(await lines.take(1)) == [("ADDED", "a")]
        sim.update(CM, cm("a"), namespace="default")
        sim.create(CM, cm("y"), namespace="other")
        sim.delete(CM, "a", namespace="default")
        events = await lines.take(2)
        assert summary(events) == [("MODIFIED", "a"), ("DELETED", "a")]
        assert events[1]["object"]["metadata"]["resourceVersion"] == sim.resource_version
    await sim.wait_for(lambda: sim.open_watches == 0)
    assert sim.watch_requests == 1


async def test_watch_line_format_is_exactly_kubernetes(env: Env) -> None:
    sim, _, s = env
    resp = await s.get(NS_CM, params={"watch": "1", "resourceVersion": sim.resource_version})
    async with resp:
        sim.create(CM, {"metadata": {"name": "a"}, "data": {"url": "http://x/<y>"}}, namespace="default")
        raw = await resp.content.readline()
    assert raw.startswith(b'{"type":"ADDED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{')
    assert raw.endswith(b"}}\n")
    assert b'"url":"http://x/\\u003cy\\u003e"' in raw
    assert b": " not in raw


async def test_watch_from_resource_version_replays_history(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    start = sim.resource_version
    sim.create(CM, cm("b"), namespace="default")
    sim.update(CM, cm("a"), namespace="default")
    sim.delete(CM, "b", namespace="default")
    resp, lines = await open_watch(s, NS_CM, resourceVersion=start, timeoutSeconds="1")
    async with resp:
        assert summary(await lines.take(3)) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


async def test_watch_from_future_resource_version_waits(env: Env) -> None:
    sim, _, s = env
    future = int(sim.resource_version) + 1
    resp, lines = await open_watch(s, NS_CM, resourceVersion=str(future))
    async with resp:
        sim.create(CM, cm("skipped"), namespace="default")
        sim.create(CM, cm("seen"), namespace="default")
        assert summary(await lines.take(1)) == [("ADDED", "seen")]


async def test_watch_from_compacted_rv_gets_410_in_stream(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    old = int(sim.resource_version) - 1
    sim.compact()
    async with s.get(NS_CM, params={"watch": "true", "resourceVersion": str(old)}) as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body == (
        b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"too old resource version: '
        + str(old).encode()
        + b" ("
        + sim.resource_version.encode()
        + b')","reason":"Expired","code":410}}\n'
    )


async def test_watch_history_limit() -> None:
    async with running_simulator(history_limit=2) as (sim, url), aiohttp.ClientSession(url) as s:
        start = sim.resource_version
        for i in range(3):
            sim.create(CM, cm(f"c{i}"), namespace="default")
        async with s.get(NS_CM, params={"watch": "1", "resourceVersion": start}) as resp:
            events = await Lines(resp).rest()
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410
        ok = str(int(start) + 1)  # the last two events are retained
        resp, lines = await open_watch(s, NS_CM, resourceVersion=ok)
        async with resp:
            assert summary(await lines.take(2)) == [("ADDED", "c1"), ("ADDED", "c2")]


async def test_watch_timeout_seconds_ends_cleanly(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    async with s.get(NS_CM, params={"watch": "true", "timeoutSeconds": "1"}) as resp:
        events = await Lines(resp).rest()  # ends without error when the server closes the stream
    assert summary(events) == [("ADDED", "a")]


async def test_bookmarks_only_when_asked(env: Env) -> None:
    sim, _, s = env
    resp, lines = await open_watch(s, NS_CM, allowWatchBookmarks="true")
    async with resp:
        sim.create(CM, cm("a"), namespace="default")
        events = await lines.take(2)
    assert events[0]["type"] == "ADDED"
    assert events[1] == {
        "type": "BOOKMARK",
        "object": {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": sim.resource_version},
        },
    }
    # Without allowWatchBookmarks nothing but real events arrives, even across many intervals.
    async with s.get(NS_CM, params={"watch": "true", "timeoutSeconds": "1"}) as resp:
        assert summary(await Lines(resp).rest()) == [("ADDED", "a")]


@pytest.mark.parametrize(
    ("value", "watch"),
    [(v, True) for v in ("1", "t", "T", "TRUE", "true", "True")]
    + [(v, False) for v in ("0", "f", "F", "FALSE", "false", "False")],
)
async def test_watch_parse_bool(env: Env, value: str, watch: bool) -> None:
    sim, _, s = env
    async with s.get(NS_CM, params={"watch": value}) as resp:
        assert resp.status == 200
        if watch:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert sim.watch_requests == 1
            assert sim.open_watches == 1
        else:
            assert ujson.loads(await resp.text())["kind"] == "ConfigMapList"
            assert sim.list_requests == 1


@pytest.mark.parametrize("value", ["yes", "", "tRUE", "2"])
async def test_watch_parse_bool_rejects(env: Env, value: str) -> None:
    _, _, s = env
    assert_status(await get_json(s, NS_CM, 400, watch=value), 400, "BadRequest")
    assert_status(await get_json(s, NS_CM, 400, watch="true", allowWatchBookmarks=value), 400, "BadRequest")


async def test_watch_selector_transitions(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a", app="web"), namespace="default")
    resp, lines = await open_watch(s, NS_CM, labelSelector="app=web")
    async with resp:
        assert summary(await lines.take(1)) == [("ADDED", "a")]
        sim.create(CM, cm("b", app="db"), namespace="default")  # never matches: nothing
        sim.update(CM, cm("a", app="db"), namespace="default")  # leaves the selector
        ev = await lines.next()
        assert ev is not None
        assert (ev["type"], ev["object"]["metadata"]["name"]) == ("DELETED", "a")
        assert ev["object"]["metadata"]["labels"] == {"app": "web"}  # the last state that matched
        assert ev["object"]["metadata"]["resourceVersion"] == sim.resource_version
        sim.update(CM, cm("b", app="web"), namespace="default")  # enters the selector
        assert summary(await lines.take(1)) == [("ADDED", "b")]


async def test_watch_field_selector(env: Env) -> None:
    sim, _, s = env
    resp, lines = await open_watch(s, NS_CM, fieldSelector="metadata.name=b")
    async with resp:
        sim.create(CM, cm("a"), namespace="default")
        sim.create(CM, cm("b"), namespace="default")
        assert summary(await lines.take(1)) == [("ADDED", "b")]


async def test_watch_bad_resource_version(env: Env) -> None:
    _, _, s = env
    assert_status(await get_json(s, NS_CM, 400, watch="1", resourceVersion="abc"), 400, "BadRequest")


# ---------------------------------------------------------------- FAULTS
async def test_fault_cut_watch(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    sim.create(CM, cm("b"), namespace="default")
    sim.inject(Fault("cut"))
    resp, lines = await open_watch(s, NS_CM)
    async with resp:
        assert summary(await lines.take(1)) == [("ADDED", "a")]
        with pytest.raises((aiohttp.ClientPayloadError, AssertionError)):
            await lines.next()
    await sim.wait_for(lambda: sim.open_watches == 0)


async def test_fault_cut_list(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    sim.inject(Fault("cut", on="list"))
    async with s.get(NS_CM) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert (await get_json(s, NS_CM))["items"][0]["metadata"]["name"] == "a"


async def test_fault_stall(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    sim.inject(Fault("stall"))
    async with s.get(NS_CM, params={"watch": "1", "timeoutSeconds": "1", "allowWatchBookmarks": "1"}) as resp:
        assert resp.status == 200
        assert sim.open_watches == 1
        assert await resp.read() == b""  # nothing at all, then the timeout ends it
    await sim.wait_for(lambda: sim.open_watches == 0)


async def test_fault_stall_is_ended_by_server_stop() -> None:
    async with aiohttp.ClientSession() as s:
        async with running_simulator() as (sim, url):
            sim.inject(Fault("stall"))
            resp = await s.get(url + NS_CM, params={"watch": "1"})
            assert resp.status == 200
            await sim.wait_for(lambda: sim.open_watches == 1)
            reading = asyncio.ensure_future(resp.read())
        async with resp:
            assert await reading == b""  # a clean end of the chunked stream
        assert sim.open_watches == 0


async def test_fault_gone_in_stream(env: Env) -> None:
    sim, _, s = env
    sim.inject(Fault("gone"))
    async with s.get(NS_CM, params={"watch": "1", "resourceVersion": sim.resource_version}) as resp:
        assert resp.status == 200
        events = await Lines(resp).rest()
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert_status(events[0]["object"], 410, "Expired")


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("gone_http", 410, "Expired"),
        ("too_many", 429, "TooManyRequests"),
        ("error500", 500, "InternalError"),
        ("unauthorized", 401, "Unauthorized"),
    ],
)
@pytest.mark.parametrize("on", ["list", "watch"])
async def test_http_faults(env: Env, kind: Any, code: int, reason: str, on: Any) -> None:
    sim, _, s = env
    sim.inject(Fault(kind, on=on, count=2, retry_after_s=7))
    params = {"watch": "1", "timeoutSeconds": "1"} if on == "watch" else {}
    for _ in range(2):
        async with s.get(NS_CM, params=params) as resp:
            assert resp.status == code
            assert_status(await resp.json(), code, reason)
            if kind == "too_many":
                assert resp.headers["Retry-After"] == "7"
    async with s.get(NS_CM, params=params) as resp:
        assert resp.status == 200


async def test_fault_path_contains_and_any(env: Env) -> None:
    sim, _, s = env
    sim.inject(Fault("error500", on="any", path_contains="secrets"))
    async with s.get(NS_CM) as resp:
        assert resp.status == 200
    async with s.get("/api/v1/namespaces/default/secrets") as resp:
        assert resp.status == 500
    assert sim.faults == []


async def test_cut_watches(env: Env) -> None:
    sim, _, s = env
    resp1, lines1 = await open_watch(s, NS_CM)
    resp2, lines2 = await open_watch(s, "/api/v1/secrets")
    async with resp1, resp2:
        await sim.wait_for(lambda: sim.open_watches == 2)
        assert sim.cut_watches() == 2
        for lines in (lines1, lines2):
            with pytest.raises((aiohttp.ClientPayloadError, AssertionError)):
                await lines.next()
    await sim.wait_for(lambda: sim.open_watches == 0)


async def test_client_disconnect_closes_watch(env: Env) -> None:
    sim, _, s = env
    resp = await s.get(NS_CM, params={"watch": "1"})
    await sim.wait_for(lambda: sim.open_watches == 1)
    resp.close()
    await sim.wait_for(lambda: sim.open_watches == 0)


# ------------------------------------------------------------- WRITES etc.
async def test_crud_over_http(env: Env) -> None:
    sim, _, s = env
    async with s.post(NS_CM, json=cm("a")) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["metadata"]["namespace"] == "default"
    async with s.post(NS_CM, json=cm("a")) as resp:
        assert resp.status == 409
        assert_status(await resp.json(), 409, "AlreadyExists")
    body = {**created, "data": {"k": "v2"}}
    async with s.put(f"{NS_CM}/a", json=body) as resp:
        assert resp.status == 200
        updated = await resp.json()
    assert updated["data"] == {"k": "v2"}
    async with s.put(f"{NS_CM}/a", json=body) as resp:  # stale resourceVersion now
        assert resp.status == 409
        assert_status(await resp.json(), 409, "Conflict")
    async with s.patch(
        f"{NS_CM}/a", data=b'{"data":{"p":"1"}}', headers={"Content-Type": "application/merge-patch+json"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["data"] == {"k": "v2", "p": "1"}
    got = await get_json(s, f"{NS_CM}/a")
    assert got["data"] == {"k": "v2", "p": "1"}
    async with s.delete(f"{NS_CM}/a") as resp:
        assert resp.status == 200
        assert (await resp.json())["metadata"]["name"] == "a"
    body404 = await get_json(s, f"{NS_CM}/a", 404)
    assert_status(body404, 404, "NotFound")
    assert body404["message"] == 'configmaps "a" not found'
    async with s.put(f"{NS_CM}/zz", json=cm("zz")) as resp:
        assert resp.status == 404
    assert sim.get(CM, "a", namespace="default") is None


@pytest.mark.parametrize(
    ("prefix", "scope"),
    [
        (
            "/apis/resourcemanager.miloapis.com/v1alpha1/projects/proj-abc/control-plane",
            {"project": "proj-abc"},
        ),
        ("/apis/resourcemanager.miloapis.com/v1alpha1/organizations/org-1/control-plane", {"org": "org-1"}),
    ],
)
async def test_project_and_org_prefixes(env: Env, prefix: str, scope: dict[str, str]) -> None:
    sim, _, s = env
    sim.create(ZONES, {"metadata": {"name": "z1"}}, namespace="default", **scope)
    sim.create(ZONES, {"metadata": {"name": "plain"}}, namespace="default")
    path = f"{prefix}/apis/dns.networking.miloapis.com/v1alpha1/namespaces/default/dnszones"
    body = await get_json(s, path)
    assert body["kind"] == "DNSZoneList"
    assert [i["metadata"]["name"] for i in body["items"]] == ["z1"]
    resp, lines = await open_watch(s, path)
    async with resp:
        assert summary(await lines.take(1)) == [("ADDED", "z1")]
        sim.create(ZONES, {"metadata": {"name": "plain2"}}, namespace="default")
        sim.create(ZONES, {"metadata": {"name": "z2"}}, namespace="default", **scope)
        assert summary(await lines.take(1)) == [("ADDED", "z2")]
    async with s.post(path, json={"metadata": {"name": "z3"}}) as r:
        assert r.status == 201
    assert sim.get(ZONES, "z3", namespace="default", **scope) is not None


async def test_authentication(env: Env) -> None:
    sim, _, s = env
    sim.tokens = {"good": "alice"}
    assert_status(await get_json(s, NS_CM, 401), 401, "Unauthorized")
    async with s.get(NS_CM, headers={"Authorization": "Bearer bad"}) as resp:
        assert resp.status == 401
    async with s.get(NS_CM, headers={"Authorization": "Bearer good"}) as resp:
        assert resp.status == 200
    async with s.post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews", json={}, headers={"Authorization": "Bearer good"}
    ) as resp:
        assert (await resp.json())["status"]["userInfo"]["username"] == "alice"


async def test_authorizer_and_access_review(env: Env) -> None:
    sim, _, s = env
    sim.authorizer = lambda user, attrs: attrs["namespace"] == "default"
    async with s.get("/api/v1/namespaces/private/configmaps") as resp:
        assert resp.status == 403
        assert_status(await resp.json(), 403, "Forbidden")
    review = {
        "spec": {"resourceAttributes": {"verb": "watch", "resource": "configmaps", "namespace": "private"}}
    }
    async with s.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", json=review) as resp:
        assert resp.status == 201
        assert (await resp.json())["status"]["allowed"] is False


async def test_discovery(env: Env) -> None:
    sim, _, s = env
    sim.create("apis/example.com/v1/widgets", {"metadata": {"name": "w"}}, namespace="default")
    assert (await get_json(s, "/api"))["versions"] == ["v1"]
    groups = {g["name"] for g in (await get_json(s, "/apis"))["groups"]}
    assert {"example.com", "dns.networking.miloapis.com", "networking.datumapis.com"} <= groups
    core = await get_json(s, "/api/v1")
    assert {"configmaps", "secrets", "namespaces"} <= {r["name"] for r in core["resources"]}
    widgets = await get_json(s, "/apis/example.com/v1")
    assert widgets["resources"][0]["kind"] == "Widget"
    assert "watch" in widgets["resources"][0]["verbs"]
    assert (await get_json(s, "/version"))["major"] == "1"
    assert_status(await get_json(s, "/nope", 404), 404, "NotFound")


async def test_many_events_arrive_in_order(env: Env) -> None:
    sim, _, s = env
    sim.create(CM, cm("a"), namespace="default")
    resp, lines = await open_watch(s, NS_CM, resourceVersion=sim.resource_version)
    async with resp:
        for i in range(2000):
            sim.update(CM, {"metadata": {"name": "a"}, "data": {"i": str(i)}}, namespace="default")
            if i % 100 == 0:
                await asyncio.sleep(0)
        events = await lines.take(2000)
    assert [e["object"]["data"]["i"] for e in events] == [str(i) for i in range(2000)]
