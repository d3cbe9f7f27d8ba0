"""All tabs of an origin share one stream (watch-client.js: a SharedWorker holds the EventSource
and the channels), as the gateway's own stats show; closed tabs release what only they watched;
without SharedWorker each tab keeps its own stream, with the same API; waitFor settles and leaves
nothing registered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.browser.cdp import Browser, Page, chromium, chromium_path
from tests.browser.pages import wait_true
from tests.conftest import make_config
from watchgw.sim import Simulator, running_simulator
from watchgw.sim.demo import churn_once, seed_demo
from watchgw.web.app import make_app
from watchgw.web.server import running_app

pytestmark = pytest.mark.skipif(
    chromium_path() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (CI installs it; there this test must run)",
)

ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"
CONFIGMAPS = {"resourceType": "api/v1/configmaps", "projectId": "proj-abc", "namespace": "default"}
SERVICES = {"resourceType": "api/v1/services", "projectId": "proj-abc", "namespace": "default"}
ABC = {"project": "proj-abc", "namespace": "default"}

# What the demo page's lists show: {channel key: sorted names}, as JSON (sorted keys, no spaces).
SHOWN = """JSON.stringify(Object.fromEntries([...document.querySelectorAll("section")]
    .map((s) => [s.dataset.channel, [...s.querySelectorAll("li > span:first-child")]
        .map((e) => e.textContent).sort()])
    .sort((a, b) => (a[0] < b[0] ? -1 : 1))))"""
ALL_SYNCED = (
    "typeof wc === 'object' && Object.keys(wc.status.channels).length === 12"
    " && Object.values(wc.status.channels).every((c) => c.state === 'connected')"
)


def key(fields: dict[str, str]) -> str:
    return f"{fields['resourceType']}::{fields['projectId']}:{fields['namespace']}::::"


def expected(sim: Simulator, keys: list[str]) -> str:
    lists = {}
    for k in sorted(keys):
        resource_type, _org, project, namespace = k.split(":")[:4]
        objects = sim.list_objects(resource_type, project=project, namespace=namespace)
        lists[k] = sorted(o["metadata"]["name"] for o in objects)
    return json.dumps(lists, separators=(",", ":"))


async def converged(sim: Simulator, tabs: list[Page]) -> None:
    """Every tab's lists hold exactly the simulator's objects (waited for in each page)."""
    keys = list(json.loads(await tabs[0].evaluate(SHOWN)))
    want = json.dumps(expected(sim, keys))
    for tab in tabs:
        await tab.wait_for(f"{SHOWN} === {want}")


async def gateway_stats(
    http: aiohttp.ClientSession,
    url: str,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """The gateway's stats, or the first ones ``until`` is true of: stats tell nothing by
    themselves, so they are asked again every 50 ms, for at most ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(f"{url}/api/watch/stats") as response:
                stats: dict[str, Any] = await response.json()
            if until is None or until(stats):
                return stats
            await asyncio.sleep(0.05)  # the poll's interval (stats push nothing)


@contextlib.asynccontextmanager
async def demo_in_chromium(
    tmp_path: Path, *, seed: int
) -> AsyncIterator[tuple[Simulator, str, Browser, aiohttp.ClientSession]]:
    """The simulator with the demo's resources, a gateway serving the live page, a headless
    Chromium and an HTTP session for the gateway's stats; all stopped at the end."""
    async with running_simulator() as (sim, sim_url):
        seed_demo(sim, seed=seed)
        app = make_app(make_config(sim_url), static=True)
        async with (
            running_app(app) as url,
            chromium(tmp_path / "profile") as browser,
            aiohttp.ClientSession() as http,
        ):
            yield sim, url, browser, http


