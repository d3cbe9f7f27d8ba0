"""The live page through nginx (TLS, HTTP/2) in front of replicas, in a real browser: it names
the replica serving it; when that replica is killed it moves to another by itself and its lists
stay exact (watch-client.js: EventSource reconnects, "resumed": false, re-subscribe); when the
replica comes back, nginx routes the page's requests to it again, and the page notices and starts
over there."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from tests.browser.cdp import chromium_page, chromium_path
from tests.browser.pages import wait_true
from tests.cluster import running_cluster
from tests.nginx_config import find_binary

ZONES = "apis/dns.networking.miloapis.com/v1alpha1/namespaces/default/dnszones"
PROJECT = "/apis/resourcemanager.miloapis.com/v1alpha1/projects/proj-abc/control-plane"

pytestmark = pytest.mark.skipif(
    (chromium_path() is None or find_binary("nginx") is None) and not os.environ.get("CI"),
    reason="Chromium or nginx is not installed (CI installs them; there this test must run)",
)


async def test_the_live_page_follows_its_replica_failing_over(tmp_path: Path) -> None:
    async with (
        running_cluster(tmp_path / "cluster", replicas=2) as cluster,
        aiohttp.ClientSession() as sim,
        chromium_page("about:blank", tmp_path / "profile") as page,
    ):
        zones = f"{cluster.sim_url}{PROJECT}/{ZONES}"
        async with sim.post(zones, json={"metadata": {"name": "before-failover"}}) as response:
            assert response.status == 201
        # The certificate was made for this run: the browser is told to accept it.
        await page.call("Security.setIgnoreCertificateErrors", ignore=True)
        await page.call("Page.navigate", url=f"{cluster.url}/")
        await wait_true(page, "document.body.innerText.includes('before-failover')")
        await wait_true(page, "document.getElementById('replica').textContent.startsWith('replica ')")
        shown = await page.evaluate("document.getElementById('replica').textContent")
        names = {f"replica {r.name}": r for r in cluster.replicas}
        assert shown in names, (shown, sorted(names))
        serving = names[shown]

        await cluster.kill(serving.index)
        other = next(r for r in cluster.replicas if r is not serving)
        await page.wait_for(
            f"document.getElementById('replica').textContent === 'replica {other.name}'", timeout=20
        )
        async with sim.post(zones, json={"metadata": {"name": "after-failover"}}) as response:
            assert response.status == 201
        async with sim.delete(f"{zones}/before-failover") as response:
            assert response.status == 200
        await page.wait_for(
            "document.body.innerText.includes('after-failover')"
            " && !document.body.innerText.includes('before-failover')",
            timeout=20,
        )
        status = await page.evaluate("document.getElementById('status').textContent")
        assert status.startswith("connected")

        # The killed replica comes back. Once nginx tries it again (after fail_timeout), the
        # page's next subscribe goes there while its stream is on the other one: the page starts
        # over there. The page opens and closes a list now and then, as a user does.
        await cluster.start(serving.index)
        await page.evaluate(
            """setInterval(() => {
                const off = wc.watch({resourceType: "api/v1/configmaps", projectId: "proj-abc"}, () => {});
                setTimeout(off, 100);
            }, 300)"""
        )
        await page.wait_for(
            f"document.getElementById('replica').textContent === 'replica {serving.name}'", timeout=20
        )
        async with sim.post(zones, json={"metadata": {"name": "after-return"}}) as response:
            assert response.status == 201
        await page.wait_for(
            "document.body.innerText.includes('after-return')"
            " && document.body.innerText.includes('after-failover')"
            " && !document.body.innerText.includes('before-failover')",
            timeout=20,
        )
