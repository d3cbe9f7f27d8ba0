"""Bearer access: caching by token hash, single flight, bounded caches, errors that never allow."""

from __future__ import annotations

import asyncio
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
    def __init__(self) -> None:
        self.users = {"tok-alice": "alice"}
        self.allowed: set[tuple[str, str]] = {("alice", "api/v1/secrets")}
        self.who_calls = 0
        self.may_calls = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def who_am_i(self, token: str) -> str:
        self.who_calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if token not in self.users:
            raise UnauthorizedError("Unauthorized", status=401)
        return self.users[token]

    async def may_watch(self, token: str, target: WatchTarget) -> bool:
        self.may_calls += 1
        if self.fail is not None:
            raise self.fail
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
    assert await access.recheck(alice, SECRETS, "secrets-key") is True, "still cached"
    clock.now += 10
    assert await access.recheck(alice, SECRETS, "secrets-key") is False


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
