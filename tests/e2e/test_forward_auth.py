"""``auth.mode = "forward"`` end to end: a browser's session cookie, a forward-auth service that
turns it into the user's token, the gateway, and the simulator's real authorization."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import make_config
from tests.forward_auth import ForwardAuthServer, captured_logs
from tests.processes import free_port
from tests.stacks import fast_upstream
from watchgw.client.client import WatchClient, WatchClientError
from watchgw.config import Config
from watchgw.sim import Simulator, running_simulator
from watchgw.sim.rbac import Rules
from watchgw.web.app import make_app
from watchgw.web.server import running_app

SECRETS = "api/v1/secrets"
TOKENS = {"tok-alice-0123456789": "alice", "tok-bob-0123456789": "bob", "tok-gateway-0123456789": "gateway"}
SESSIONS = {"sess-alice-abcdef": "tok-alice-0123456789", "sess-bob-abcdef": "tok-bob-0123456789"}
ALICE = {"Cookie": "session=sess-alice-abcdef"}
BOB = {"Cookie": "session=sess-bob-abcdef"}


@dataclasses.dataclass
class Stack:
    sim: Simulator
    rules: Rules
    forward: ForwardAuthServer
    url: str
    clients: list[WatchClient]

    async def client(self, headers: dict[str, str], *, connect: bool = True) -> WatchClient:
        client = WatchClient(self.url, headers=headers, record=True)
        self.clients.append(client)
        if connect:
            await client.connect()
        return client


def forward_config(sim_url: str, forward_url: str, *, auth: dict[str, Any], **upstream: Any) -> Config:
    config = make_config(
        sim_url,
        auth={"mode": "forward", "forward_url": forward_url, "cache_ttl_s": 0, "recheck_s": 3600, **auth},
        limits={"grace_period_s": 0.5, "session_ttl_s": 0.5},
    )
    return fast_upstream(config, backoff_max_s=0.05, inactivity_timeout_s=2.0, **upstream)


@pytest.fixture
async def stack_factory() -> AsyncIterator[Callable[..., Any]]:
    async with contextlib.AsyncExitStack() as exits:

        async def start(
            *, auth: dict[str, Any] | None = None, forward_url: str = "", **upstream: Any
        ) -> Stack:
            sim, sim_url = await exits.enter_async_context(running_simulator(bookmark_interval_s=0.25))
            sim.tokens = dict(TOKENS)
            rules = Rules()
            sim.authorizer = rules
            rules.allow("gateway", resource="*")
            forward = ForwardAuthServer(dict(SESSIONS))
            served_url = await exits.enter_async_context(forward.running())
            forward_url = forward_url or served_url
            upstream.setdefault("token", "tok-gateway-0123456789")
            config = forward_config(sim_url, forward_url, auth=auth or {}, **upstream)
            url = await exits.enter_async_context(running_app(make_app(config)))
            stack = Stack(sim, rules, forward, url, [])
            exits.push_async_callback(_close_all, stack)
            return stack

        yield start


async def _close_all(stack: Stack) -> None:
    for client in stack.clients:
        await client.close()


@pytest.fixture
async def stack(stack_factory: Callable[..., Any]) -> Stack:
    result: Stack = await stack_factory()
    return result


async def test_a_session_cookie_subscribes_to_a_project_channel(stack: Stack) -> None:
    stack.rules.allow("alice", resource="secrets", project="proj-abc")
    stack.sim.create(SECRETS, {"metadata": {"name": "db"}}, project="proj-abc", namespace="default")
    alice = await stack.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    await alice.wait_synced(channel)
    assert set(alice.objects(channel)) == {"default/db"}
    stack.sim.create(SECRETS, {"metadata": {"name": "later"}}, project="proj-abc", namespace="default")
    await alice.wait_for(lambda c: "default/later" in c.objects(channel))
    assert all(r["Cookie"] == ALICE["Cookie"] for r in stack.forward.requests)


async def test_a_forbidden_channel_is_403(stack: Stack) -> None:
    stack.rules.allow("alice", resource="secrets", project="proj-abc")
    bob = await stack.client(BOB)
    with pytest.raises(WatchClientError) as caught:
        await bob.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    assert (caught.value.status, caught.value.code) == (403, "forbidden")
    alice = await stack.client(ALICE)
    with pytest.raises(WatchClientError) as other_project:
        await alice.subscribe(resourceType=SECRETS, projectId="proj-other", namespace="default")
    assert other_project.value.status == 403


@pytest.mark.parametrize("headers", [{"Cookie": "session=forged"}, {}, {"Authorization": "Bearer nope"}])
async def test_a_bad_or_missing_cookie_is_401(stack: Stack, headers: dict[str, str]) -> None:
    client = await stack.client(headers, connect=False)
    with pytest.raises(WatchClientError) as caught:
        await client.connect()
    assert (caught.value.status, caught.value.code) == (401, "unauthenticated")


async def test_an_unreachable_forward_auth_service_is_503(stack_factory: Callable[..., Any]) -> None:
    stack: Stack = await stack_factory(forward_url=f"http://127.0.0.1:{free_port()}/oauth2/auth")
    client = await stack.client(ALICE, connect=False)
    with pytest.raises(WatchClientError) as caught:
        await client.connect()
    assert (caught.value.status, caught.value.code) == (503, "upstream_unavailable")


async def test_revocation_reaches_forward_auth_subscribers(stack_factory: Callable[..., Any]) -> None:
    stack: Stack = await stack_factory(auth={"recheck_s": 0.1})
    grant = stack.rules.allow("alice", resource="secrets")
    alice = await stack.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    await alice.wait_synced(channel)
    stack.rules.revoke(grant)
    await alice.wait_for(lambda c: c.unsubscribed.get(channel) == "forbidden", timeout=5)


async def test_the_subscriber_credential_is_the_forwarded_token(stack_factory: Callable[..., Any]) -> None:
    stack: Stack = await stack_factory(credential="subscriber", token=None)
    stack.rules.allow("alice", resource="secrets")
    stack.sim.create(SECRETS, {"metadata": {"name": "mine"}}, namespace="default")
    alice = await stack.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    await alice.wait_synced(channel)
    assert set(alice.objects(channel)) == {"default/mine"}


async def test_no_cookie_or_token_in_any_log_line(stack: Stack) -> None:
    with captured_logs() as logs:
        stack.rules.allow("alice", resource="secrets")
        alice = await stack.client(ALICE)
        channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
        await alice.wait_synced(channel)
        forged = await stack.client({"Cookie": "session=forged-session-value"}, connect=False)
        with pytest.raises(WatchClientError):
            await forged.connect()
        await alice.unsubscribe(channel)
    text = logs.getvalue()
    assert "client.connected" in text
    for secret in (*SESSIONS, *TOKENS, "forged-session-value"):
        assert secret not in text
