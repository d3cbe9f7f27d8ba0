"""Informer against a scripted local API server: stream shapes, resume, relist+diff, errors."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import ujson
from aiohttp.pytest_plugin import AiohttpServer

from watchgw.config import UpstreamConfig
from watchgw.kube.client import KubeClient
from watchgw.kube.credentials import Credentials
from watchgw.kube.informer import Informer
from watchgw.kube.types import InformerPhase, InformerState

from .fakeapi import FakeAPI, bookmark, line, pod, status
from .informer_harness import TARGET, Recorder, TopOfRange, running

MiB = 1024 * 1024


async def test_first_list_then_watch(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.items = [pod("a", 3), pod("b", 4)]
    api.list_rv = "10"
    api.watch_scripts = [
        api.stream(line("ADDED", pod("c", 11)), line("MODIFIED", pod("a", 12)), then="stall")
    ]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(h.rec.events) == 4)
        assert [(e.type, e.key) for e in h.rec.events] == [
            ("ADDED", "default/a"),
            ("ADDED", "default/b"),
            ("ADDED", "default/c"),
            ("MODIFIED", "default/a"),
        ]
        assert h.rec.states == [InformerState(InformerPhase.WATCHING, "10")]
        assert h.informer.state.phase is InformerPhase.WATCHING
        assert h.informer.resource_version == "12"
        assert h.cache() == {"default/a": "12", "default/b": "4", "default/c": "11"}
        query = api.watch_requests[0]
        assert query["resourceVersion"] == "10"
        assert query["allowWatchBookmarks"] == "true"
        assert 60 <= int(query["timeoutSeconds"]) <= 120
        assert api.list_requests == [{"limit": "500"}]


async def test_tiny_chunks_crlf_blank_lines_and_multi_mib_object(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    big = pod("big", 5, data={"blob": "x" * (3 * MiB), "unicode": "héllo/✓"})
    first = line("ADDED", pod("a", 2)).replace(b"\n", b"\r\n") + b"\n\r\n"
    rest = (
        line("ADDED", big)
        + b'{"type": "MODIFIED", "object": {"metadata": {"name": "a", "namespace": "default", '
        + b'"resourceVersion": "6"}}}\n'
        + bookmark(7)
    )
    # The first stream ends (normally) in the middle of the big line; the second replays from rv 2.
    api.watch_scripts = [
        api.stream(first + rest[:5000], then="end", chunk_size=7),
        api.stream(rest, then="stall", chunk_size=65_537),
    ]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: h.informer.resource_version == "7")
        events = h.rec.events
        assert [(e.type, e.key) for e in events] == [
            ("ADDED", "default/a"),
            ("ADDED", "default/big"),
            ("MODIFIED", "default/a"),
            ("BOOKMARK", ""),
        ]
        for ev in events:
            assert ujson.loads(ev.object_json) == ev.object
            assert b"\n" not in ev.object_json
        assert events[1].object["data"]["blob"] == "x" * (3 * MiB)
        assert events[3].object["metadata"]["resourceVersion"] == "7"
        # the first stream was cut mid-line by a normal end: the partial line is malformed; the
        # watch resumes from the last resourceVersion, without a LIST
        assert len(api.list_requests) == 1
        assert api.watch_requests[1]["resourceVersion"] == "2"


async def test_object_json_is_a_slice_of_the_line(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    raw = (
        b'{"type":"ADDED","object":{"metadata":{"name":"s","namespace":"default","resourceVersion":"2"},'
        b'"x":"\\u00e9/"}}\n'
    )
    spaced = (
        b'{"type":"ADDED", "object": {"metadata":{"name":"t","namespace":"default","resourceVersion":"3"}}}\n'
    )
    api.watch_scripts = [api.stream(raw, spaced, then="stall")]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(h.rec.events) == 2)
        assert h.rec.events[0].object_json == raw[len(b'{"type":"ADDED","object":') : -2]
        assert ujson.loads(h.rec.events[1].object_json) == h.rec.events[1].object


async def test_normal_end_resumes_from_bookmark_without_list(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [api.stream(line("ADDED", pod("a", 2)), bookmark(9)), api.stream(bookmark(15))]
    async with running(fake) as h:
        await api.wait_for(lambda: len(api.watch_requests) == 3)
        assert [q["resourceVersion"] for q in api.watch_requests] == ["1", "9", "15"]
        assert len(api.list_requests) == 1
        assert [e.type for e in h.rec.events] == ["ADDED", "BOOKMARK", "BOOKMARK"]
        assert h.rec.phases() == [InformerPhase.WATCHING]


async def test_inactivity_timeout_restarts_watch(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [api.stream(line("ADDED", pod("a", 4)), then="stall")]
    async with running(fake, inactivity_timeout_s=0.2) as h:
        await api.wait_for(lambda: len(api.watch_requests) >= 2)
        assert api.watch_requests[1]["resourceVersion"] == "4"
        assert len(api.list_requests) == 1
        assert h.rec.phases() == [InformerPhase.WATCHING]  # a silent stream is not an error
        assert api.request_times[2] - api.request_times[1] >= 0.2


async def test_in_stream_410_relists_and_diffs(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.items = [pod("a", 1), pod("b", 2), pod("c", 3)]
    api.list_rv = "3"
    api.watch_scripts = [
        api.stream(
            line("MODIFIED", pod("a", 4)), line("ERROR", status(410, "Expired", "too old resource version"))
        )
    ]
    api.list_scripts = [api._list, api.list_of([pod("a", 7), pod("c", 3), pod("d", 6)], "8")]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(h.rec.states) == 2)
        tail = [(e.type, e.key, e.resource_version) for e in h.rec.events[3:]]
        assert tail == [
            ("MODIFIED", "default/a", "4"),
            ("MODIFIED", "default/a", "7"),
            ("ADDED", "default/d", "6"),
            ("DELETED", "default/b", "8"),
        ]
        assert h.rec.events[-1].object["metadata"]["resourceVersion"] == "2"  # last known object
        assert h.rec.states[-1] == InformerState(InformerPhase.WATCHING, "8")
        assert h.cache() == h.rec.applied() == {"default/a": "7", "default/c": "3", "default/d": "6"}
        await api.wait_for(lambda: len(api.watch_requests) == 2)
        assert api.watch_requests[1]["resourceVersion"] == "8"


async def test_http_410_on_watch_relists(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.items = [pod("a", 1)]
    api.watch_scripts = [api.error(410, status(410, "Gone", "gone"))]
    api.list_scripts = [api._list, api.list_of([], "5")]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(h.rec.states) == 2)
        assert [(e.type, e.key) for e in h.rec.events] == [("ADDED", "default/a"), ("DELETED", "default/a")]
        assert h.informer.objects == {}
        assert h.rec.phases() == [InformerPhase.WATCHING, InformerPhase.WATCHING]


async def test_404_on_list_is_gone(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.list_scripts = [
        api.error(404, status(404, "NotFound", "the server could not find the requested resource"))
    ]
    async with running(fake) as h:
        await asyncio.wait_for(h.task, 5)
        assert h.rec.states[-1].phase is InformerPhase.GONE
        assert h.rec.states[-1].error_code == 404


async def test_errors_degrade_once_then_recover_without_relist(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [
        api.error(500, status(500, "InternalError", "boom")),
        api.error(500, status(500, "InternalError", "boom")),
        api.error(503, status(503, "ServiceUnavailable", "later")),
        api.stream(line("ADDED", pod("a", 2)), then="stall"),
    ]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(h.rec.events) == 1)
        assert [(s.phase, s.error_code) for s in h.rec.states] == [
            (InformerPhase.WATCHING, 0),
            (InformerPhase.DEGRADED, 500),
            (InformerPhase.DEGRADED, 503),
            (InformerPhase.WATCHING, 0),
        ]
        assert h.rec.states[1].error_reason == "InternalError"
        assert h.rec.states[1].error_message == "boom"
        assert len(api.list_requests) == 1


async def test_malformed_line_resumes_from_last_rv(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [
        api.stream(line("ADDED", pod("a", 2)), b"{not json}\n", line("ADDED", pod("z", 99))),
        api.stream(line("ADDED", pod("b", 3)), then="stall"),
    ]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(h.rec.events) == 2)
        assert [e.key for e in h.rec.events] == ["default/a", "default/b"]
        assert api.watch_requests[1]["resourceVersion"] == "2"
        assert len(api.list_requests) == 1
        assert [(s.phase, s.error_code) for s in h.rec.states] == [
            (InformerPhase.WATCHING, 0),
            (InformerPhase.DEGRADED, 502),
            (InformerPhase.WATCHING, 0),
        ]


async def test_error_event_that_is_not_a_status(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [api.stream(b'{"type":"ERROR","object":"nope"}\n')]
    async with running(fake) as h:
        await h.rec.wait_for(lambda: len(h.rec.states) >= 3)
        assert [(s.phase, s.error_code) for s in h.rec.states] == [
            (InformerPhase.WATCHING, 0),
            (InformerPhase.DEGRADED, 502),
            (InformerPhase.WATCHING, 0),
        ]


async def test_cut_connection_resumes(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [api.stream(line("ADDED", pod("a", 2)), b'{"type":"ADD', then="cut")]
    async with running(fake) as h:
        await api.wait_for(lambda: len(api.watch_requests) == 2)
        assert api.watch_requests[1]["resourceVersion"] == "2"
        # One cut of a healthy watch is retried at once without alarming subscribers.
        assert [s.phase for s in h.rec.states] == [InformerPhase.WATCHING]


async def test_repeated_cuts_are_reported_degraded(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [
        api.stream(line("ADDED", pod("a", 2)), b'{"type":"ADD', then="cut"),
        api.stream(b'{"type":"MOD', then="cut"),
    ]
    async with running(fake) as h:
        await api.wait_for(lambda: len(api.watch_requests) == 3)
        await h.rec.wait_for(lambda: h.rec.phases()[-1] is InformerPhase.WATCHING and len(h.rec.states) == 3)
        assert h.rec.states[1].error_code == 503
        assert h.rec.states[1].error_reason == "StreamCut"
        assert api.watch_requests[2]["resourceVersion"] == "2"


async def test_429_honours_retry_after(fake: tuple[FakeAPI, str]) -> None:
    api, _ = fake
    api.watch_scripts = [
        api.error(429, status(429, "TooManyRequests", "slow"), headers={"Retry-After": "0.3"})
    ]
    async with running(fake) as h:
        await api.wait_for(lambda: len(api.watch_requests) == 2)
        assert api.request_times[2] - api.request_times[1] >= 0.3
        assert h.rec.states[1].error_code == 429


async def test_401_reloads_credentials(fake: tuple[FakeAPI, str], monkeypatch: pytest.MonkeyPatch) -> None:
    api, _ = fake
    api.list_scripts = [api.error(401, status(401, "Unauthorized", "token expired"))]
    reloads: list[bool] = []
    monkeypatch.setattr(Credentials, "force_reload", lambda self: reloads.append(True))
    async with running(fake) as h:
        await h.rec.wait_for(lambda: h.rec.phases()[-1:] == [InformerPhase.WATCHING])
        assert reloads == [True]
        assert h.rec.states[0].error_code == 401
        assert len(api.list_requests) == 2


async def test_token_provider_is_used(fake: tuple[FakeAPI, str], aiohttp_server: AiohttpServer) -> None:
    api, url = fake
    seen: list[str | None] = []
    original = api._list

    async def capture(request: Any) -> Any:
        seen.append(request.headers.get("Authorization"))
        return await original(request)

    api.list_scripts = [capture]
    config = UpstreamConfig(url=url, token="gateway")
    rec = Recorder()
    async with KubeClient(config) as client:
        informer = Informer(
            target=TARGET, client=client, config=config, listener=rec, token_provider=lambda: "sub"
        )
        task = asyncio.create_task(informer.run())
        await rec.wait_for(lambda: bool(rec.states))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert seen == ["Bearer sub"]


async def test_backoff_full_jitter_doubles_caps_and_resets() -> None:
    config = UpstreamConfig(url="http://x", backoff_initial_s=0.8, backoff_max_s=30, backoff_reset_s=60)
    informer = Informer(
        target=TARGET, client=KubeClient(config), config=config, listener=Recorder(), rng=TopOfRange()
    )
    informer._loop = asyncio.get_running_loop()
    ceilings = [informer._backoff(informer._count_failure()) for _ in range(8)]
    assert ceilings == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]
    informer._healthy_since = informer._now() - 61  # watches healthy for longer than backoff_reset_s
    assert informer._count_failure() == 0
    informer._healthy_since = informer._now() - 1
    assert informer._count_failure() == 1
    # A silent watch was healthy only until its last line, however long ago it was accepted.
    informer._healthy_since = informer._now() - 100
    assert informer._count_failure(healthy_until=informer._healthy_since + 5) == 2
    await informer._client.close()
