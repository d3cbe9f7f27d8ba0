"""Figures of the request side for ``/metrics``: authentication and authorization decisions, and
requests refused with an error answer.

Plain :class:`collections.Counter` objects keyed by a few fixed labels, turned into metric families
only when scraped (``web/metrics.py``), as the hub's own counters are: a request costs a dict
increment and no Prometheus call. Every label value comes from this code (a result name, an error
code and its status), never from the request, so a client cannot grow the number of series.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from watchgw.hub.errors import Forbidden
from watchgw.kube.types import WatchTarget
from watchgw.web.access import Access, Caller, Unauthenticated, UpstreamUnavailable
from watchgw.web.body import RateLimited

CHECKS = ("authenticate", "authorize", "recheck")
"""Who is it (every stream, subscribe and unsubscribe), may it watch (every subscribe), may it
still watch (every held subscription, every ``auth.recheck_s``)."""
RESULTS = ("allowed", "denied", "error")
"""``error``: undecidable, the control plane (or forward-auth service) could not be asked; the
client got 503 (a recheck changed nothing)."""


class RequestCounters:
    def __init__(self) -> None:
        self.auth: Counter[tuple[str, str]] = Counter()
        """(check, result) -> decisions, whether answered from the cache or by a review."""
        self.rejected: Counter[tuple[int, str]] = Counter()
        """(status, error code) -> requests answered with that error."""

    def count_rejected(self, response: web.StreamResponse, code: str) -> None:
        self.rejected[response.status, code] += 1

    async def authenticate(self, access: Access, request: web.Request) -> Caller:
        """``access.authenticate``, counted. Failures per address that ran out (429) are denials
        too: the gateway refused the credentials without asking anyone."""
        try:
            caller = await access.authenticate(request)
        except (Unauthenticated, RateLimited):
            self.auth["authenticate", "denied"] += 1
            raise
        except UpstreamUnavailable:
            self.auth["authenticate", "error"] += 1
            raise
        self.auth["authenticate", "allowed"] += 1
        return caller

    async def authorize(self, access: Access, caller: Caller, target: WatchTarget, channel_key: str) -> None:
        """``access.authorize``, counted."""
        try:
            await access.authorize(caller, target, channel_key)
        except Forbidden:
            self.auth["authorize", "denied"] += 1
            raise
        except UpstreamUnavailable:
            self.auth["authorize", "error"] += 1
            raise
        self.auth["authorize", "allowed"] += 1

    def count_recheck(self, decision: bool | None) -> None:
        result = "error" if decision is None else ("allowed" if decision else "denied")
        self.auth["recheck", result] += 1
