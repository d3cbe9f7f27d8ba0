"""WatchHub: the registry of sessions and channels, reference counting, grace period, limits.

Limits per identity (``limits.max_*_per_identity``) count what each identity holds: sessions,
subscriptions (parked ones too) and distinct channels. The identity they count by is the
session's *quota key*, given when its stream opens: the caller's identity, or without
authentication its client address (the web layer decides). Each subscribe costs O(1): a
:class:`_Usage` per quota key and a :class:`_Holder` per session with the registry keys it is
counted for, updated where subscriptions begin and end, so the counts cannot drift: a count is
added once per (session, channel) and removed once, and a session's end removes what is left.

Everything here is synchronous and runs on the event loop: a subscribe is validated, counted and
joined without an ``await``, so no other client can observe a half-made subscription, and frames
get ids in the order they are pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from watchgw.config import LimitsConfig
from watchgw.hub.channel import Channel, UpstreamFactory
from watchgw.hub.errors import (
    ClientIdInUse,
    Draining,
    Forbidden,
    TooManyChannels,
    TooManyChannelsForIdentity,
    TooManyClients,
    TooManyClientsForIdentity,
    TooManySubscriptions,
    TooManySubscriptionsForIdentity,
    UnknownClient,
)
from watchgw.hub.frames import FrameFactory
from watchgw.hub.keys import channel_key
from watchgw.hub.session import Session
from watchgw.kube.types import WatchTarget

log = structlog.get_logger("watchgw.hub")


#: Counters each channel keeps (``Channel`` attributes), totalled by :meth:`WatchHub.total`.
CHANNEL_COUNTERS = ("events", "deliveries", "snapshot_parts_built", "snapshot_parts_written")
#: Counters each session keeps (``Session`` attributes).
SESSION_COUNTERS = ("coalesced", "resyncs")


@dataclass(frozen=True, slots=True)
class StreamGrant:
    """A stream was allowed to attach to a session."""

    session: Session
    resumed: bool


class _Usage:
    """What one quota key (identity or client address) holds."""

    __slots__ = ("channels", "sessions", "subscriptions")

    def __init__(self) -> None:
        self.sessions: dict[str, None] = {}
        """Client ids of its sessions."""
        self.subscriptions = 0
        """Subscriptions of its sessions, parked ones included."""
        self.channels: dict[str, int] = {}
        """Registry key -> how many of its sessions hold the channel (subscribed or parked)."""


class _Holder:
    """One session's share of its :class:`_Usage`: the registry keys it is counted for."""

    __slots__ = ("held", "quota", "session", "usage")

    def __init__(self, session: Session, quota: str, usage: _Usage) -> None:
        self.session = session
        self.quota = quota
        self.usage = usage
        self.held: dict[str, None] = {}


