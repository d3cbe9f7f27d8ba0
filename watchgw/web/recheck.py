"""Access is re-checked while subscribed: a revoked subscriber gets ``unsubscribed`` (forbidden).

Every ``recheck_s`` each held subscription is decided again with the subscriber's own token
(decisions are cached for ``cache_ttl_s``, so a user with many tabs costs one review per channel).
A control plane that cannot answer leaves subscriptions as they are until it can: the upstream
watch itself is refused by the control plane for a revoked credential, and a flapping review
endpoint must not tear down every client's view.
"""

from __future__ import annotations

import asyncio

import structlog

from watchgw.hub.hub import WatchHub
from watchgw.web.access import Access, Caller

log = structlog.get_logger("watchgw.access")

CONCURRENCY = 16


async def recheck_once(hub: WatchHub, access: Access) -> int:
    """Decide every held subscription again; returns how many were revoked."""
    semaphore = asyncio.Semaphore(CONCURRENCY)
    revoked = 0

    async def one(client_id: str, key: str) -> None:
        nonlocal revoked
        session = hub.sessions.get(client_id)
        channel = session.channels.get(key) if session is not None else None
        if session is None or channel is None:
            return
        async with semaphore:
            decision = await access.recheck(Caller(session.identity, session.token), channel.target, key)
        if decision is False and hub.sessions.get(client_id) is session and key in session.channels:
            hub.unsubscribe(session, key, reason="forbidden")
            revoked += 1
            log.info("auth.revoked", client_id=client_id, identity=session.identity, channel=key)

    await asyncio.gather(
        *(
            one(session.client_id, key)
            for session in list(hub.sessions.values())
            for key in list(session.channels)
        )
    )
    return revoked


async def recheck_forever(hub: WatchHub, access: Access, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await recheck_once(hub, access)
        except Exception:  # a bug here must not end rechecking for good
            log.exception("auth.recheck_failed")
