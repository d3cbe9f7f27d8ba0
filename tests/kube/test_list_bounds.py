"""A LIST is bounded in bytes (``upstream.max_list_bytes``) over all its pages: a bigger collection
is never read whole; the informer reports ``ListTooLarge`` and retries with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import ujson
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.kube.informer_harness import Recorder
from watchgw.config import UpstreamConfig
from watchgw.kube.client import KubeClient, ListTooLargeError
from watchgw.kube.informer import Informer
from watchgw.kube.types import InformerPhase, WatchTarget

TARGET = WatchTarget("api/v1/configmaps", namespace="default")
PAGE_ITEMS = 10
PAD = "x" * 1000  # each object ~1.1 KB: 100 objects are ~110 KB of JSON


class BigList:
    """A tiny upstream: a LIST of ``count`` objects in pages of ``limit`` (continue = offset),
    sent with or without Content-Length; counts the bytes it sent."""

    def __init__(self, count: int, *, chunked: bool) -> None:
        self.count = count
        self.chunked = chunked
        self.lists = 0
        self.pages = 0
        self.sent = 0
        self.listed = asyncio.Event()
        """Set at every LIST that starts (tests clear it)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") in ("1", "true"):
            return web.Response(status=500)  # never reached by these tests
        start = int(request.query.get("continue") or 0)
        if start == 0:
            self.lists += 1
            self.listed.set()
        self.pages += 1
        limit = int(request.query.get("limit") or self.count)
        end = min(self.count, start + limit)
        items = [
            {
                "metadata": {"name": f"cm-{i}", "namespace": "default", "resourceVersion": str(i + 1)},
                "data": PAD,
            }
            for i in range(start, end)
        ]
        meta: dict[str, Any] = {"resourceVersion": str(self.count + 1)}
        if end < self.count:
            meta["continue"] = str(end)
        body = ujson.dumps(
            {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": meta, "items": items}
        ).encode()
        if not self.chunked:
            self.sent += len(body)
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for offset in range(0, len(body), 4096):
            await response.write(body[offset : offset + 4096])
            self.sent += len(body[offset : offset + 4096])
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def upstream(big: BigList) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", big.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def config(url: str, **overrides: Any) -> UpstreamConfig:
    values: dict[str, Any] = {
        "url": url,
        "list_page_size": PAGE_ITEMS,
        "max_list_bytes": 50_000,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        **overrides,
    }
    return UpstreamConfig(**values)


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_list_over_the_bound_is_refused_and_not_read_whole(chunked: bool) -> None:
    big = BigList(100, chunked=chunked)  # ~110 KB in 10 pages of ~11 KB: no page is over 50 KB
    async with upstream(big) as url, KubeClient(config(url)) as client:
        with pytest.raises(ListTooLargeError) as caught:
            await client.list_all(TARGET)
    error = caught.value
    assert (error.status, error.reason) == (413, "ListTooLarge")
    assert "upstream.max_list_bytes" in error.message
    assert "50000" in error.message
    assert big.pages <= 5, "it stopped at the page that passed the bound"


@pytest.mark.parametrize("chunked", [False, True])
async def test_one_page_over_the_bound_is_not_read_whole(chunked: bool) -> None:
    big = BigList(100, chunked=chunked)
    # One page of everything (~110 KB) against a bound of 20 KB.
    async with (
        upstream(big) as url,
        KubeClient(config(url, list_page_size=1000, max_list_bytes=20_000)) as client,
    ):
        with pytest.raises(ListTooLargeError):
            await client.list_all(TARGET)
    assert big.pages == 1


async def test_a_list_within_the_bound_is_listed() -> None:
    big = BigList(30, chunked=True)
    async with upstream(big) as url, KubeClient(config(url)) as client:
        result = await client.list_all(TARGET)
    assert len(result.items) == 30
    assert result.pages == 3


async def test_the_informer_reports_list_too_large_and_retries_with_backoff() -> None:
    big = BigList(100, chunked=False)
    recorder = Recorder()
    async with upstream(big) as url, KubeClient(config(url)) as client:
        informer = Informer(
            target=TARGET, client=client, config=config(url), listener=recorder, rng=random.Random(1)
        )
        task = asyncio.create_task(informer.run())
        try:
            await recorder.wait_for(lambda: bool(recorder.degraded()))
            async with asyncio.timeout(5):
                while big.lists < 3:  # retried (backoff of 10-20 ms), bounded by the timeout
                    big.listed.clear()
                    await big.listed.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    state = recorder.degraded()[0]
    assert (state.error_code, state.error_reason) == (413, "ListTooLarge")
    assert "upstream.max_list_bytes" in state.error_message
    assert InformerPhase.WATCHING not in recorder.phases()
    assert not informer.objects, "nothing of a collection over the bound is held"
