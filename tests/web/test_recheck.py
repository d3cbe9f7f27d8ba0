"""The periodic recheck: a bounded pool of workers, every held subscription decided, revocations applied."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import FakeUpstreams
from tests.web.test_access import FakeReviews
from watchgw.config import AuthConfig, LimitsConfig
from watchgw.hub.hub import WatchHub
from watchgw.hub.session import Session
from watchgw.kube.types import WatchTarget
from watchgw.web import recheck
from watchgw.web.access import BearerAccess, Caller
from watchgw.web.recheck import recheck_once

CHANNELS = [WatchTarget(f"api/v1/{plural}", namespace="default") for plural in ("secrets", "configmaps")]


class RecordingHub(WatchHub):
    """Remembers every unsubscribe the recheck asks for: (client id, channel key, reason)."""

    def __init__(self) -> None:
        super().__init__(limits=LimitsConfig(), upstream_factory=FakeUpstreams())
        self.unsubscribed: list[tuple[str, str, str]] = []

    def unsubscribe(self, session: Session, key: str, *, reason: str = "client", notify: bool = True) -> None:
        if key in session.channels:
            self.unsubscribed.append((session.client_id, key, reason))
        super().unsubscribe(session, key, reason=reason, notify=notify)


@pytest.fixture
async def hub() -> AsyncIterator[RecordingHub]:
    hub = RecordingHub()
    yield hub
    await hub.close()


def hold(hub: WatchHub, client_id: str, token: str, targets: list[WatchTarget]) -> Session:
    """A session (as a stream opens it) holding ``targets``, as subscribe leaves it."""
    session = hub.open_stream(client_id=client_id, identity=token, last_event_id=None).session
    session.token = token
    for target in targets:
        hub.subscribe(session, target)
    return session


class CountingAccess:
    """Counts what the pool runs at once: rechecks in flight and the tasks alive meanwhile."""

    def __init__(self, denied: set[tuple[str, str]]) -> None:
        self.denied = denied
        self.seen: list[tuple[str | None, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_tasks = 0

    async def recheck(
        self, caller: Caller, target: WatchTarget, channel_key: str, *, round_id: int | None = None
    ) -> bool | None:
        self.seen.append((caller.token, channel_key))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_tasks = max(self.max_tasks, len(asyncio.all_tasks()))
        try:
            await asyncio.sleep(0)  # a review in flight: every other worker gets to start one
            await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        return (caller.token, target.resource_type) not in self.denied


async def test_many_subscriptions_are_rechecked_by_a_bounded_pool(hub: RecordingHub) -> None:
    sessions = [hold(hub, f"client-{i:05d}", f"tok-{i % 50}", CHANNELS) for i in range(600)]
    keys = sorted(sessions[0].channels)
    access = CountingAccess(denied={("tok-7", "api/v1/secrets")})
    tasks_before = len(asyncio.all_tasks())  # this test and one upstream per channel
    revoked = await recheck_once(hub, access)  # type: ignore[arg-type]
    assert sorted(access.seen) == sorted((s.token, key) for s in sessions for key in keys)
    assert access.max_in_flight == recheck.CONCURRENCY
    # Only the workers exist besides what was there before: no task (or coroutine) per subscription.
    assert access.max_tasks <= tasks_before + recheck.CONCURRENCY
    assert revoked == 12  # sessions 7, 57, ..., 557 lose their secrets
    secrets_key = next(k for k in keys if "secrets" in k)
    assert sorted(hub.unsubscribed) == [
        (f"client-{i:05d}", secrets_key, "forbidden") for i in range(7, 600, 50)
    ]
    for i, session in enumerate(sessions):
        assert len(session.channels) == (1 if i % 50 == 7 else 2)


async def test_fewer_subscriptions_than_workers(hub: RecordingHub) -> None:
    session = hold(hub, "client-00001", "tok-1", CHANNELS[:1])
    access = CountingAccess(denied=set())
    assert await recheck_once(hub, access) == 0  # type: ignore[arg-type]
    assert access.seen == [("tok-1", *session.channels)]
    assert await recheck_once(hub, CountingAccess(denied=set())) == 0  # type: ignore[arg-type]
    hub.end_session(session)
    assert await recheck_once(hub, CountingAccess(denied=set())) == 0  # type: ignore[arg-type]


async def test_undecidable_recheck_leaves_subscriptions_alone(hub: RecordingHub) -> None:
    session = hold(hub, "client-00001", "tok-1", CHANNELS)

    class Unreachable(CountingAccess):
        async def recheck(self, *args: Any, **kwargs: Any) -> bool | None:
            return None

    assert await recheck_once(hub, Unreachable(denied=set())) == 0  # type: ignore[arg-type]
    assert len(session.channels) == 2
    assert hub.unsubscribed == []


async def test_revocation_within_one_round_despite_a_long_cache(hub: RecordingHub) -> None:
    reviews = FakeReviews()
    access = BearerAccess(AuthConfig(mode="bearer", cache_ttl_s=3600, recheck_s=1), reviews)
    tabs = [hold(hub, f"tab-{i:06d}", "tok-alice", CHANNELS[:1]) for i in range(5)]
    (key,) = tabs[0].channels
    await access.authorize(Caller("alice", "tok-alice"), CHANNELS[0], key)  # cached for an hour
    assert await recheck_once(hub, access) == 0
    assert reviews.may_calls == 2, "one review for the five tabs, not the cached answer"
    reviews.allowed.clear()  # revoked
    assert await recheck_once(hub, access) == 5
    assert reviews.may_calls == 3
    assert sorted(hub.unsubscribed) == [(tab.client_id, key, "forbidden") for tab in tabs]
    assert all(tab.channels == {} for tab in tabs)
