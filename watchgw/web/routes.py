"""HTTP handlers: stream, subscribe, unsubscribe, stats, health (PROTOCOL.md section 3)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse

from watchgw.config import Config, LimitsConfig
from watchgw.hub.errors import InvalidRequest
from watchgw.hub.hub import WatchHub
from watchgw.hub.keys import InvalidField, parse_channel_key, target_from_fields
from watchgw.hub.session import Session
from watchgw.kube.types import MAX_RESOURCE_VERSION_CHARS, is_valid_resource_version
from watchgw.kube.urls import upstream_target
from watchgw.web.access import ANONYMOUS, Access, Caller
from watchgw.web.body import (
    RateLimited,
    RequestError,
    fail,
    json_response,
    read_json_object,
    require_json,
)
from watchgw.web.clientaddr import request_limit_key
from watchgw.web.connections import mark_stream
from watchgw.web.handoff import StreamConnection, hand_off
from watchgw.web.keys import ACCESS, CONFIG, COUNTERS, HUB, RATE_LIMITER, STREAMS

log = structlog.get_logger("watchgw.web")

_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_EVENT_ID = re.compile(r"[0-9]{1,19}")
_SUBSCRIBE_FIELDS = frozenset(
    {
        "clientId",
        "resourceType",
        "orgId",
        "projectId",
        "namespace",
        "name",
        "labelSelector",
        "fieldSelector",
        "resourceVersion",
        "snapshot",
        "userScoped",
    }
)
_UNSUBSCRIBE_FIELDS = frozenset({"clientId", "channel"})
_HOSTNAME = socket.gethostname()
"""Read once at start: the default replica name must not change under a running client."""


class SSEResponse(EventSourceResponse):
    """aiohttp-sse's stream response (SSE headers, ``X-Accel-Buffering``, TCP_USER_TIMEOUT so the
    kernel drops a peer that stops acknowledging) without its per-client ping task: the session's
    pump writes the heartbeat with the timer it already has, which saves a task, a coroutine and
    a timer for every idle client. The library starts ``_ping`` in ``prepare``; ours ends at once.
    """

    handed_off = False
    """The connection went to a ``StreamConnection`` (web/handoff.py): aiohttp's finishing
    ``prepare``/``write_eof`` after the handler must not touch it."""

    async def _ping(self) -> None:
        return None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.handed_off:
            return None
        return await super().prepare(request)

    async def write_eof(self, data: bytes = b"") -> None:
        if not self.handed_off:
            await super().write_eof(data)


def _client_id(value: object, *, field: str = "cid") -> str:
    if not isinstance(value, str) or not _CLIENT_ID.fullmatch(value):
        fail(400, "invalid_client_id", f"{field} must be 8 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


def replica_name(request: web.Request) -> str:
    """``server.replica``, or ``<hostname>:<port>`` of the listener the request came in on (the
    bound port, also when ``server.port = 0``): what names this process among the replicas."""
    configured = request.app[CONFIG].server.replica
    if configured:
        return configured
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"{_HOSTNAME}:{sockname[1]}"
    return f"{_HOSTNAME}:{request.app[CONFIG].server.port}"


def _last_event_id(request: web.Request) -> int | None:
    """``Last-Event-ID`` (what EventSource sends) or ``?lastEventId=``; anything else: start over."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    if raw and _EVENT_ID.fullmatch(raw.strip()):
        return int(raw.strip())
    return None


async def stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    config: Config = app[CONFIG]
    hub: WatchHub = app[HUB]
    access: Access = app[ACCESS]
    client_id = _client_id(request.query.get("cid"))
    caller = await app[COUNTERS].authenticate(access, request)
    last_event_id = _last_event_id(request)
    grant = hub.open_stream(
        client_id=client_id,
        identity=caller.identity,
        last_event_id=last_event_id,
        quota=_quota(request, caller),
    )
    session = grant.session
    session.token = caller.token
    limits = config.limits
    response = SSEResponse(send_timeout=limits.stalled_client_timeout_s)
    generation: int | None = None
    try:
        writer = await response.prepare(request)
        mark_stream(request, response)  # long-lived by design: out of the pending-connection count
        transport = request.transport
        if writer is None or transport is None or transport.is_closing():
            return response
        connected = hub.frames.connected(
            client_id=client_id,
            resumed=grant.resumed,
            retry_ms=limits.retry_ms,
            frame_id=last_event_id if grant.resumed else None,
            replica=replica_name(request),
        )
        await response.write(connected)
        del connected
        chunked = bool(getattr(writer, "chunked", True))
        generation = hub.attach(
            session, transport, chunked=chunked, last_event_id=last_event_id if grant.resumed else None
        )
        if generation is None:
            return response  # the session ended while the stream started: the client starts over
        log.info("client.connected", client_id=client_id, resumed=grant.resumed, identity=caller.identity)
        # From here the stream is the session's and a small protocol's: aiohttp's request,
        # response and tasks for it are released when this handler returns (web/handoff.py).
        connection = StreamConnection(on_lost=session.connection_lost)
        stream_transport = hand_off(request, connection)
        response.handed_off = True
        app[STREAMS].start(
            _pump(hub, session, generation, connection, stream_transport, chunked=chunked, limits=limits)
        )
        return response
    finally:
        if not response.handed_off:
            # Never attached or never handed off (the client may vanish before): the session
            # must still end after its TTL.
            hub.stream_closed(session, generation)


