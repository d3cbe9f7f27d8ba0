"""PROTOCOL.md section 5, attack by attack, against the simulator's real authorization.

Each test here fails on the original design: there, an upstream watch opened with one user's
token was shared with anyone who subscribed to the same channel, a cid could be taken over, and
revoked access kept streaming.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from tests.conftest import make_config
from tests.stacks import fast_upstream, sim_and_gateway
from watchgw.client.client import WatchClient, WatchClientError
from watchgw.config import Config, LogConfig
from watchgw.hub.hub import WatchHub
from watchgw.logs import configure_logging
from watchgw.sim import Fault, Simulator
from watchgw.sim.rbac import Rules
from watchgw.web.keys import HUB
from watchgw.web.recheck import recheck_once

SECRETS = "api/v1/secrets"
TOKENS = {"tok-alice-0123456789": "alice", "tok-bob-0123456789": "bob", "tok-gateway-0123456789": "gateway"}
ALICE = {"Authorization": "Bearer tok-alice-0123456789"}
BOB = {"Authorization": "Bearer tok-bob-0123456789"}


@dataclasses.dataclass
class Secure:
    sim: Simulator
    rules: Rules
    url: str
    app: Any
    clients: list[WatchClient]

    @property
    def hub(self) -> WatchHub:
        return self.app[HUB]  # type: ignore[no-any-return]

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()

    async def client(self, headers: dict[str, str] | None, *, connect: bool = True, **kw: Any) -> WatchClient:
        client = WatchClient(self.url, headers=headers, record=True, **kw)
        self.clients.append(client)
        if connect:
            await client.connect()
        return client


def bearer_config(sim_url: str, **upstream: Any) -> Config:
    config = make_config(
        sim_url,
        auth={"mode": "bearer", "cache_ttl_s": 0, "recheck_s": 3600},
        limits={"grace_period_s": 0.5, "session_ttl_s": 0.5},
    )
    return fast_upstream(config, backoff_max_s=0.05, inactivity_timeout_s=2.0, **upstream)


def with_rules(sim: Simulator) -> Rules:
    rules = Rules()
    sim.tokens = dict(TOKENS)
    sim.authorizer = rules
    rules.allow("gateway", resource="*")  # the gateway's own credential may watch everything
    return rules


@pytest.fixture
async def secure_factory() -> AsyncIterator[Callable[..., Any]]:
    async with contextlib.AsyncExitStack() as exits:

        async def start(config_of: Callable[[str], Config] = bearer_config) -> Secure:
            rules: list[Rules] = []
            sim, app, url = await exits.enter_async_context(
                sim_and_gateway(config_of, prepare=lambda sim: rules.append(with_rules(sim)))
            )
            secure = Secure(sim, rules[0], url, app, [])
            exits.push_async_callback(secure.close_clients)
            return secure

        yield start


def with_gateway_token(sim_url: str) -> Config:
    return bearer_config(sim_url, token="tok-gateway-0123456789")


@pytest.fixture
async def secure(secure_factory: Callable[..., Any]) -> Secure:
    result: Secure = await secure_factory(with_gateway_token)
    return result


async def test_missing_or_rejected_token_is_401_on_stream_and_subscribe(secure: Secure) -> None:
    for headers in (None, {"Authorization": "Bearer not-a-real-token"}, {"Authorization": "Basic abc"}):
        client = await secure.client(headers, connect=False)
        with pytest.raises(WatchClientError) as caught:
            await client.connect()
        assert (caught.value.status, caught.value.code) == (401, "unauthenticated")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{secure.url}/api/watch/subscribe", json={"clientId": "abcdefgh12"}) as response,
    ):
        assert response.status == 401


async def test_cookie_authenticates_event_source_clients(secure: Secure) -> None:
    secure.rules.allow("alice", resource="secrets", namespace="default")
    client = await secure.client({"Cookie": "watchgw_token=tok-alice-0123456789"})
    channel = await client.subscribe(resourceType=SECRETS, namespace="default")
    await client.wait_synced(channel)


async def test_second_user_joining_an_open_channel_is_refused(secure: Secure) -> None:
    """The original's leak: bob subscribes to the channel alice opened and gets her secrets."""
    secure.rules.allow("alice", resource="secrets", project="proj-abc")
    secure.sim.create(
        SECRETS,
        {"metadata": {"name": "alice-db"}, "data": {"pw": "x"}},
        project="proj-abc",
        namespace="default",
    )
    alice = await secure.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    await alice.wait_synced(channel)
    bob = await secure.client(BOB)
    with pytest.raises(WatchClientError) as caught:
        await bob.subscribe(resourceType=SECRETS, projectId="proj-abc", namespace="default")
    assert (caught.value.status, caught.value.code) == (403, "forbidden")
    secure.sim.create(SECRETS, {"metadata": {"name": "after"}}, project="proj-abc", namespace="default")
    await alice.wait_for(lambda c: "default/after" in c.objects(channel))
    # The proof that bob's stream is alive and past that event: a channel he may see.
    secure.rules.allow("bob", resource="configmaps")
    own = await bob.subscribe(resourceType="api/v1/configmaps", namespace="default")
    await bob.wait_synced(own)
    assert not [e for e in bob.events if channel in e.data]