async def test_ten_tabs_share_one_stream_and_closing_tabs_releases_their_channels(tmp_path: Path) -> None:
    async with demo_in_chromium(tmp_path, seed=13) as (sim, url, browser, http):
        tabs = [await browser.open(f"{url}/") for _ in range(10)]
        for tab in tabs:
            await wait_true(tab, ALL_SYNCED)
        # Ten tabs x twelve lists: one stream, each channel subscribed once.
        stats = await gateway_stats(http, url)
        assert stats["streams"] == 1
        assert stats["upstreams"] == 12
        assert set(stats["subscriptions"].values()) == {1}
        assert await tabs[9].evaluate("wc.shared")
        # The page says so: the gateway's figures (polled every 2 s) and the tabs' sharing.
        await tabs[9].wait_for(
            "document.getElementById('gateway').textContent === 'gateway: 1 stream, 12 upstream watches'"
        )
        sharing = await tabs[9].evaluate("document.getElementById('sharing').textContent")
        assert sharing == "one stream for the 12 lists of every tab (SharedWorker)"

        # Changes at the control plane reach every tab's lists.
        rng = random.Random(5)
        for _ in range(30):
            churn_once(sim, rng)
        sim.create(ZONES, {"metadata": {"name": "new-zone"}}, **ABC)
        await converged(sim, tabs)

        # Two more channels: configmaps in tabs 0 and 1, services in tabs 1 and 2 (watched
        # once synced: waitFor is the client's own way to say so).
        extras = {0: [CONFIGMAPS], 1: [CONFIGMAPS, SERVICES], 2: [SERVICES]}
        for index, channels in extras.items():
            for fields in channels:
                await tabs[index].evaluate(
                    f"""(async () => {{
                        const fields = {json.dumps(fields)};
                        window.seen = window.seen || {{}};
                        wc.watch(fields, (objects) => {{
                            window.seen[fields.resourceType] = [...objects.keys()].sort().join(",");
                            document.body.dataset.seen = JSON.stringify(window.seen);
                        }});
                        await wc.waitFor(fields, () => true);
                    }})()"""
                )
        stats = await gateway_stats(http, url)
        assert stats["subscriptions"][key(CONFIGMAPS)] == 1
        assert stats["subscriptions"][key(SERVICES)] == 1

        # Closing tabs 0 and 1 leaves configmaps to nobody: unsubscribed. Services stay
        # (tab 2 shows them), and so do the twelve lists of the eight tabs left.
        await browser.close(tabs[0])
        await browser.close(tabs[1])
        await gateway_stats(http, url, lambda s: s["subscriptions"].get(key(CONFIGMAPS), 0) == 0)
        sim.create(SERVICES["resourceType"], {"metadata": {"name": "svc-a"}}, **ABC)
        await tabs[2].wait_for("document.body.dataset.seen.includes('default/svc-a')")
        stats = await gateway_stats(http, url)
        assert stats["streams"] == 1
        assert stats["subscriptions"][key(SERVICES)] == 1
        extra = {key(CONFIGMAPS), key(SERVICES)}
        assert [n for k, n in stats["subscriptions"].items() if k not in extra] == [1] * 12
        sim.delete(ZONES, "new-zone", **ABC)
        await converged(sim, tabs[2:])


async def test_without_shared_worker_each_tab_keeps_its_own_stream(tmp_path: Path) -> None:
    async with demo_in_chromium(tmp_path, seed=17) as (sim, url, browser, http):
        # Two tabs of a browser without SharedWorker (removed before any script runs).
        tabs = []
        for _ in range(2):
            tab = await browser.open()
            await tab.call("Page.addScriptToEvaluateOnNewDocument", source="delete window.SharedWorker;")
            await tab.call("Page.navigate", url=f"{url}/")
            tabs.append(tab)
        for tab in tabs:
            await wait_true(tab, ALL_SYNCED)
            assert await tab.evaluate("wc.shared") is False
            sharing = await tab.evaluate("document.getElementById('sharing').textContent")
            assert sharing == "one stream for this tab's 12 lists (no SharedWorker)"
        stats = await gateway_stats(http, url)
        assert stats["streams"] == 2
        assert set(stats["subscriptions"].values()) == {2}

        # A worker that cannot start (its script is not there): the page's own stream.
        unreachable = await tabs[1].evaluate(
            f"""(async () => {{
                const own = new WatchClient({{ workerUrl: "/no-such-worker.js" }});
                const fields = {{ resourceType: "{ZONES}", projectId: "proj-xyz", namespace: "default" }};
                const objects = await own.waitFor(fields, (o) => o.size > 0);
                return [own.shared, objects.size];
            }})()"""
        )
        assert unreachable[0] is False
        assert unreachable[1] == len(sim.list_objects(ZONES, project="proj-xyz", namespace="default"))
        await gateway_stats(http, url, lambda s: s["streams"] == 3)

        rng = random.Random(9)
        for _ in range(30):
            churn_once(sim, rng)
        await converged(sim, tabs)


