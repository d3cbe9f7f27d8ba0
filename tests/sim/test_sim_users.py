"""User control planes of the simulator: uids in SelfSubjectReview, ``/users/{user}/...`` paths,
each user's own and nobody else's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from watchgw.sim import Simulator, running_simulator
from watchgw.sim.rbac import Rules, uid_of

from .helpers_sim import CM, Lines, cm, summary

USERS = "/apis/iam.miloapis.com/v1alpha1/users"
SSR = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
NS_CM = "/api/v1/namespaces/default/configmaps"
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}

Env = tuple[Simulator, aiohttp.ClientSession]


def user_path(user: str, path: str = NS_CM) -> str:
    return f"{USERS}/{user}/control-plane{path}"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with running_simulator() as (sim, url), aiohttp.ClientSession(url) as session:
        sim.tokens = {"tok-alice": "alice", "tok-bob": "bob"}
        yield sim, session


async def names(session: aiohttp.ClientSession, path: str, headers: dict[str, str]) -> list[str]:
    async with session.get(path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return [i["metadata"]["name"] for i in (await resp.json())["items"]]


async def status_of(session: aiohttp.ClientSession, path: str, headers: dict[str, str]) -> int:
    async with session.get(path, headers=headers) as resp:
        return resp.status


async def review(session: aiohttp.ClientSession, prefix: str, headers: dict[str, str]) -> Any:
    body = {
        "spec": {"resourceAttributes": {"verb": "watch", "resource": "configmaps", "namespace": "default"}}
    }
    async with session.post(prefix + SSAR, json=body, headers=headers) as resp:
        assert resp.status == 201
        return (await resp.json())["status"]


def test_uids_are_stable_and_not_the_name() -> None:
    assert uid_of("alice") == uid_of("alice") == Simulator.uid_of("alice")
    assert uid_of("alice") != uid_of("bob")
    assert "alice" not in uid_of("alice")
    assert uid_of("alice").startswith("uid-")


async def test_self_subject_review_carries_the_uid(env: Env) -> None:
    sim, s = env
    async with s.post(SSR, json={}, headers=ALICE) as resp:
        info = (await resp.json())["status"]["userInfo"]
    assert info["username"] == "alice"
    assert info["uid"] == sim.uid_of("alice")


async def test_anonymous_users_have_no_uid() -> None:
    async with running_simulator() as (_, url), aiohttp.ClientSession(url) as s, s.post(SSR, json={}) as resp:
        info = (await resp.json())["status"]["userInfo"]
    assert info["username"] == "system:anonymous"
    assert "uid" not in info


async def test_each_user_has_a_control_plane_of_their_own(env: Env) -> None:
    sim, s = env
    alice, bob = sim.uid_of("alice"), sim.uid_of("bob")
    sim.create(CM, cm("alices"), user=alice, namespace="default")
    sim.create(CM, cm("bobs"), user=bob, namespace="default")
    sim.create(CM, cm("root"), namespace="default")
    sim.create(CM, cm("project"), project="p1", namespace="default")
    assert await names(s, user_path(alice), ALICE) == ["alices"]
    assert await names(s, user_path("alice"), ALICE) == ["alices"], "the name works as well as the uid"
    assert await names(s, user_path(bob), BOB) == ["bobs"]
    assert [o["metadata"]["name"] for o in sim.list_objects(CM, user=alice)] == ["alices"]
    assert sim.get(CM, "alices", namespace="default") is None
    assert sim.get(CM, "alices", user=alice, namespace="default") is not None


async def test_another_users_control_plane_is_forbidden_whatever_the_rules(env: Env) -> None:
    sim, s = env
    rules = Rules()
    rules.allow("bob", verbs=("*",))  # everything, everywhere the rules govern
    sim.authorizer = rules
    alice = sim.uid_of("alice")
    sim.create(CM, cm("alices"), user=alice, namespace="default")
    assert await status_of(s, user_path(alice), BOB) == 403
    assert await status_of(s, user_path("alice"), BOB) == 403
    assert await status_of(s, user_path(alice, NS_CM + "/alices"), BOB) == 403
    assert await status_of(s, user_path(alice), {}) == 401
    # alice has no rule at all, and her own control plane answers her.
    assert await names(s, user_path(alice), ALICE) == ["alices"]
    assert await status_of(s, NS_CM, ALICE) == 403, "rules still govern the root"


async def test_access_reviews_in_a_user_control_plane(env: Env) -> None:
    sim, s = env
    rules = Rules()
    rules.allow("bob", verbs=("*",))
    sim.authorizer = rules
    prefix = f"{USERS}/{sim.uid_of('alice')}/control-plane"
    assert (await review(s, prefix, ALICE))["allowed"] is True
    denied = await review(s, prefix, BOB)
    assert denied["allowed"] is False
    assert denied["denied"] is True
    assert (await review(s, "", ALICE))["allowed"] is False
    assert (await review(s, "", BOB))["allowed"] is True


async def test_watch_and_create_in_a_user_control_plane(env: Env) -> None:
    sim, s = env
    alice = sim.uid_of("alice")
    sim.create(CM, cm("a"), user=alice, namespace="default")
    resp = await s.get(user_path(alice), params={"watch": "true"}, headers=ALICE)
    async with resp:
        assert resp.status == 200
        lines = Lines(resp)
        assert summary(await lines.take(1)) == [("ADDED", "a")]
        sim.create(CM, cm("elsewhere"), user=sim.uid_of("bob"), namespace="default")
        sim.create(CM, cm("root"), namespace="default")
        async with s.post(user_path(alice), json=cm("b"), headers=ALICE) as created:
            assert created.status == 201
        assert summary(await lines.take(1)) == [("ADDED", "b")]
    assert sim.get(CM, "b", user=alice, namespace="default") is not None
    async with s.post(user_path(alice), json=cm("c"), headers=BOB) as refused:
        assert refused.status == 403
    assert sim.get(CM, "c", user=alice, namespace="default") is None


async def test_without_tokens_user_control_planes_are_open() -> None:
    async with running_simulator() as (sim, url), aiohttp.ClientSession(url) as s:
        sim.create(CM, cm("x"), user="someone", namespace="default")
        assert await names(s, user_path("someone"), {}) == ["x"]
