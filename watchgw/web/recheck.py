"""Access is re-checked while subscribed: a revoked subscriber gets ``unsubscribed`` (forbidden).

Every ``recheck_s`` each held subscription is decided again with the subscriber's own token, by
the control plane itself, not from the decision cache: a revocation ends held subscriptions within
``recheck_s`` whatever ``cache_ttl_s`` is (and the fresh answer refuses the token's next subscribe
too). A round's answer for a token and a channel is asked once, so a user with many tabs costs one
review per channel per round.

A round runs at most :data:`CONCURRENCY` workers that pull (session, channel) pairs from one lazy
iterator: the work in flight and the memory a round takes stay bounded however many subscriptions
are held (no coroutine per subscription made up front).

A control plane that cannot answer leaves subscriptions as they are until it can: the upstream
watch itself is refused by the control plane for a revoked credential, and a flapping review
endpoint must not tear down every client's view.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import structlog

from watchgw.hub.hub import WatchHub
from watchgw.hub.session import Session
from watchgw.web.access import Access, Caller
from watchgw.web.counters import RequestCounters

log = structlog.get_logger("watchgw.access")

CONCURRENCY = 16
"""Rechecks (so reviews) in flight at once: enough to finish a round soon, not a burst."""

_rounds = itertools.count(1)


def _held(hub: WatchHub) -> Iterator[tuple[Session, str]]:
    """Every held subscription, made one at a time as the workers ask."""
    # Snapshots of the session list and of one session's keys: subscribing and unsubscribing go
    # on while a round awaits the control plane.
    for session in list(hub.sessions.values()):
        for key in list(session.channels):
            yield session, key


async def recheck_once(hub: WatchHub, access: Access, counters: RequestCounters | None = None) -> int:
    """Decide every held subscription again; returns how many were revoked. ``counters``: where
    the decisions are counted for ``/metrics``."""
    round_id = next(_rounds)
    pending = _held(hub)  # shared by the workers: a generator is never resumed while it runs
    revoked = 0

    async def worker() -> None:
        nonlocal revoked
        for session, key in pending:
            channel = session.channels.get(key)
            if channel is None or hub.sessions.get(session.client_id) is not session:
                continue  # gone since the round began
            caller = Caller(session.identity, session.token)
            decision = await access.recheck(caller, channel.target, key, round_id=round_id)
            if counters is not None:
                counters.count_recheck(decision)
            # The session may have ended or unsubscribed while the review was awaited.
            if (
                decision is False
                and hub.sessions.get(session.client_id) is session
                and key in session.channels
            ):
                hub.unsubscribe(session, key, reason="forbidden")
                revoked += 1
                log.info("auth.revoked", client_id=session.client_id, identity=session.identity, channel=key)

    # A TaskGroup: if the round is cancelled (shutdown), every worker is cancelled and awaited.
    async with asyncio.TaskGroup() as workers:
        for _ in range(CONCURRENCY):
            workers.create_task(worker())
    return revoked


async def recheck_forever(
    hub: WatchHub, access: Access, interval_s: float, counters: RequestCounters | None = None
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await recheck_once(hub, access, counters)
        except Exception:  # a bug here must not end rechecking for good
            log.exception("auth.recheck_failed")