async def test_user_scoped_key_is_not_a_capability(secure: Secure) -> None:
    """Knowing (or guessing) a channel key gives nothing: access is decided per subscriber."""
    secure.rules.allow("alice", resource="secrets", namespace="default", names=["mine"])
    alice = await secure.client(ALICE)
    own = await alice.subscribe(resourceType=SECRETS, namespace="default", name="mine")
    await alice.wait_synced(own)
    with pytest.raises(WatchClientError) as caught:
        await alice.subscribe(resourceType=SECRETS, namespace="default")  # the whole namespace
    assert caught.value.status == 403
    bob = await secure.client(BOB)
    with pytest.raises(WatchClientError):
        await bob.subscribe(resourceType=SECRETS, namespace="default", name="mine")


async def test_cid_takeover_by_another_identity(secure: Secure) -> None:
    secure.rules.allow("alice", resource="secrets")
    secure.rules.allow("bob", resource="secrets")
    alice = await secure.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    thief = await secure.client(BOB, connect=False, client_id=alice.client_id)
    with pytest.raises(WatchClientError) as stream_refused:
        await thief.connect()
    assert (stream_refused.value.status, stream_refused.value.code) == (409, "client_id_in_use")
    with pytest.raises(WatchClientError) as sub_refused:
        await thief.subscribe(resourceType=SECRETS, namespace="kube-system")
    assert sub_refused.value.status == 403
    with pytest.raises(WatchClientError) as unsub_refused:
        await thief.unsubscribe(channel)
    assert unsub_refused.value.status == 403
    assert channel in secure.hub.sessions[alice.client_id].channels
    # The same identity reconnecting takes its cid over.
    again = await secure.client(ALICE, connect=False, client_id=alice.client_id)
    await again.connect()


async def test_revocation_unsubscribes_with_forbidden_and_stops_events(secure: Secure) -> None:
    grant = secure.rules.allow("alice", resource="secrets", namespace="default")
    secure.rules.allow("bob", resource="secrets", namespace="default")
    alice = await secure.client(ALICE)
    bob = await secure.client(BOB)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    await bob.subscribe(resourceType=SECRETS, namespace="default")
    await alice.wait_synced(channel)
    secure.rules.revoke(grant)
    # cache_ttl_s = 0 in these tests: the recheck asks the control plane again
    assert await recheck_once(secure.hub, _access(secure)) == 1
    await alice.wait_for(lambda c: c.unsubscribed.get(channel) == "forbidden")
    secure.sim.create(SECRETS, {"metadata": {"name": "after-revoke"}}, namespace="default")
    await bob.wait_for(lambda c: "default/after-revoke" in c.objects(channel))
    assert not [e for e in alice.events if "after-revoke" in e.data]


def _access(secure: Secure) -> Any:
    from watchgw.web.keys import ACCESS

    return secure.app[ACCESS]


