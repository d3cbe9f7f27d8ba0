"""Bearer access: caching by token hash, single flight, bounded caches, errors that never allow."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from watchgw.config import AuthConfig
from watchgw.hub.errors import Forbidden
from watchgw.kube.errors import ServerError, UnauthorizedError, UpstreamConnectionError
from watchgw.kube.types import WatchTarget
from watchgw.web.access import (
    BearerAccess,
    Caller,
    TTLCache,
    Unauthenticated,
    UpstreamUnavailable,
    token_hash,
)

SECRETS = WatchTarget("api/v1/secrets", namespace="default")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReviews:
    """The network boundary: answers from ``users`` and ``allowed``, optionally held at a gate."""

    def __init__(self) -> None:
        self.users = {"tok-alice": "alice", "tok-bob": "bob"}
        self.allowed: set[tuple[str, str]] = {("alice", "api/v1/secrets")}
        self.who_calls = 0
        self.may_calls = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        """Set whenever a review starts (and is then held at ``gate``, if any)."""
        self.cancelled = 0

    async def _held(self) -> None:
        self.entered.set()
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.fail is not None:
            raise self.fail

    async def who_am_i(self, token: str) -> str:
        self.who_calls += 1
        await self._held()
        if token not in self.users:
            raise UnauthorizedError("Unauthorized", status=401)
        return self.users[token]

    async def may_watch(self, token: str, target: WatchTarget) -> bool:
        self.may_calls += 1
        await self._held()
        return (self.users.get(token, ""), target.resource_type) in self.allowed


def request(headers: dict[str, str]) -> Any:
    return make_mocked_request("GET", "/api/watch/stream", headers=headers)


def make(ttl: float = 30.0) -> tuple[BearerAccess, FakeReviews, Clock]:
    reviews, clock = FakeReviews(), Clock()
    return BearerAccess(AuthConfig(mode="bearer", cache_ttl_s=ttl), reviews, clock=clock), reviews, clock


async def test_identity_is_cached_for_the_ttl_then_asked_again() -> None:
    access, reviews, clock = make(ttl=30)
    for _ in range(3):
        caller = await access.authenticate(request({"Authorization": "Bearer tok-alice"}))
        assert caller == Caller("alice", "tok-alice")
    assert reviews.who_calls == 1
    clock.now += 30
    await access.authenticate(request({"Authorization": "Bearer tok-alice"}))
    assert reviews.who_calls == 2


async def test_cookie_and_header_forms() -> None:
    access, _, _ = make()
    caller = await access.authenticate(request({"Cookie": "watchgw_token=tok-alice"}))
    assert caller.identity == "alice"
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        with pytest.raises(Unauthenticated):
            await access.authenticate(request(headers))


async def test_rejected_tokens_are_401_and_remembered_briefly() -> None:
    access, reviews, clock = make()
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await access.authenticate(request({"Authorization": "Bearer tok-nobody"}))
    assert reviews.who_calls == 1
    clock.now += 5
    with pytest.raises(Unauthenticated):
        await access.authenticate(request({"Authorization": "Bearer tok-nobody"}))
    assert reviews.who_calls == 2


@pytest.mark.parametrize("error", [ServerError("boom", status=500), UpstreamConnectionError("down")])
async def test_unreachable_control_plane_is_503_never_an_allow(error: Exception) -> None:
    access, reviews, _ = make()
    reviews.fail = error
    with pytest.raises(UpstreamUnavailable):
        await access.authenticate(request({"Authorization": "Bearer tok-alice"}))
    with pytest.raises(UpstreamUnavailable):
        await access.authorize(Caller("alice", "tok-alice"), SECRETS, "k")
    assert await access.recheck(Caller("alice", "tok-alice"), SECRETS, "k") is None


async def test_decisions_cached_per_token_and_channel() -> None:
    access, reviews, clock = make(ttl=10)
    alice = Caller("alice", "tok-alice")
    await access.authorize(alice, SECRETS, "secrets-key")
    await access.authorize(alice, SECRETS, "secrets-key")
    assert reviews.may_calls == 1
    with pytest.raises(Forbidden):
        await access.authorize(alice, WatchTarget("api/v1/configmaps"), "configmaps-key")
    assert reviews.may_calls == 2
    reviews.allowed.clear()  # revoked in the control plane
    await access.authorize(alice, SECRETS, "secrets-key")  # still cached
    assert reviews.may_calls == 2
    clock.now += 10
    with pytest.raises(Forbidden):
        await access.authorize(alice, SECRETS, "secrets-key")
    assert reviews.may_calls == 3


async def test_concurrent_lookups_of_one_token_share_one_review() -> None:
    access, reviews, _ = make()
    reviews.gate = asyncio.Event()
    tasks = [
        asyncio.create_task(access.authenticate(request({"Authorization": "Bearer tok-alice"})))
        for _ in range(20)
    ]
    await asyncio.sleep(0)  # one loop turn: every task is waiting on the one review
    reviews.gate.set()
    callers = await asyncio.gather(*tasks)
    assert {c.identity for c in callers} == {"alice"}
    assert reviews.who_calls == 1


def test_caches_are_bounded_and_keyed_by_hash() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(max_entries=3, clock=clock)
    for i in range(10):
        cache.put(token_hash(f"tok-{i}"), i, 60)
    assert len(cache) == 3
    assert cache.get(token_hash("tok-9")) == 9
    assert cache.get(token_hash("tok-0")) is None
    assert token_hash("tok-9") != "tok-9"
    assert len(token_hash("tok-9")) == 64


async def test_malformed_tokens_are_refused_before_any_review() -> None:
    access, reviews, _ = make()
    for token in ("x" * 9000, "tok\x01bad"):
        with pytest.raises(Unauthenticated):
            await access.authenticate(request({"Authorization": f"Bearer {token}"}))
    assert reviews.who_calls == 0


# ---------------------------------------------------------------- single flight and cancellation
ALICE = Caller("alice", "tok-alice")
BOB = Caller("bob", "tok-bob")


def alice_authenticates(access: BearerAccess) -> Any:
    return access.authenticate(request({"Authorization": "Bearer tok-alice"}))


def alice_authorizes(access: BearerAccess) -> Any:
    return access.authorize(ALICE, SECRETS, "secrets-key")


LOOKUPS = [
    pytest.param(alice_authenticates, "who_calls", id="authenticate"),
    pytest.param(alice_authorizes, "may_calls", id="authorize"),
]


async def joined(reviews: FakeReviews, *calls: Any) -> list[asyncio.Task[Any]]:
    """Start ``calls`` and return once the first one's review is held at the gate (all joined it)."""
    reviews.gate = asyncio.Event()
    reviews.entered.clear()
    tasks = [asyncio.create_task(call) for call in calls]
    await reviews.entered.wait()
    return tasks


