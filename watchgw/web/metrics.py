"""``GET /metrics``: Prometheus text format from the hub's own counters.

The hub counts with plain integers on the hot path; a custom collector turns them into metric
families only when scraped, so a delivery costs no Prometheus call. prometheus-client writes the
exposition format and the process metrics (CPU, RSS, open fds).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchgw.hub.hub import WatchHub
from watchgw.web.keys import HUB

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)


class HubCollector(Collector):
    def __init__(self, hub: WatchHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        sessions = list(hub.sessions.values())
        channels = list(hub.channels.values())
        yield GaugeMetricFamily(
            "watchgw_clients", "Client sessions (streaming or within session_ttl_s)", len(sessions)
        )
        yield GaugeMetricFamily("watchgw_streams", "Open SSE streams", sum(1 for s in sessions if s.attached))
        yield GaugeMetricFamily("watchgw_channels", "Channels with an upstream watch", len(channels))
        yield GaugeMetricFamily(
            "watchgw_subscriptions",
            "Subscriptions over all channels",
            sum(c.subscriber_count for c in channels),
        )
        yield GaugeMetricFamily(
            "watchgw_pending_bytes",
            "Bytes queued for clients that are behind",
            sum(s.pending_bytes for s in sessions),
        )
        yield CounterMetricFamily("watchgw_channels_opened", "Channels opened", hub.channels_opened)
        yield CounterMetricFamily("watchgw_sessions_opened", "Client sessions opened", hub.sessions_opened)
        retired = hub.retired
        yield CounterMetricFamily(
            "watchgw_upstream_events",
            "Events received from the control plane",
            retired["events"] + sum(c.events for c in channels),
        )
        yield CounterMetricFamily(
            "watchgw_deliveries",
            "Watch events delivered to subscribers",
            retired["deliveries"] + sum(c.deliveries for c in channels),
        )
        yield CounterMetricFamily(
            "watchgw_coalesced",
            "Superseded updates dropped for slow clients",
            retired["coalesced"] + sum(s.coalesced for s in sessions),
        )
        yield CounterMetricFamily(
            "watchgw_resyncs",
            "Channels resynced for clients that fell behind",
            retired["resyncs"] + sum(s.resyncs for s in sessions),
        )


def install_metrics(app: web.Application) -> None:
    registry = CollectorRegistry()
    registry.register(ProcessCollector(registry=None))
    app[REGISTRY_KEY] = registry

    async def on_startup(app: web.Application) -> None:
        registry.register(HubCollector(app[HUB]))

    app.on_startup.append(on_startup)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, content_type="text/plain", charset="utf-8", headers={"X-Version": "0.0.4"})
