"""User ids: a caller's ``user_id`` is its SelfSubjectReview's ``auth.user_field`` (or the
forward-auth user header), and a user-scoped channel is its own user control plane's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from tests.conftest import make_config
from tests.forward_auth import USER_HEADER, ForwardAuthServer
from tests.stacks import fast_upstream
from watchgw.client.client import WatchClient, WatchClientError
from watchgw.config import Config
from watchgw.hub.errors import Forbidden
from watchgw.kube.client import KubeClient
from watchgw.kube.reviews import KubeReviews, UserInfo
from watchgw.kube.types import WatchTarget
from watchgw.sim import Simulator, running_simulator
from watchgw.sim.rbac import Rules
from watchgw.web.access import BearerAccess, Caller
from watchgw.web.app import make_app
from watchgw.web.server import running_app

CM = "api/v1/configmaps"
TOKENS = {"tok-alice-0123456789": "alice", "tok-bob-0123456789": "bob"}
ALICE = {"Authorization": "Bearer tok-alice-0123456789"}
BOB = {"Authorization": "Bearer tok-bob-0123456789"}


@contextlib.asynccontextmanager
async def reviews_of(sim_url: str) -> AsyncIterator[KubeReviews]:
    kube = KubeClient(make_config(sim_url).upstream)
    try:
        yield KubeReviews(kube)
    finally:
        await kube.close()


async def authenticate(access: BearerAccess, headers: dict[str, str]) -> Caller:
    return await access.authenticate(make_mocked_request("GET", "/api/watch/stream", headers=headers))


@pytest.mark.parametrize("user_field", ["uid", "username"])
async def test_bearer_user_id_is_the_configured_field_of_the_review(user_field: str) -> None:
    async with running_simulator() as (sim, sim_url), reviews_of(sim_url) as reviews:
        sim.tokens = dict(TOKENS)
        assert await reviews.who_am_i("tok-alice-0123456789") == UserInfo("alice", sim.uid_of("alice"))
        config = make_config(sim_url, auth={"mode": "bearer", "user_field": user_field})
        access = BearerAccess(config.auth, reviews)
        caller = await authenticate(access, ALICE)
        user_id = sim.uid_of("alice") if user_field == "uid" else "alice"
        assert caller == Caller("alice", "tok-alice-0123456789", user_id=user_id)
        again = await authenticate(access, ALICE)  # from the cache: the same user id
        assert again.user_id == user_id


async def test_no_uid_in_the_review_leaves_the_user_id_empty_and_still_authenticates() -> None:
    async with running_simulator() as (_, sim_url), reviews_of(sim_url) as reviews:  # anonymous: no uid
        access = BearerAccess(make_config(sim_url, auth={"mode": "bearer"}).auth, reviews)
        caller = await authenticate(access, {"Authorization": "Bearer anything"})
        assert caller == Caller("system:anonymous", "anything", user_id="")


async def test_access_reviews_of_user_scoped_channels_go_to_the_users_control_plane() -> None:
    async with running_simulator() as (sim, sim_url), reviews_of(sim_url) as reviews:
        sim.tokens = dict(TOKENS)
        sim.authorizer = Rules()  # no rule at all: only ownership opens a user control plane
        own = WatchTarget(CM, namespace="default", user_scoped=True, user=sim.uid_of("alice"))
        assert await reviews.may_watch("tok-alice-0123456789", own) is True
        assert await reviews.may_watch("tok-bob-0123456789", own) is False


async def test_a_user_scoped_channel_is_not_someone_elses() -> None:
    """The web layer fills the user from the caller; access refuses any other user's."""
    async with running_simulator() as (sim, sim_url), reviews_of(sim_url) as reviews:
        sim.tokens = dict(TOKENS)
        access = BearerAccess(make_config(sim_url, auth={"mode": "bearer"}).auth, reviews)
        bob = await authenticate(access, BOB)
        alices = WatchTarget(CM, namespace="default", user_scoped=True, user=sim.uid_of("alice"))
        with pytest.raises(Forbidden):
            await access.authorize(bob, alices, "k")
        with pytest.raises(Forbidden):
            await access.authorize(bob, WatchTarget(CM, user_scoped=True), "k")


# ---------------------------------------------------------------- through the gateway
def gateway_config(sim_url: str, auth: dict[str, Any]) -> Config:
    config = make_config(
        sim_url, auth={"cache_ttl_s": 0, **auth}, limits={"grace_period_s": 0.5, "session_ttl_s": 0.5}
    )
    return fast_upstream(config, credential="subscriber", token=None, backoff_max_s=0.05)


def seed(sim: Simulator) -> None:
    sim.tokens = dict(TOKENS)
    sim.authorizer = Rules()
    sim.create(CM, {"metadata": {"name": "alices-prefs"}}, user=sim.uid_of("alice"), namespace="default")
    sim.create(CM, {"metadata": {"name": "bobs-prefs"}}, user=sim.uid_of("bob"), namespace="default")


async def test_user_scoped_subscribe_in_bearer_mode() -> None:
    async with running_simulator(bookmark_interval_s=0.25) as (sim, sim_url):
        seed(sim)
        app = make_app(gateway_config(sim_url, {"mode": "bearer"}))
        async with (
            running_app(app) as url,
            WatchClient(url, headers=ALICE) as alice,
            WatchClient(url, headers=BOB) as bob,
        ):
            mine = await alice.subscribe(resourceType=CM, namespace="default", userScoped=True)
            await alice.wait_synced(mine)
            assert set(alice.objects(mine)) == {"default/alices-prefs"}
            theirs = await bob.subscribe(resourceType=CM, namespace="default", userScoped=True)
            await bob.wait_synced(theirs)
            assert set(bob.objects(theirs)) == {"default/bobs-prefs"}


async def test_user_scoped_subscribe_with_the_forward_auth_user_header() -> None:
    forward = ForwardAuthServer({"sess-alice": "tok-alice-0123456789"})
    async with (
        running_simulator(bookmark_interval_s=0.25) as (sim, sim_url),
        forward.running() as forward_url,
    ):
        seed(sim)
        forward.user_ids["tok-alice-0123456789"] = sim.uid_of("alice")
        auth = {"mode": "forward", "forward_url": forward_url, "forward_user_header": USER_HEADER}
        app = make_app(gateway_config(sim_url, auth))
        async with (
            running_app(app) as url,
            WatchClient(url, headers={"Cookie": "session=sess-alice"}) as alice,
        ):
            mine = await alice.subscribe(resourceType=CM, namespace="default", userScoped=True)
            await alice.wait_synced(mine)
            assert set(alice.objects(mine)) == {"default/alices-prefs"}


async def test_user_scoped_subscribe_without_a_user_id_is_400() -> None:
    async with running_simulator() as (_, sim_url):  # anonymous reviews: no uid
        app = make_app(gateway_config(sim_url, {"mode": "bearer"}))
        async with running_app(app) as url, WatchClient(url, headers=ALICE) as client:
            with pytest.raises(WatchClientError) as caught:
                await client.subscribe(resourceType=CM, namespace="default", userScoped=True)
            assert caught.value.status == 400