class WatchHub:
    def __init__(
        self,
        *,
        limits: LimitsConfig,
        upstream_factory: UpstreamFactory,
        frames: FrameFactory | None = None,
        key_segments: int = 8,
        resolve: Callable[[WatchTarget], WatchTarget] = lambda target: target,
    ) -> None:
        self.limits = limits
        self.frames = frames or FrameFactory()
        self.key_segments = key_segments
        self._upstream_factory = upstream_factory
        self._resolve = resolve
        """Channel target -> what its upstream watches (``kube.urls.upstream_target``)."""
        self.sessions: dict[str, Session] = {}
        self.channels: dict[str, Channel] = {}
        """By registry key: the channel key, plus the user for user-scoped channels, which are
        private to their user although their key (on the wire) does not name it."""
        self.draining = False
        self._closing: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self.channels_opened = 0
        self.sessions_opened = 0
        self._retired: dict[str, int] = dict.fromkeys((*CHANNEL_COUNTERS, *SESSION_COUNTERS), 0)
        """Counters of channels and sessions that are gone, so totals never go backwards."""
        self.usage: dict[str, _Usage] = {}
        """By quota key (see the module's docstring); an entry goes with its last session."""
        self._holders: dict[str, _Holder] = {}
        """By client id, for the sessions in :attr:`sessions`."""

    # ------------------------------------------------------------------ observing
    def _changed(self) -> None:
        """Wake :meth:`wait_for` callers: a session or channel came or went."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked on every change of sessions and channels."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
                await waiter

    # ------------------------------------------------------------------ streams
    def open_stream(
        self, *, client_id: str, identity: str, last_event_id: int | None, quota: str | None = None
    ) -> StreamGrant:
        """Find or make the session of ``client_id`` for a new stream; the caller then calls
        :meth:`attach` (or :meth:`stream_closed` if the stream never starts). An existing session
        stops expiring now: the stream may take a while to start. ``quota``: what the per-identity
        limits count a new session under (default: ``identity``)."""
        if self.draining:
            raise Draining("the server is shutting down; reconnect shortly")
        session = self.sessions.get(client_id)
        if session is not None:
            if session.identity != identity:
                raise ClientIdInUse("this client id belongs to another identity")
            session.cancel_expiry()
            if last_event_id is not None and self._resumable(session, last_event_id):
                return StreamGrant(session, resumed=True)
            # No Last-Event-ID (or one it cannot serve exactly): the client starts over.
            self._park_subscriptions(session)
            session.reset()
            session.first_id = self.frames.last_id + 1
            return StreamGrant(session, resumed=False)
        quota = quota or identity
        usage = self.usage.get(quota)
        if usage is not None and len(usage.sessions) >= self.limits.max_clients_per_identity:
            raise TooManyClientsForIdentity(
                f"this identity already holds {self.limits.max_clients_per_identity} clients (streams,"
                f" and sessions within {self.limits.session_ttl_s:g} s of their stream's end)"
            )
        if len(self.sessions) >= self.limits.max_clients:
            raise TooManyClients(f"the server is at its limit of {self.limits.max_clients} clients")
        session = Session(
            client_id=client_id, identity=identity, buffer_bytes=self.limits.client_buffer_bytes
        )
        session.first_id = self.frames.last_id + 1
        self.sessions[client_id] = session
        if usage is None:
            usage = self.usage[quota] = _Usage()
        usage.sessions[client_id] = None
        self._holders[client_id] = _Holder(session, quota, usage)
        self.sessions_opened += 1
        self._changed()
        return StreamGrant(session, resumed=False)

    def _resumable(self, session: Session, last_event_id: int) -> bool:
        """Whether ``last_event_id`` is a position in ``session``'s own stream that it can serve.

        Behind a load balancer a client can come back to this replica with the id of a frame
        written by another one (its requests were routed elsewhere while this replica was
        down, or a restarted replica took its cid back). Such an id says nothing about what the
        session here delivered: ids below the session's start (or above anything this process
        has built) are foreign, and the client starts over instead of being "resumed" wrongly."""
        return session.first_id <= last_event_id <= self.frames.last_id and session.can_resume(last_event_id)

    def attach(
        self,
        session: Session,
        transport: asyncio.WriteTransport,
        *,
        chunked: bool,
        last_event_id: int | None,
    ) -> int | None:
        """The stream of a grant is ready: it takes the session over (replaying what came after
        ``last_event_id``). Returns its generation, or None when the session ended meanwhile
        (the caller closes the stream; the client reconnects and starts over)."""
        if session.removed or self.sessions.get(session.client_id) is not session:
            return None
        generation, ended = session.attach(transport, chunked=chunked, last_event_id=last_event_id)
        for key, reason in ended.items():
            # Its unsubscribed is no longer in the replay log: the client must still hear it.
            session.push(
                self.frames.event(
                    "unsubscribed", {"channel": key, "reason": reason}, channel=key, snapshot=True
                )
            )
        return generation

    def stream_closed(self, session: Session, generation: int | None) -> None:
        """The stream ``generation`` of ``session`` ended (None: it never attached): keep the
        session for ``session_ttl_s``, then end it."""
        if generation is not None and not session.detach(generation):
            return  # a newer stream took over
        if session.attached:
            return  # never attached, but another stream of the session is live
        if self.sessions.get(session.client_id) is session:
            session.schedule_expiry(self.limits.session_ttl_s, lambda: self.end_session(session))
        self._changed()

    def end_session(self, session: Session) -> None:
        current = self.sessions.get(session.client_id) is session
        if current:
            del self.sessions[session.client_id]
        self._release_subscriptions(session)
        for key in list(session.released):
            self._unpark(session, key)
        if current:
            self._drop_holder(session)
        for name in SESSION_COUNTERS:
            self._retired[name] += getattr(session, name)
        session.close()
        log.info("client.expired", client_id=session.client_id)
        self._changed()

    # ------------------------------------------------------------------ per-identity usage
    def _holder(self, session: Session) -> _Holder | None:
        holder = self._holders.get(session.client_id)
        return holder if holder is not None and holder.session is session else None

    def _count(self, session: Session, registry_key: str) -> None:
        """``session`` holds the channel ``registry_key`` (once per pair, however often called)."""
        holder = self._holder(session)
        if holder is None or registry_key in holder.held:
            return
        holder.held[registry_key] = None
        usage = holder.usage
        usage.subscriptions += 1
        usage.channels[registry_key] = usage.channels.get(registry_key, 0) + 1

    def _uncount(self, session: Session, registry_key: str) -> None:
        """``session`` no longer holds the channel ``registry_key`` (nothing if it was not counted)."""
        holder = self._holder(session)
        if holder is None or registry_key not in holder.held:
            return
        del holder.held[registry_key]
        usage = holder.usage
        usage.subscriptions -= 1
        left = usage.channels[registry_key] - 1
        if left:
            usage.channels[registry_key] = left
        else:
            del usage.channels[registry_key]

    def _drop_holder(self, session: Session) -> None:
        """The session is gone: whatever it is still counted for, and its usage entry if last."""
        holder = self._holder(session)
        if holder is None:
            return
        for registry_key in list(holder.held):
            self._uncount(session, registry_key)
        del self._holders[session.client_id]
        holder.usage.sessions.pop(session.client_id, None)
        if not holder.usage.sessions and self.usage.get(holder.quota) is holder.usage:
            del self.usage[holder.quota]

    def usage_of(self, quota: str) -> tuple[int, int, int] | None:
        """(sessions, subscriptions, distinct channels) counted for ``quota``; None: nothing."""
        usage = self.usage.get(quota)
        if usage is None:
            return None
        return len(usage.sessions), usage.subscriptions, len(usage.channels)

    # ------------------------------------------------------------------ subscriptions
    def session_for(self, client_id: str, identity: str) -> Session:
        session = self.sessions.get(client_id)
        if session is None:
            raise UnknownClient("no live stream for this client id: open the stream first")
        if session.identity != identity:
            raise Forbidden("this client id belongs to another identity")
        return session

    def key_of(self, target: WatchTarget) -> str:
        """The channel key clients see (:class:`~watchgw.hub.keys.InvalidField` if the format
        cannot express the target)."""
        return channel_key(target, segments=self.key_segments)

    @staticmethod
    def registry_key(key: str, target: WatchTarget) -> str:
        return f"{key}\x00{target.user}" if target.user_scoped else key

    def check_subscribe(self, session: Session, target: WatchTarget) -> tuple[str, bool]:
        """Limits, before any work: returns the key and whether it is already subscribed."""
        if self.draining:
            raise Draining("the server is shutting down; reconnect shortly")
        key = self.key_of(target)
        if key in session.channels:
            return key, True
        if len(session.channels) >= self.limits.max_subscriptions_per_client:
            raise TooManySubscriptions(
                f"a client may hold at most {self.limits.max_subscriptions_per_client} subscriptions"
            )
        registry_key = self.registry_key(key, target)
        holder = self._holder(session)
        if holder is not None and registry_key not in holder.held:  # parked: counted already
            limits, usage = self.limits, holder.usage
            if usage.subscriptions >= limits.max_subscriptions_per_identity:
                raise TooManySubscriptionsForIdentity(
                    f"this identity already holds {limits.max_subscriptions_per_identity} subscriptions"
                    " across its clients"
                )
            if registry_key not in self.channels and len(usage.channels) >= limits.max_channels_per_identity:
                raise TooManyChannelsForIdentity(
                    f"this identity already holds {limits.max_channels_per_identity} channels: it may"
                    " join channels that are open, not open more"
                )
        if registry_key not in self.channels and len(self.channels) >= self.limits.max_channels:
            raise TooManyChannels(f"the server is at its limit of {self.limits.max_channels} channels")
        return key, False

    def subscribe(
        self,
        session: Session,
        target: WatchTarget,
        *,
        resource_version: str | None = None,
        snapshot: bool = True,
    ) -> str:
        key, already = self.check_subscribe(session, target)
        if already:
            return key
        registry_key = self.registry_key(key, target)
        channel = self.channels.get(registry_key)
        if channel is None:
            channel = Channel(
                key=key,
                registry_key=registry_key,
                target=self._resolve(target),
                frames=self.frames,
                history_limit=self.limits.channel_history,
                history_bytes=self.limits.channel_history_bytes,
                watch_error_after_s=self.limits.watch_error_after_s,
                upstream_factory=self._upstream_factory,
                on_gone=self._channel_gone,
            )
            self.channels[registry_key] = channel
            self.channels_opened += 1
            channel.start()
            assert channel.task is not None
            channel.task.add_done_callback(lambda task: self._upstream_done(channel, task))
            log.info("channel.opened", channel=key)
            self._changed()
        elif channel.grace_handle is not None:
            channel.grace_handle.cancel()
            channel.grace_handle = None
            log.info("channel.reused", channel=key)
        try:
            channel.join(session, resource_version=resource_version, snapshot=snapshot)
        except Exception:
            # Never a half-subscribed session: undo, and let the channel idle out if unused.
            channel.leave(session, "error")
            self._maybe_idle(channel)
            raise
        self._count(session, registry_key)
        log.debug("client.subscribed", client_id=session.client_id, channel=key)
        return key

    def unsubscribe(self, session: Session, key: str, *, reason: str = "client", notify: bool = True) -> None:
        held = session.channels.get(key)
        if held is None:
            if key in session.released:
                self._unpark(session, key)
            return
        held.leave(session, reason)
        self._uncount(session, held.registry_key)
        if notify:
            session.push(self.frames.event("unsubscribed", {"channel": key, "reason": reason}, channel=key))
        channel = self.channels.get(held.registry_key)
        if channel is not None:
            self._maybe_idle(channel)

    def _release_subscriptions(self, session: Session) -> None:
        for key in list(session.channels):
            self.unsubscribe(session, key, notify=False)

    def _park_subscriptions(self, session: Session) -> None:
        """The client starts over but may still hold what it had: each channel it held waits
        for it (see :meth:`Channel.park`) until it subscribes again or the session ends."""
        for key, held in list(session.channels.items()):
            channel = self.channels.get(held.registry_key)
            if channel is None or held is not channel:
                self.unsubscribe(session, key, notify=False)
                continue
            channel.park(session)
            session.released[key] = channel.registry_key
        while len(session.released) > self.limits.max_subscriptions_per_client:
            self._unpark(session, next(iter(session.released)))  # the oldest: bounded per session

    def _unpark(self, session: Session, key: str) -> None:
        registry_key = session.released.pop(key, None)
        session.deletions_seen.pop(key, None)
        if registry_key is not None:
            self._uncount(session, registry_key)
        channel = self.channels.get(registry_key) if registry_key is not None else None
        if channel is not None and channel.unpark(session):
            self._maybe_idle(channel)

    def _maybe_idle(self, channel: Channel) -> None:
        if channel.subscriber_count or self.channels.get(channel.registry_key) is not channel:
            return
        if channel.grace_handle is not None:
            return
        loop = asyncio.get_running_loop()
        channel.grace_handle = loop.call_later(self.limits.grace_period_s, self._close_if_idle, channel)

    def _close_if_idle(self, channel: Channel) -> None:
        channel.grace_handle = None
        if channel.subscriber_count == 0:
            self._close_channel(channel)

    def _close_channel(self, channel: Channel) -> None:
        if self.channels.get(channel.registry_key) is channel:
            del self.channels[channel.registry_key]
            for name in CHANNEL_COUNTERS:
                self._retired[name] += getattr(channel, name)
        if channel.grace_handle is not None:
            channel.grace_handle.cancel()
            channel.grace_handle = None
        channel.stop()
        self._changed()
        task = channel.task
        if task is not None and not task.done():
            # From inside the informer (GONE) this only makes its coming return final.
            task.cancel()
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            task.add_done_callback(lambda _t: self._changed())
        log.info("channel.closed", channel=channel.key)

    def _channel_gone(self, channel: Channel) -> None:
        """The resource type is not served: subscribers were told; the channel goes away."""
        # Its sessions left it without the hub (Channel's GONE): their counts go here. Rare, so
        # a pass over the identities rather than an index kept for every subscription.
        registry_key = channel.registry_key
        for usage in list(self.usage.values()):
            if registry_key in usage.channels:
                for client_id in list(usage.sessions):
                    holder = self._holders.get(client_id)
                    if holder is not None:
                        self._uncount(holder.session, registry_key)
        self._close_channel(channel)
        log.info("channel.gone", channel=channel.key)

    def _upstream_done(self, channel: Channel, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.channels.get(channel.registry_key) is not channel:
            return
        exc = task.exception()
        # An informer only returns after GONE; anything else is a bug: restart, do not go silent.
        log.error("upstream.crashed", channel=channel.key, error=repr(exc))
        loop = asyncio.get_running_loop()

        def restart() -> None:
            if self.channels.get(channel.registry_key) is channel:
                channel.restart_upstream()
                assert channel.task is not None
                channel.task.add_done_callback(lambda t: self._upstream_done(channel, t))
                self._changed()

        loop.call_later(min(30.0, 1.0 * 2 ** min(channel.upstream_restarts, 5)), restart)

    # ------------------------------------------------------------------ shutdown and stats
    def drain(self, retry_ms: int) -> list[Session]:
        """Stop taking streams; every attached session gets ``reconnect``. Returns them."""
        self.draining = True
        attached = [s for s in self.sessions.values() if s.attached]
        frame = self.frames.event("reconnect", {"retryMs": retry_ms})
        for session in attached:
            session.push(frame)
        return attached

    async def close(self) -> None:
        """Cancel every upstream and forget every session."""
        for channel in list(self.channels.values()):
            self._close_channel(channel)
        for session in list(self.sessions.values()):
            session.close()
        self.sessions.clear()
        self._holders.clear()
        self.usage.clear()
        tasks = list(self._closing)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _subscriptions_by_key(self) -> dict[str, int]:
        """Subscribers per channel key (user-scoped channels of several users add up)."""
        counts: dict[str, int] = {}
        for channel in self.channels.values():
            counts[channel.key] = counts.get(channel.key, 0) + channel.subscriber_count
        return counts

    def total(self, name: str) -> int:
        """Counter ``name`` (:data:`CHANNEL_COUNTERS` or :data:`SESSION_COUNTERS`) over every
        channel or session there has been, live or gone (what ``/metrics`` reports)."""
        live: Iterable[object] = (
            self.channels.values() if name in CHANNEL_COUNTERS else self.sessions.values()
        )
        return self._retired[name] + sum(int(getattr(item, name)) for item in live)

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.sessions),
            "upstreams": len(self.channels),
            "subscriptions": self._subscriptions_by_key(),
            "streams": sum(1 for s in self.sessions.values() if s.attached),
            "channelsOpened": self.channels_opened,
        }
