"""The live page in a real browser: one EventSource carries every list on the page, and a gateway
restart is a visible "reconnecting…" that ends by itself with the lists caught up."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser.cdp import chromium, chromium_path
from tests.browser.pages import wait_true
from tests.conftest import make_config
from watchgw.sim import running_simulator
from watchgw.web.app import make_app
from watchgw.web.keys import HUB
from watchgw.web.server import running_app

ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"
ABC = {"project": "proj-abc", "namespace": "default"}
STATUS = "document.getElementById('status').textContent"

pytestmark = pytest.mark.skipif(
    chromium_path() is None and not os.environ.get("CI"),
    reason="Chromium is not installed (CI installs it; there this test must run)",
)


async def test_demo_page_lists_update_over_one_stream_and_come_back_after_a_restart(tmp_path: Path) -> None:
    async with running_simulator() as (sim, sim_url):
        sim.create(ZONES, {"metadata": {"name": "example-com"}}, **ABC)
        # Clients come back 200 ms after the restart rather than the default 2 s.
        config = make_config(sim_url, limits={"retry_ms": 200})
        app = make_app(config, static=True)
        async with chromium(tmp_path / "profile") as browser:
            async with running_app(app) as url:
                page = await browser.open(f"{url}/")
                hub = app[HUB]
                await wait_true(page, "document.body.innerText.includes('example-com')")
                sim.create(ZONES, {"metadata": {"name": "added-later"}}, **ABC)
                await page.wait_for("document.body.innerText.includes('added-later')")
                sim.delete(ZONES, "example-com", **ABC)
                await page.wait_for("!document.body.innerText.includes('example-com')")
                # Twelve lists (6 resource types x 2 projects), twelve channels, one stream.
                assert len(hub.channels) == 12
                assert sum(1 for s in hub.sessions.values() if s.attached) == 1
                await page.wait_for(f"{STATUS} === 'connected'")

            # The gateway stops (its clients are told to reconnect) and the control plane changes
            # meanwhile; a new gateway process starts on the same address.
            sim.create(ZONES, {"metadata": {"name": "while-down"}}, **ABC)
            sim.delete(ZONES, "added-later", **ABC)
            await page.wait_for(f"{STATUS} === 'reconnecting…'")
            restarted = make_app(config, static=True)
            async with running_app(restarted, port=urlsplit(url).port or 0) as again:
                assert again == url
                await page.wait_for(f"{STATUS}.startsWith('connected · back after ')")
                text = await page.evaluate("document.body.innerText")
                assert "while-down" in text
                assert "added-later" not in text
                states = await page.evaluate("Object.values(wc.status.channels).map((c) => c.state)")
                assert states == ["connected"] * 12
                assert sum(1 for s in restarted[HUB].sessions.values() if s.attached) == 1
