"""/metrics as Prometheus tooling reads it: promtool accepts it, the documented names are the real
ones, and the shipped Grafana dashboard only asks for series the gateway exports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_config
from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient, WatchClientError
from watchgw.config import Config
from watchgw.sim import Simulator
from watchgw.sim.rbac import Rules

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "watchgw.json"
ZONES = {
    "resourceType": "apis/dns.networking.miloapis.com/v1alpha1/dnszones",
    "projectId": "proj-abc",
    "namespace": "default",
}
ALICE = {"Authorization": "Bearer alice-token-0123456789"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def _bearer(sim_url: str) -> Config:
    config = make_config(sim_url, auth={"mode": "bearer"}, upstream={"token": "gateway-token-0123456789"})
    return fast_upstream(config)


def _tokens_and_grants(sim: Simulator) -> None:
    sim.tokens = {"alice-token-0123456789": "alice", "gateway-token-0123456789": "gateway"}
    rules = Rules()
    rules.allow("gateway")
    rules.allow("alice", resource="dnszones", project="proj-abc")
    sim.authorizer = rules


@contextlib.asynccontextmanager
async def metrics_after_traffic() -> AsyncIterator[str]:
    """A bearer-mode gateway on the simulator after some of everything the metrics count: a
    stream, a subscribe that synced (an upstream watching), a denied subscribe, a rejected token,
    a foreign CORS preflight. Yields the /metrics text."""
    async with sim_and_gateway(_bearer, prepare=_tokens_and_grants) as (sim, _app, url):
        sim.create(
            ZONES["resourceType"], {"metadata": {"name": "zone-a"}}, project="proj-abc", namespace="default"
        )
        alice = WatchClient(url, headers=ALICE)
        try:
            await alice.connect()
            channel = await alice.subscribe(**ZONES)
            await alice.wait_synced(channel)
            # A live event (snapshots are not deliveries).
            sim.create(
                ZONES["resourceType"],
                {"metadata": {"name": "zone-b"}},
                project="proj-abc",
                namespace="default",
            )
            await alice.wait_for(lambda c: "default/zone-b" in c.objects(channel))
            with pytest.raises(WatchClientError):
                await alice.subscribe(**{**ZONES, "projectId": "proj-xyz"})
            async with aiohttp.ClientSession() as http:
                bad = {"Authorization": "Bearer not-a-known-token"}
                async with http.get(f"{url}/api/watch/stream?cid=intruder-1", headers=bad) as response:
                    assert response.status == 401
                preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
                async with http.options(f"{url}/api/watch/subscribe", headers=preflight) as response:
                    assert response.status == 403
                async with http.get(f"{url}/metrics") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    yield await response.text()
        finally:
            await alice.close()


def samples(text: str) -> dict[tuple[str, str], float]:
    """(name, labels as written) -> value, for every sample line of the exposition."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            out[match.group(1), match.group(2) or ""] = float(match.group(3))
    return out


def promtool() -> str | None:
    return shutil.which("promtool")


@pytest.mark.skipif(
    promtool() is None and not os.environ.get("CI"),
    reason="promtool is not installed (Debian package prometheus; CI installs it, there this test must run)",
)
async def test_promtool_accepts_the_metrics_with_labelled_series() -> None:
    async with metrics_after_traffic() as text:
        pass
    tool = promtool()
    assert tool is not None, "promtool is required under CI"
    checker = await asyncio.create_subprocess_exec(
        tool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    async with asyncio.timeout(60):
        output, _ = await checker.communicate(text.encode())
    # promtool lints too (counter suffixes, units, HELP): anything it prints is a finding.
    assert (checker.returncode, output.decode()) == (0, "")
    values = samples(text)
    assert values["watchgw_upstreams", '{state="watching"}'] == 1
    assert values["watchgw_auth_decisions_total", '{check="authorize",result="allowed"}'] == 1
    assert values["watchgw_auth_decisions_total", '{check="authorize",result="denied"}'] == 1
    assert values["watchgw_auth_decisions_total", '{check="authenticate",result="denied"}'] == 1
    assert values["watchgw_rejected_requests_total", '{code="unauthenticated",status="401"}'] == 1
    assert values["watchgw_rejected_requests_total", '{code="forbidden",status="403"}'] == 1
    assert values["watchgw_rejected_requests_total", '{code="origin_not_allowed",status="403"}'] == 1
    assert values["watchgw_deliveries_total", ""] == 1  # zone-b, to alice


def _documented_metrics() -> set[str]:
    """The watchgw_* names of PROTOCOL.md's metrics table (labels dropped)."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    return set(re.findall(r"^\| `(watchgw_[a-z_]+)(?:\{[a-z,]+\})?` \|", text, flags=re.MULTILINE))


async def test_the_documented_metrics_are_the_exported_ones() -> None:
    async with metrics_after_traffic() as text:
        pass
    exported = {name for name, _ in samples(text) if name.startswith("watchgw_")}
    assert _documented_metrics() == exported


def _dashboard() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard, dict)
    return dashboard


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    titles = " / ".join(p["title"] for p in panels).lower()
    for figure in ("clients", "channels", "upstream state", "deliveries", "coalescing", "auth", "rejected"):
        assert figure in titles


async def test_dashboard_asks_only_for_exported_metrics() -> None:
    async with metrics_after_traffic() as text:
        pass
    exported = {name for name, _ in samples(text)}
    for target in _targets(_dashboard()):
        expr = target["expr"]
        names = set(re.findall(r"\b((?:watchgw|process)_[a-z_]+)\b", expr))
        assert names, expr
        assert names <= exported, f"{expr}: {names - exported} not in /metrics"
        for counter in (n for n in names if n.endswith("_total")):
            # A counter's raw value is meaningless on a chart: its rate is the figure.
            assert re.search(rf"rate\({counter}\{{", expr), expr