@pytest.mark.parametrize(("lookup", "counter"), LOOKUPS)
async def test_concurrent_lookups_of_one_key_share_one_review(lookup: Any, counter: str) -> None:
    access, reviews, _ = make()
    tasks = await joined(reviews, *(lookup(access) for _ in range(20)))
    assert getattr(reviews, counter) == 1
    assert reviews.gate is not None
    reviews.gate.set()
    await asyncio.gather(*tasks)
    assert getattr(reviews, counter) == 1


@pytest.mark.parametrize(("lookup", "counter"), LOOKUPS)
async def test_a_caller_going_away_never_fails_the_others(lookup: Any, counter: str) -> None:
    """The first caller's client disconnects (aiohttp cancels its handler) mid-review."""
    access, reviews, _ = make()
    first, *others = await joined(reviews, *(lookup(access) for _ in range(5)))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert reviews.gate is not None
    reviews.gate.set()
    results = await asyncio.gather(*others)
    assert all(r == results[0] for r in results)
    assert getattr(reviews, counter) == 1
    assert reviews.cancelled == 0, "the review itself went on for the callers still waiting"


@pytest.mark.parametrize(("lookup", "counter"), LOOKUPS)
async def test_a_review_nobody_waits_for_is_cancelled_and_the_next_caller_asks_again(
    lookup: Any, counter: str
) -> None:
    access, reviews, _ = make()
    tasks = await joined(reviews, *(lookup(access) for _ in range(3)))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # A caller arriving right away gets a review of its own, not the one being cancelled.
    assert reviews.gate is not None
    reviews.gate.set()
    await lookup(access)
    assert getattr(reviews, counter) == 2
    assert reviews.cancelled == 1
    assert asyncio.all_tasks() == {asyncio.current_task()}, "no review outlives its callers"