async def test_wait_for_settles_and_leaves_nothing_registered(tmp_path: Path) -> None:
    async with running_simulator() as (sim, sim_url):
        app = make_app(make_config(sim_url), static=True)
        async with (
            running_app(app) as url,
            chromium(tmp_path / "profile") as browser,
            aiohttp.ClientSession() as http,
        ):
            tab = await browser.open(f"{url}/")
            await wait_true(tab, ALL_SYNCED)
            # The ES module, in the same shared worker as the page's script; a channel no list shows.
            await tab.evaluate(
                f"""(async () => {{
                    const {{ WatchClient }} = await import("/watch-client.mjs");
                    const client = new WatchClient();
                    const zones = {{ resourceType: "{ZONES}", projectId: "proj-abc", namespace: "default" }};
                    const configmaps = {json.dumps(CONFIGMAPS)};
                    const invalid = {{ ...configmaps, namespace: "Not_A_Label" }}; // refused: 400
                    const outcome = (p) => p.then((objects) => [...objects.keys()].join(","), (e) => e.name);
                    const aborts = new AbortController();
                    window.waits = {{
                        client,
                        before: client.listenerCount,
                        found: Array.from({{ length: 10 }}, () =>
                            outcome(client.waitFor(zones, (objects) => objects.has("default/late")))),
                        timedOut: Array.from({{ length: 10 }}, () =>
                            outcome(client.waitFor(configmaps, () => false, {{ timeout: 300 }}))),
                        aborted: Array.from({{ length: 10 }}, () =>
                            outcome(client.waitFor(configmaps, () => false, {{ signal: aborts.signal }}))),
                        refused: outcome(client.waitFor(invalid, () => true)),
                    }};
                    window.waits.during = client.listenerCount;
                    await client.waitFor(configmaps, () => true); // subscribed and synced
                    aborts.abort();
                }})()"""
            )
            assert await tab.evaluate("[waits.before, waits.during]") == [0, 31]
            stats = await gateway_stats(http, url)
            assert stats["streams"] == 1
            assert stats["subscriptions"][key(CONFIGMAPS)] == 1

            sim.create(ZONES, {"metadata": {"name": "late"}}, **ABC)
            outcomes = await tab.evaluate(
                """(async () => ({
                    found: await Promise.all(waits.found),
                    timedOut: await Promise.all(waits.timedOut),
                    aborted: await Promise.all(waits.aborted),
                    refused: await waits.refused,
                    after: waits.client.listenerCount,
                }))()"""
            )
            assert outcomes == {
                "found": ["default/late"] * 10,
                "timedOut": ["TimeoutError"] * 10,
                "aborted": ["AbortError"] * 10,
                "refused": "Error",
                "after": 0,
            }
            # Nothing on the page watches configmaps any more: the gateway was told.
            await gateway_stats(http, url, lambda s: s["subscriptions"].get(key(CONFIGMAPS), 0) == 0)

            # The declarations are served beside the module, to read or download.
            served = {"watch-client.d.ts": "waitFor<", "watch-client.d.mts": "./watch-client.js"}
            for name, text in served.items():
                async with http.get(f"{url}/{name}") as response:
                    assert response.content_type == "text/plain"
                    assert text in await response.text()
