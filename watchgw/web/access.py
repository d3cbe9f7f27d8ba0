"""Who a client is and what it may watch (PROTOCOL.md section 5).

``mode = "none"``: one identity, ``anonymous``, allowed everything (trusted networks, the demo).
The :class:`Access` interface is what the routes call, so ``mode = "bearer"`` (identity from a
SelfSubjectReview, decisions from SelfSubjectAccessReviews with the client's own token) slots in
without touching them.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from watchgw.kube.types import WatchTarget

ANONYMOUS = "anonymous"


class Access(Protocol):
    async def authenticate(self, request: web.Request) -> str:
        """The caller's identity; raises an ``HTTPUnauthorized``-mapped error when rejected."""

    async def authorize(self, request: web.Request, identity: str, target: WatchTarget) -> None:
        """Return when ``identity`` may watch ``target``; raise a ``HubError`` otherwise."""


class OpenAccess:
    """``mode = "none"``."""

    async def authenticate(self, request: web.Request) -> str:
        return ANONYMOUS

    async def authorize(self, request: web.Request, identity: str, target: WatchTarget) -> None:
        return None
