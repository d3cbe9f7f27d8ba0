"""The live page in a real browser: one EventSource carries every list on the page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser.cdp import chromium_page, chromium_path
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


async def test_demo_page_lists_update_over_one_stream(tmp_path: Path) -> None:
    async with running_simulator() as (sim, sim_url):
        sim.create(ZONES, {"metadata": {"name": "example-com"}}, project="proj-abc", namespace="default")
        app = make_app(make_config(sim_url), static=True)
        async with running_app(app) as url, chromium_page(f"{url}/", tmp_path / "profile") as page:
            hub = app[HUB]
            await page.wait_for("document.body.innerText.includes('example-com')")
            sim.create(ZONES, {"metadata": {"name": "added-later"}}, project="proj-abc", namespace="default")
            await page.wait_for("document.body.innerText.includes('added-later')")
            sim.delete(ZONES, "example-com", project="proj-abc", namespace="default")
            await page.wait_for("!document.body.innerText.includes('example-com')")
            # Twelve lists (6 resource types x 2 projects), twelve channels, one stream.
            assert len(hub.channels) == 12
            assert sum(1 for s in hub.sessions.values() if s.attached) == 1
            status = await page.evaluate("document.getElementById('status').textContent")
            assert status.startswith("connected")