async def test_recheck_loop_runs_on_its_own(secure_factory: Callable[..., Any]) -> None:
    def config_of(url: str) -> Config:
        config = with_gateway_token(url)
        return dataclasses.replace(config, auth=dataclasses.replace(config.auth, recheck_s=0.1))

    secure: Secure = await secure_factory(config_of)
    grant = secure.rules.allow("alice", resource="secrets")
    alice = await secure.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    secure.rules.revoke(grant)
    await alice.wait_for(lambda c: c.unsubscribed.get(channel) == "forbidden", timeout=5)


async def test_unreachable_control_plane_is_503_never_allow(secure: Secure) -> None:
    secure.rules.allow("alice", resource="secrets")
    alice = await secure.client(ALICE)
    secure.sim.inject(Fault(kind="error500", on="any", count=2))
    with pytest.raises(WatchClientError) as caught:
        await alice.subscribe(resourceType=SECRETS, namespace="default")
    assert (caught.value.status, caught.value.code) == (503, "upstream_unavailable")


async def test_token_file_rotation_mid_stream(secure_factory: Callable[..., Any], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-gateway-0123456789\n")

    def config_of(url: str) -> Config:
        return bearer_config(url, token_file=str(token_file))

    secure: Secure = await secure_factory(config_of)
    secure.rules.allow("alice", resource="secrets")
    alice = await secure.client(ALICE)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    await alice.wait_synced(channel)
    # Rotate: the old token stops working, the file holds the new one, the stream is cut.
    secure.sim.tokens = {**TOKENS, "tok-rotated-0123456789": "gateway"}
    del secure.sim.tokens["tok-gateway-0123456789"]
    token_file.write_text("tok-rotated-0123456789\n")
    secure.sim.cut_watches()
    secure.sim.create(SECRETS, {"metadata": {"name": "after-rotation"}}, namespace="default")
    await alice.wait_for(lambda c: "default/after-rotation" in c.objects(channel), timeout=10)


async def two_subscribers(
    secure_factory: Callable[..., Any],
) -> tuple[Secure, WatchClient, WatchClient, str]:
    """``credential = "subscriber"``: alice opens the channel (her token opens the watch), bob joins."""
    secure: Secure = await secure_factory(lambda url: bearer_config(url, credential="subscriber"))
    secure.rules.allow("alice", resource="secrets")
    secure.rules.allow("bob", resource="secrets")
    alice = await secure.client(ALICE)
    bob = await secure.client(BOB)
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    await alice.wait_synced(channel)
    await bob.subscribe(resourceType=SECRETS, namespace="default")
    await bob.wait_synced(channel)
    return secure, alice, bob, channel


async def test_subscriber_credential_moves_to_another_subscriber(secure_factory: Callable[..., Any]) -> None:
    secure, _alice, bob, channel = await two_subscribers(secure_factory)
    # Alice's token is rejected by the control plane from now on (expired).
    secure.sim.tokens = {k: v for k, v in TOKENS.items() if v != "alice"}
    secure.sim.cut_watches()
    secure.sim.create(SECRETS, {"metadata": {"name": "via-bob"}}, namespace="default")
    await bob.wait_for(lambda c: "default/via-bob" in c.objects(channel), timeout=10)


async def test_a_forbidden_subscriber_credential_moves_and_never_names_its_user(
    secure_factory: Callable[..., Any],
) -> None:
    """Alice's access is revoked while her token carries the shared watch: the control plane
    answers 403. The watch moves to bob's token (bob keeps his objects), and nothing bob gets
    names alice."""
    secure, _alice, bob, channel = await two_subscribers(secure_factory)
    secure.rules.revoke_user("alice")
    secure.sim.cut_watches()
    secure.sim.create(SECRETS, {"metadata": {"name": "via-bob"}}, namespace="default")
    await bob.wait_for(lambda c: "default/via-bob" in c.objects(channel), timeout=10)
    seen = " ".join(e.data for e in bob.events)
    assert "alice" not in seen


async def test_subscriber_credential_leaves_with_its_subscriber(secure_factory: Callable[..., Any]) -> None:
    secure, alice, bob, channel = await two_subscribers(secure_factory)
    watches = secure.sim.watch_requests
    await alice.unsubscribe(channel)
    # The watch is reopened with bob's token, from the resourceVersion it had (no LIST).
    await secure.sim.wait_for(lambda: secure.sim.watch_requests > watches)
    secure.sim.tokens = {k: v for k, v in TOKENS.items() if v != "alice"}
    secure.sim.create(SECRETS, {"metadata": {"name": "still-live"}}, namespace="default")
    await bob.wait_for(lambda c: "default/still-live" in c.objects(channel), timeout=10)
    assert secure.sim.list_requests == 1


async def test_no_token_in_any_log_line_of_an_authenticated_session(secure: Secure) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    configure_logging(LogConfig(level="debug", format="json"), stream=stream)
    try:
        secure.rules.allow("alice", resource="secrets")
        alice = await secure.client(ALICE)
        channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
        await alice.wait_synced(channel)
        bob = await secure.client(BOB)
        with pytest.raises(WatchClientError):
            await bob.subscribe(resourceType=SECRETS, namespace="default")  # 403: nothing granted
        bad = await secure.client({"Authorization": "Bearer tok-wrong-9876543210"}, connect=False)
        with pytest.raises(WatchClientError):
            await bad.connect()
        await alice.unsubscribe(channel)
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert "client.connected" in text
    for token in (*TOKENS, "tok-wrong-9876543210"):
        assert token not in text


async def test_user_scoped_channels_with_the_same_key_never_share_events(secure: Secure) -> None:
    """The original shares a user-scoped channel between users whose subscriptions have the same
    key (the key does not name the user): a cross-user leak. watchgw keeps one per user."""
    sim = secure.sim
    alice_uid, bob_uid = sim.uid_of("alice"), sim.uid_of("bob")
    sim.create(SECRETS, {"metadata": {"name": "alice-1"}}, user=alice_uid, namespace="default")
    sim.create(SECRETS, {"metadata": {"name": "bob-1"}}, user=bob_uid, namespace="default")
    alice = await secure.client(ALICE)
    bob = await secure.client(BOB)
    fields = {"resourceType": SECRETS, "namespace": "default", "userScoped": True}
    key = await alice.subscribe(**fields)
    assert key == f"{SECRETS}:::default::::user"
    assert await bob.subscribe(**fields) == key
    await alice.wait_for(lambda c: key in c.synced)
    await bob.wait_for(lambda c: key in c.synced)
    assert set(alice.objects(key)) == {"default/alice-1"}
    assert set(bob.objects(key)) == {"default/bob-1"}
    assert len(secure.hub.channels) == 2, "one upstream watch per user"
    sim.create(SECRETS, {"metadata": {"name": "alice-2"}}, user=alice_uid, namespace="default")
    sim.create(SECRETS, {"metadata": {"name": "bob-2"}}, user=bob_uid, namespace="default")
    await alice.wait_for(lambda c: "default/alice-2" in c.objects(key))
    await bob.wait_for(lambda c: "default/bob-2" in c.objects(key))
    for client, other in ((alice, "bob"), (bob, "alice")):
        seen = " ".join(e.data for e in client.events if e.event == "watch")
        assert other not in seen, f"{other}'s objects reached the wrong user"


async def test_a_user_who_may_watch_but_not_list_cannot_subscribe(secure: Secure) -> None:
    """A channel is a LIST then a WATCH; with credential = "subscriber" either runs with the
    subscriber's token, so both verbs are required."""
    secure.rules.allow("alice", resource="secrets", namespace="default", verbs=["watch"])
    alice = await secure.client(ALICE)
    with pytest.raises(WatchClientError) as refused:
        await alice.subscribe(resourceType=SECRETS, namespace="default")
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    secure.rules.allow("alice", resource="secrets", namespace="default", verbs=["list"])
    channel = await alice.subscribe(resourceType=SECRETS, namespace="default")
    await alice.wait_synced(channel)
