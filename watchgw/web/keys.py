"""Typed keys for the state kept on the ``web.Application`` (no module-level singletons)."""

from __future__ import annotations

from aiohttp import web

from watchgw.config import Config
from watchgw.hub.hub import WatchHub
from watchgw.web.access import Access
from watchgw.web.counters import RequestCounters
from watchgw.web.handoff import StreamTasks
from watchgw.web.ratelimit import RateLimiter

CONFIG = web.AppKey("config", Config)
HUB = web.AppKey("hub", WatchHub)
ACCESS = web.AppKey("access", Access)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
COUNTERS = web.AppKey("request_counters", RequestCounters)
STREAMS = web.AppKey("streams", StreamTasks)
