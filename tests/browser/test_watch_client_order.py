"""A list closed and opened again at once, many times over, ends subscribed and synced: the
gateway applies the page's last request for the channel last (watch-client.js sends a channel's
requests one at a time; the Python client's version of that race is pinned down exactly in
tests/test_client_failover.py). The page's stream is its shared worker's, which gets what the
page did in one turn as one message, and so never subscribes a list closed in the same turn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser.cdp import chromium_page, chromium_path
from tests.browser.pages import wait_true
from tests.conftest import make_config
from watchgw.sim import running_simulator
from watchgw.web.app import make_app
from watchgw.web.keys import HUB
from watchgw.web.server import running_app

ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"

pytestmark = pytest.mark.skipif(
    chromium_path() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (CI installs it; there this test must run)",
)


async def test_a_list_closed_and_opened_again_at_once_ends_subscribed(tmp_path: Path) -> None:
    async with running_simulator() as (sim, sim_url):
        sim.create(ZONES, {"metadata": {"name": "zone-a"}}, project="proj-abc", namespace="default")
        app = make_app(make_config(sim_url), static=True)
        async with running_app(app) as url, chromium_page(f"{url}/", tmp_path / "profile") as page:
            await wait_true(
                page, "document.body.innerText.includes('zone-a') && typeof wc === 'object' && wc.connected"
            )
            # Ten times over: close the list, open it again, in the same turn of the page.
            await page.evaluate(
                """(() => {
                    const fields = {resourceType: "api/v1/secrets", projectId: "proj-abc", namespace: "ns"};
                    for (let i = 0; i < 10; i++) {
                        const off = wc.watch(fields, () => {});
                        off();
                    }
                    wc.watch(fields, (objects, event, kind) => {
                        if (kind === "change") document.body.dataset.reopened = event.channel;
                    });
                })()"""
            )
            # A DOM attribute, so that wait_for's MutationObserver sees it change.
            channel = await page.wait_for("document.body.dataset.reopened")
            hub = app[HUB]
            session = next(s for s in hub.sessions.values() if s.attached)
            assert channel in session.channels, "the last request, a subscribe, was the last applied"
