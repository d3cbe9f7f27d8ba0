"""One client session: the hot-path writes, its stream's pump, and its lifetime.

Delivery (the hot path): :meth:`Session.push` writes a shared, pre-encoded frame straight to the
socket's transport when the client is keeping up (nothing queued, transport buffer below
``WRITE_HIGH_WATER``): one ``transport.write`` per event per subscriber, no task, no await. When
the client falls behind, frames queue in its :class:`~watchgw.hub.outbox.Outbox` (coalesced as they
arrive) and the session's stream task (the request handler runs :meth:`Session.pump`) writes
everything queued in one write, then waits for the transport to drain. Backpressure therefore
comes from the transport's own write buffer.

Bounds: the outbox holds at most ``client_buffer_bytes`` (plus, after a resume, the frames it
replays, which the resume log already held). Over the bound, the channels with the most queued
bytes are marked for ``resync``: their frames are dropped and, once the client has drained, it gets
``resync`` + a fresh snapshot + ``synced``.

Snapshots are written in parts, never queued whole. A channel that owes the session a snapshot
(a subscribe, a resync) is only *noted* (:meth:`Session.request_snapshot`; its live frames are
dropped meanwhile, the snapshot will hold their state): nothing is built while no stream is
attached, so a session whose stream is gone costs a few bytes per channel, not a snapshot. Once a
stream is attached and the outbox is empty, the pump asks the channel for a
:class:`SnapshotWriter` and takes one part of at most :data:`SNAPSHOT_PART_BYTES` from it each time
the socket has drained, writing it at once. From the first part on, the channel's live frames
flow to the session again, interleaved with the parts; the writer reads each object's *current*
state when it writes it, so whichever frame of an object comes last carries its latest state, and
the ``synced`` at the end still means complete (see ``hub/snapshot.py``).

Resume: written frames go to the session's :class:`~watchgw.hub.replay.ReplayLog`, so a client that
reconnects with ``Last-Event-ID`` gets every frame after it, or a ``resync`` (``unsubscribed``)
for a held (left) channel whose frames the log no longer has.

A session knows the channels it holds only through :class:`Subscription`, so this module does not
import the channel module (which imports this one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import structlog

from watchgw.hub.frames import PING, Frame, chunk
from watchgw.hub.outbox import Outbox
from watchgw.hub.replay import ReplayLog
from watchgw.kube.types import WatchTarget

log = structlog.get_logger("watchgw.session")

_PING_CHUNK = chunk(PING)

#: Above this many bytes in the transport's buffer, frames queue in the session instead.
WRITE_HIGH_WATER = 256 * 1024


class Subscription(Protocol):
    """What a session holds of a channel it subscribed to (``hub.channel.Channel``)."""

    @property
    def key(self) -> str: ...

    @property
    def registry_key(self) -> str:
        """The key plus, for a user-scoped channel, its user (see ``WatchHub.channels``)."""

    @property
    def target(self) -> WatchTarget: ...

    def resnapshot(self, session: Session, request: SnapshotRequest) -> None:
        """Start the snapshot ``request`` for this session (its stream is attached and drained):
        :meth:`Session.begin_snapshot` with a writer, or, while the channel is not synced, put it
        back to wait for the first sync."""

    def leave(self, session: Session, reason: str, *, parking: bool = False) -> bool:
        """Stop delivering to ``session`` (which calls :meth:`Session.left` for it)."""


class SnapshotWriter(Protocol):
    """A snapshot being written to one session in parts (``hub.snapshot.SnapshotWriter``)."""

    def part(self, room: int) -> tuple[list[Frame], bool]:
        """The next frames, about ``room`` bytes (at least one frame), and whether that was all."""


#: ``(resync reason, deletions since)`` of a snapshot a channel owes a session: the reason of the
#: ``resync`` frame that comes first (None: a plain snapshot, for a client that holds nothing of the
#: channel), and the deletion number after which ``DELETED`` frames of objects deleted since follow
#: the objects (None: none; for a client that may still hold objects, see ``Channel.join``).
SnapshotRequest = tuple[str | None, int | None]

#: Bytes of snapshot frames built and written at once, each time the socket has drained.
SNAPSHOT_PART_BYTES = 256 * 1024


def _heartbeat_due(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class Session:
    __slots__ = (
        "__weakref__",
        "_budget",
        "_chunked",
        "_limit",
        "_log",
        "_on_expire",
        "_outbox",
        "_resync",
        "_ttl_handle",
        "_waiter",
        "_writers",
        "channels",
        "client_id",
        "closing",
        "coalesced_before",
        "deletions_seen",
        "first_id",
        "identity",
        "released",
        "removed",
        "resyncs",
        "stream_generation",
        "token",
        "transport",
    )

    def __init__(self, *, client_id: str, identity: str, buffer_bytes: int) -> None:
        self.client_id = client_id
        self.identity = identity
        self.token: str | None = None
        """The client's latest bearer token (bearer mode): rechecks and subscriber credentials."""
        self.channels: dict[str, Subscription] = {}
        self.transport: asyncio.WriteTransport | None = None
        self.stream_generation = 0
        self.resyncs = 0
        self.coalesced_before = 0
        """Coalesced updates of outboxes already dropped (an outbox lives while frames queue)."""
        self.closing = False
        """Set by a drain: the stream ends once what is queued is written."""
        self.released: dict[str, str] = {}
        """Channels held when the client last started over (a stream without ``Last-Event-ID``):
        it may still hold their objects, so subscribing again gets deletions of what is gone. Channel
        key -> registry key."""
        self.deletions_seen: dict[str, int] = {}
        """Channel key -> the channel's deletion count when the session first joined it (kept
        while parked): the deletions a client that never clears its state may have missed."""
        self.first_id = 0
        """No frame of this session's stream has an older id (set by the hub when it starts)."""
        self.removed = False
        """The hub has ended this session: no stream may attach to it any more."""
        self._chunked = True
        self._limit = buffer_bytes
        self._budget = buffer_bytes
        self._outbox: Outbox | None = None
        """Made at the first frame that must queue (most idle clients never need one)."""
        self._log: ReplayLog | None = None
        """Made at the first frame written."""
        self._resync: dict[str, SnapshotRequest] = {}
        """Channels that owe this session a snapshot not begun yet: their frames are dropped (the
        snapshot will carry their state); begun once a stream is attached and the outbox is empty."""
        self._writers: dict[str, SnapshotWriter] = {}
        """Snapshots being written in parts (at most one per channel); live frames flow meanwhile."""
        self._waiter: asyncio.Future[bool] | None = None
        """What the pump awaits while idle; a future made only then (lighter than an Event)."""
        self._ttl_handle: asyncio.TimerHandle | None = None
        self._on_expire: Callable[[], None] | None = None

    # ------------------------------------------------------------------ hot path
    def _writable(self) -> asyncio.WriteTransport | None:
        """The transport, when a frame can go straight to it: nothing queued before it, the
        socket keeping up (its buffer below ``WRITE_HIGH_WATER``), the connection open."""
        t = self.transport
        if (
            t is not None
            and not self._outbox
            and t.get_write_buffer_size() < WRITE_HIGH_WATER
            and not t.is_closing()
        ):
            return t
        return None

    def push(self, frame: Frame) -> None:
        """Deliver one frame (shared with other sessions; never modified)."""
        if self._resync and frame.watch and frame.channel in self._resync:
            return  # superseded by the snapshot this channel is waiting for (not watch-error)
        t = self._writable()
        if t is not None:
            t.write(frame.wire if self._chunked else frame.payload)
            self._remember((frame,))
            return
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = Outbox()
        outbox.append(frame)
        if outbox.bytes > self._budget:
            self._relieve(outbox)
        if self.transport is not None:
            self._wake()

    def push_batch(self, frames: list[Frame], wire: bytes) -> None:
        """Several frames of one channel, ``wire`` their joined bytes (shared): one write."""
        if self._resync and frames[0].channel in self._resync:
            return
        t = self._writable()
        if t is None:
            for frame in frames:
                self.push(frame)
            return
        t.write(wire if self._chunked else b"".join([f.payload for f in frames]))
        self._remember(frames)

    def push_many(self, frames: Iterable[Frame]) -> None:
        """Queue a batch made for this session (a catch-up). It counts against the buffer like
        any frame: a batch over the bound gets its channel resynced (a snapshot, in parts)."""
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = Outbox()
        for frame in frames:
            outbox.append(frame)
        if outbox.bytes > self._budget:
            self._relieve(outbox)
        if self.transport is not None:
            self._wake()

    def request_snapshot(self, channel: str, request: SnapshotRequest) -> None:
        """``channel`` owes this session a snapshot: noted only (nothing is built, see the module
        docstring); a snapshot of it being written is abandoned for the new one."""
        if channel not in self.channels:
            return
        self._writers.pop(channel, None)
        pending = self._resync.get(channel)
        if pending is not None:
            # One snapshot serves both: a resync still owed is kept, and the older deletions.
            reason = request[0] if request[0] is not None else pending[0]
            since = [n for n in (request[1], pending[1]) if n is not None]
            request = (reason, min(since) if since else None)
        self._resync[channel] = request
        if self.transport is not None:
            self._wake()

    def begin_snapshot(self, channel: str, writer: SnapshotWriter) -> None:
        """The channel's snapshot starts (called from ``Subscription.resnapshot``)."""
        self._resync.pop(channel, None)
        self._writers[channel] = writer

    def _remember(self, frames: Iterable[Frame]) -> None:
        replay_log = self._log
        if replay_log is None:
            replay_log = self._log = ReplayLog(self._limit)
        replay_log.remember(frames, self.channels)

    # ------------------------------------------------------------------ slow clients
    def _relieve(self, outbox: Outbox) -> None:
        """Queued output is over budget (superseded updates are already coalesced): resync the
        channels with the most bytes queued until it fits."""
        resynced = []
        while outbox.bytes > self._limit:
            channel = outbox.heaviest_channel(among=self.channels)
            if channel is None:
                break
            self.mark_resync(channel)
            resynced.append(channel)
        self._budget = max(self._limit, outbox.bytes)
        log.info("client.overflow", client_id=self.client_id, coalesced=outbox.coalesced, resync=resynced)

    def mark_resync(self, channel: str, reason: str = "overflow") -> None:
        """Drop the channel's queued frames; it gets ``resync`` + snapshot once drained."""
        if channel not in self.channels:
            return
        self._writers.pop(channel, None)
        self._resync[channel] = (reason, self.deletions_seen.get(channel, 0))
        self.resyncs += 1
        if self._outbox is not None:
            self._outbox.drop_channel(channel)
        if self.transport is not None:
            self._wake()

    def joined(self, channel: Subscription) -> None:
        self.channels[channel.key] = channel
        self.released.pop(channel.key, None)
        if self._log is not None:
            self._log.rejoined(channel.key)

    def left(self, channel: str, reason: str, *, parking: bool = False) -> None:
        """The session left the channel: nothing more of it may be delivered. ``parking``: the
        client started over and may come back for it (see ``Channel.park``)."""
        self.channels.pop(channel, None)
        if not parking:
            self.deletions_seen.pop(channel, None)
        self._resync.pop(channel, None)
        self._writers.pop(channel, None)
        if self._log is None:
            self._log = ReplayLog(self._limit)
        self._log.left(channel, reason)

    # ------------------------------------------------------------------ streams
    @property
    def attached(self) -> bool:
        return self.transport is not None

    @property
    def pending_bytes(self) -> int:
        return self._outbox.bytes if self._outbox is not None else 0

    @property
    def coalesced(self) -> int:
        return self.coalesced_before + (self._outbox.coalesced if self._outbox is not None else 0)

    def can_resume(self, last_event_id: int) -> bool:
        """Whether a stream resuming after ``last_event_id`` can be served exactly."""
        return self._log is None or self._log.can_resume(last_event_id)

    def attach(
        self, transport: asyncio.WriteTransport, *, chunked: bool, last_event_id: int | None
    ) -> tuple[int, dict[str, str]]:
        """A stream takes over the session; returns its generation and, for a resume, the
        channels the session left whose ``unsubscribed`` the client may have missed (with the
        reason), for the hub to tell it again. Replays what came after ``last_event_id``."""
        assert not self.removed, "a stream attached to an ended session"
        self.cancel_expiry()
        self.stream_generation += 1
        ended: dict[str, str] = {}
        if last_event_id is not None and self._log is not None:
            replay, resync, ended = self._log.after(last_event_id)
            if replay:
                if self._outbox is None:
                    self._outbox = Outbox()
                self._outbox.prepend(replay)
                self._budget = max(self._budget, self._outbox.bytes + self._limit)
            for channel in resync:
                self.mark_resync(channel)
        self.transport = transport
        self._chunked = chunked
        self._wake()
        return self.stream_generation, ended

    def detach(self, generation: int) -> bool:
        """The stream of ``generation`` ended; False when a newer stream already took over."""
        if generation != self.stream_generation:
            return False
        self.transport = None
        self._wake()
        return True

    def reset(self) -> None:
        """A stream without ``Last-Event-ID``: the client starts over, nothing is replayed."""
        self._log = None
        if self._outbox is not None:
            self._outbox.clear()
        self._resync.clear()
        self._writers.clear()
        self._budget = self._limit

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def connection_lost(self) -> None:
        """The stream's connection closed: the pump wakes, sees it and ends."""
        self._wake()

    def end_stream(self) -> None:
        """Finish the current stream after writing what is queued (server drain)."""
        self.closing = True
        self._wake()

    async def pump(
        self,
        generation: int,
        *,
        drain: Callable[[], Awaitable[None]],
        stall_timeout_s: float,
        heartbeat_s: float,
    ) -> None:
        """Write what is queued until this stream is detached or replaced; run by the stream handler.

        ``drain`` completes when the transport's buffer is below its low-water mark. A client that
        accepts nothing for ``stall_timeout_s`` is disconnected (its session stays, so it can
        resume). After ``heartbeat_s`` of silence a ``: ping`` comment is written; that also
        notices a vanished peer where the server does not cancel handlers on disconnect.
        """
        while self.stream_generation == generation and self.transport is not None:
            if self.transport.is_closing():
                return  # the client is gone (the connection wakes the pump when it closes)
            if not self._outbox and not self._resync and not self._writers:
                if self.closing:
                    return
                self._budget = self._limit
                loop = asyncio.get_running_loop()
                waiter = self._waiter = loop.create_future()
                timer = loop.call_later(heartbeat_s, _heartbeat_due, waiter)
                try:
                    beat = await waiter
                finally:
                    timer.cancel()
                    if self._waiter is waiter:  # a newer stream's pump may have its own by now
                        self._waiter = None
                if beat:
                    # Quiet for heartbeat_s: a comment keeps proxies from closing the stream, and
                    # the write shows whether the peer is still there.
                    transport = self.transport
                    if transport is None or transport.is_closing():
                        return
                    transport.write(_PING_CHUNK if self._chunked else PING)
                continue
            transport = self.transport
            if transport.is_closing():
                return
            if transport.get_write_buffer_size() >= WRITE_HIGH_WATER:
                # The client is behind: keep frames here, where they can be coalesced or
                # dropped for a resync, until the transport drains.
                try:
                    async with asyncio.timeout(stall_timeout_s):
                        await drain()
                except TimeoutError:
                    log.info("client.stalled", client_id=self.client_id, timeout_s=stall_timeout_s)
                    transport.abort()
                    return
                continue
            if not self._outbox:
                # Drained: the next part of a snapshot being written, or the next snapshot owed.
                if self._writers:
                    self._next_part()
                else:
                    key = next(iter(self._resync))
                    request = self._resync.pop(key)
                    channel = self.channels.get(key)
                    if channel is not None:
                        channel.resnapshot(self, request)
                    continue
                if not self._outbox:
                    continue
            self._write_queued(transport)

    def _next_part(self) -> None:
        """Queue the next part of the oldest snapshot being written (the pump writes it at once)."""
        key, writer = next(iter(self._writers.items()))
        frames, done = writer.part(min(self._limit, SNAPSHOT_PART_BYTES))
        if done:
            del self._writers[key]
        if frames:
            outbox = self._outbox
            if outbox is None:
                outbox = self._outbox = Outbox()
            for frame in frames:
                outbox.append(frame)

    def _write_queued(self, transport: asyncio.WriteTransport) -> None:
        """Everything queued in one write. A method of its own so that no local of the pump
        keeps the written frames (a whole snapshot) alive while it waits."""
        outbox = self._outbox
        assert outbox is not None
        frames = outbox.take()
        # Drained: most clients queue only a snapshot, once; an idle one keeps no outbox.
        self.coalesced_before += outbox.coalesced
        self._outbox = None
        if self._chunked:
            transport.write(b"".join([f.wire for f in frames]))
        else:
            transport.write(b"".join([f.payload for f in frames]))
        self._remember(frames)

    # ------------------------------------------------------------------ lifetime
    def schedule_expiry(self, ttl_s: float, on_expire: Callable[[], None]) -> None:
        self.cancel_expiry()
        self._on_expire = on_expire
        self._ttl_handle = asyncio.get_running_loop().call_later(ttl_s, self._expire)

    def cancel_expiry(self) -> None:
        if self._ttl_handle is not None:
            self._ttl_handle.cancel()
            self._ttl_handle = None

    def _expire(self) -> None:
        self._ttl_handle = None
        if self._on_expire is not None and self.transport is None:
            self._on_expire()

    def close(self) -> None:
        """Release buffers; the hub has already removed the session from its channels."""
        self.removed = True
        self.cancel_expiry()
        self._outbox = None
        self._log = None
        self._resync.clear()
        self._writers.clear()
        self._on_expire = None
        self.transport = None
        self.stream_generation += 1
        self._wake()