async def test_a_review_failing_after_its_callers_left_is_never_reported_unretrieved() -> None:
    """A client library may turn a cancellation into its own error: nobody is left to read it."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        access, reviews, _ = make()
        original = reviews.may_watch

        async def may_watch(token: str, target: WatchTarget) -> bool:
            try:
                return await original(token, target)
            except asyncio.CancelledError:
                raise UpstreamConnectionError("connection closed") from None

        reviews.may_watch = may_watch  # type: ignore[method-assign]
        (task,) = await joined(reviews, alice_authorizes(access))
        (review,) = asyncio.all_tasks() - {task, asyncio.current_task()}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait([review])  # it ends with its error, which nobody awaits
        assert not review.cancelled(), (
            "the review ended with an error (not read here: that would retrieve it)"
        )
        del review
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


# ---------------------------------------------------------------- recheck
async def test_recheck_asks_the_control_plane_and_its_answer_replaces_the_cached_one() -> None:
    access, reviews, _ = make(ttl=3600)
    await access.authorize(ALICE, SECRETS, "secrets-key")
    assert reviews.may_calls == 1
    reviews.allowed.clear()  # revoked in the control plane, well within cache_ttl_s
    assert await access.recheck(ALICE, SECRETS, "secrets-key") is False
    assert reviews.may_calls == 2
    # The revocation also stops new subscribes at once, without another review.
    with pytest.raises(Forbidden):
        await access.authorize(ALICE, SECRETS, "secrets-key")
    assert reviews.may_calls == 2
    reviews.allowed.add(("alice", "api/v1/secrets"))  # granted again
    assert await access.recheck(ALICE, SECRETS, "secrets-key") is True
    await access.authorize(ALICE, SECRETS, "secrets-key")
    assert reviews.may_calls == 3


async def test_recheck_that_cannot_be_decided_changes_nothing() -> None:
    access, reviews, _ = make(ttl=3600)
    await access.authorize(ALICE, SECRETS, "secrets-key")
    reviews.fail = UpstreamConnectionError("down")
    assert await access.recheck(ALICE, SECRETS, "secrets-key") is None
    reviews.fail = None
    await access.authorize(ALICE, SECRETS, "secrets-key")  # the earlier answer still stands
    assert reviews.may_calls == 2


async def test_one_review_per_token_and_channel_per_recheck_round() -> None:
    """One user with many tabs: every tab holds the channel, one review answers them all."""
    access, reviews, _ = make(ttl=0)
    for round_id in (1, 2):
        for _tab in range(5):
            assert await access.recheck(ALICE, SECRETS, "secrets-key", round_id=round_id) is True
            assert await access.recheck(BOB, SECRETS, "secrets-key", round_id=round_id) is False
        assert reviews.may_calls == 2 * round_id
    assert await access.recheck(ALICE, SECRETS, "secrets-key") is True, "no round: always asked"
    assert reviews.may_calls == 5


async def test_concurrent_rechecks_share_the_review_of_a_subscribe() -> None:
    access, reviews, _ = make(ttl=3600)
    tasks = await joined(
        reviews,
        alice_authorizes(access),
        access.recheck(ALICE, SECRETS, "secrets-key", round_id=7),
        access.recheck(ALICE, SECRETS, "secrets-key", round_id=7),
    )
    assert reviews.gate is not None
    reviews.gate.set()
    assert await asyncio.gather(*tasks) == [None, True, True]
    assert reviews.may_calls == 1
