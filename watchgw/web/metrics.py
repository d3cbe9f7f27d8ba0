"""``GET /metrics``: Prometheus text format from the hub's own counters.

The hub counts with plain integers on the hot path; a custom collector turns them into metric
families only when scraped, so a delivery costs no Prometheus call. The request side (auth
decisions, refused requests) counts the same way (``web/counters.py``). prometheus-client writes
the exposition format (counters get their ``_total`` there) and the process metrics (CPU, RSS,
open fds). Names and types pass ``promtool check metrics`` (a test runs it);
``deploy/grafana/watchgw.json`` charts them (a test checks that every name it uses exists).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchgw.hub.hub import WatchHub
from watchgw.kube.types import InformerPhase
from watchgw.web.counters import CHECKS, RESULTS, RequestCounters
from watchgw.web.keys import COUNTERS, HUB

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
"""What ``generate_latest`` writes; the version parameter tells a scraper which parser to use
(not a constant of prometheus-client: its ``CONTENT_TYPE_LATEST`` changed meaning across versions)."""


class HubCollector(Collector):
    def __init__(self, hub: WatchHub, counters: RequestCounters) -> None:
        self._hub = hub
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        sessions = list(hub.sessions.values())
        channels = list(hub.channels.values())
        yield GaugeMetricFamily(
            "watchgw_clients", "Client sessions (streaming or within session_ttl_s)", len(sessions)
        )
        yield GaugeMetricFamily("watchgw_streams", "Open SSE streams", sum(1 for s in sessions if s.attached))
        yield GaugeMetricFamily("watchgw_channels", "Channels with an upstream watch", len(channels))
        # Channels per upstream phase, not one series per channel: channel keys are as many as
        # clients care to invent (up to limits.max_channels), far too many label values for a
        # time series database. Which channels are degraded is in the log (upstream.*).
        by_phase = dict.fromkeys(InformerPhase, 0)
        for channel in channels:
            by_phase[channel.phase] += 1
        upstreams = GaugeMetricFamily(
            "watchgw_upstreams",
            "Channels by the state of their upstream list+watch: listing (first LIST), watching "
            "(live), degraded (failing, retried with backoff), gone (resource type not served)",
            labels=["state"],
        )
        for phase, count in by_phase.items():
            upstreams.add_metric([phase.value], count)
        yield upstreams
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
        for name, total, help_text in (
            ("watchgw_upstream_events", "events", "Events received from the control plane"),
            ("watchgw_deliveries", "deliveries", "Watch events delivered to subscribers"),
            (
                "watchgw_snapshot_parts_built",
                "snapshot_parts_built",
                "Parts of snapshots encoded (once per channel version, shared by the clients that need it)",
            ),
            (
                "watchgw_snapshot_parts_written",
                "snapshot_parts_written",
                "Parts of snapshots written to clients (built / written: how much snapshots were shared)",
            ),
            ("watchgw_coalesced", "coalesced", "Superseded updates dropped for slow clients"),
            ("watchgw_resyncs", "resyncs", "Channels resynced for clients that fell behind"),
        ):
            yield CounterMetricFamily(name, help_text, hub.total(total))
        counters = self._counters
        decisions = CounterMetricFamily(
            "watchgw_auth_decisions",
            "Authentication and authorization decisions by check (authenticate, authorize, "
            "recheck) and result (allowed, denied, error: the control plane could not be asked)",
            labels=["check", "result"],
        )
        # Every combination, zeros included: a rate() over a series that appears only with its
        # first denial misses that denial.
        for check in CHECKS:
            for result in RESULTS:
                decisions.add_metric([check, result], counters.auth[check, result])
        yield decisions
        rejected = CounterMetricFamily(
            "watchgw_rejected_requests",
            "Requests answered with an error, by HTTP status and error code",
            labels=["status", "code"],
        )
        for (status, code), count in sorted(counters.rejected.items()):
            rejected.add_metric([str(status), code], count)
        yield rejected


def install_metrics(app: web.Application) -> None:
    registry = CollectorRegistry()
    registry.register(ProcessCollector(registry=None))
    app[REGISTRY_KEY] = registry

    async def on_startup(app: web.Application) -> None:
        registry.register(HubCollector(app[HUB], app[COUNTERS]))

    app.on_startup.append(on_startup)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": TEXT_FORMAT})