async def _pump(
    hub: WatchHub,
    session: Session,
    generation: int,
    connection: StreamConnection,
    transport: asyncio.Transport,
    *,
    chunked: bool,
    limits: LimitsConfig,
) -> None:
    """A handed-off stream, until it ends: the client left, a newer stream took the session
    over, the server drains, or the client stalled."""
    try:
        await session.pump(
            generation,
            drain=connection.drain,
            stall_timeout_s=limits.stalled_client_timeout_s,
            heartbeat_s=limits.heartbeat_s,
        )
    finally:
        hub.stream_closed(session, generation)
        log.info("client.disconnected", client_id=session.client_id)
        if not transport.is_closing():
            if chunked:
                transport.write(b"0\r\n\r\n")  # the end of the chunked body
            transport.close()


def _quota(request: web.Request, caller: Caller) -> str:
    """What per-identity limits and the subscribe rate limit count by: the identity; without
    authentication every caller is "anonymous", so its client address (a fresh ``cid`` is free,
    an address is not; see ``server.trusted_proxies``)."""
    if caller.identity != ANONYMOUS:
        return caller.identity
    return "addr:" + request_limit_key(request, request.app[CONFIG].server.trusted_proxies)


async def _client_request(request: web.Request, fields: frozenset[str]) -> tuple[Caller, dict[str, Any], str]:
    """What subscribe and unsubscribe share: who calls, the body, the client id, the rate limit."""
    app = request.app
    config: Config = app[CONFIG]
    require_json(request)  # first: a cross-site form POST is refused before any work
    caller = await app[COUNTERS].authenticate(app[ACCESS], request)
    body = await read_json_object(
        request, config.limits.max_body_bytes, timeout_s=config.server.body_timeout_s
    )
    unknown = sorted(set(body) - fields)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}")
    client_id = _client_id(body.get("clientId"), field="clientId")
    query_cid = request.query.get("cid")
    if query_cid is not None and query_cid != client_id:
        raise InvalidRequest("clientId: the body and ?cid= name different clients")
    wait_s = app[RATE_LIMITER].acquire(_quota(request, caller))
    if wait_s > 0:
        raise RateLimited(wait_s)
    return caller, body, client_id


async def subscribe(request: web.Request) -> web.Response:
    hub: WatchHub = request.app[HUB]
    caller, body, client_id = await _client_request(request, _SUBSCRIBE_FIELDS)
    try:
        target = target_from_fields(body)
    except InvalidField as exc:
        raise InvalidRequest(str(exc)) from None
    if target.user_scoped:
        if not caller.user_id:
            raise InvalidRequest(
                'userScoped: needs an authenticated user (auth.mode = "bearer" or "forward") with a'
                " user id; this caller has none"
            )
        # The user comes from the caller's identity, never from the request.
        target = dataclasses.replace(target, user=caller.user_id)
    resource_version = body.get("resourceVersion")
    if (
        resource_version is not None
        and resource_version != ""
        and not is_valid_resource_version(resource_version)
    ):
        raise InvalidRequest(
            f"resourceVersion: must be 1 to {MAX_RESOURCE_VERSION_CHARS} ASCII digits, as sent in 'watch' "
            "and 'synced' events"
        )
    snapshot = body.get("snapshot", True)
    if not isinstance(snapshot, bool):
        raise InvalidRequest("snapshot: must be true or false")
    session = hub.session_for(client_id, caller.identity)
    try:
        key, _already = hub.check_subscribe(session, target)  # limits before any work upstream
    except InvalidField as exc:
        raise InvalidRequest(str(exc)) from None
    # Authorized with the caller's own token, also when the channel is open for someone else,
    # for what is really watched (a project's default namespace).
    watched = upstream_target(request.app[CONFIG].upstream, target)
    await request.app[COUNTERS].authorize(request.app[ACCESS], caller, watched, key)
    # The session may have ended while authorization was awaited: look it up again.
    session = hub.session_for(client_id, caller.identity)
    session.token = caller.token
    key = hub.subscribe(session, target, resource_version=resource_version or None, snapshot=snapshot)
    # The replica lets a client notice that this answer came from another process than its stream.
    return json_response({"channel": key, "replica": replica_name(request)})


async def unsubscribe(request: web.Request) -> web.Response:
    hub: WatchHub = request.app[HUB]
    caller, body, client_id = await _client_request(request, _UNSUBSCRIBE_FIELDS)
    key = body.get("channel")
    if not isinstance(key, str) or not key:
        raise InvalidRequest("channel: must be the channel key returned by subscribe")
    try:
        # Either key form (seven or eight segments) names the same subscription.
        key = hub.key_of(parse_channel_key(key))
    except InvalidField as exc:
        raise InvalidRequest(str(exc)) from None
    session = hub.session_for(client_id, caller.identity)
    # A channel held before the session started over (parked, ``released``) still counts: the
    # portal's client unsubscribes the keys it had after reconnecting.
    if key not in session.channels and key not in session.released:
        raise RequestError(404, "unknown_channel", "this client holds no subscription to that channel")
    hub.unsubscribe(session, key)
    return json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    return json_response({**request.app[HUB].stats(), "replica": replica_name(request)})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    if request.app[HUB].draining:
        return json_response({"ready": False, "reason": "draining"}, status=503)
    return json_response({"ready": True})
