"""One client session: its frames, its bounded buffers, its stream, and resume by ``Last-Event-ID``.

Delivery (the hot path): :meth:`Session.push` writes a shared, pre-encoded frame straight to the
socket's transport when the client is keeping up (nothing pending, transport buffer below
``WRITE_HIGH_WATER``): one ``transport.write`` per event per subscriber, no task, no await. When
the client falls behind, frames queue in ``pending`` and the session's stream task (the request
handler, see ``web/stream.py``) writes everything pending in one write, then waits for the
transport to drain. Backpressure therefore comes from the transport's own write buffer.

Bounds: ``pending`` may hold ``client_buffer_bytes`` beyond what a snapshot put in it. Over the
bound, superseded updates of the same object are coalesced (the latest state wins); if that is not
enough, the channels with the most pending bytes are marked for ``resync``: their pending frames
are dropped and, once the client has drained, it gets ``resync`` + a fresh snapshot + ``synced``.

Resume: frames already written are kept in ``sent`` (also ``client_buffer_bytes`` at most) so a
client that reconnects with ``Last-Event-ID`` gets every frame after it. Channels whose frames
were trimmed from ``sent`` beyond that id cannot be replayed exactly and get a ``resync`` instead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import structlog

from watchgw.hub.frames import PING, Frame, chunk

if TYPE_CHECKING:
    from watchgw.hub.channel import Channel

log = structlog.get_logger("watchgw.session")

_PING_CHUNK = chunk(PING)


def _heartbeat_due(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


#: Above this many bytes in the transport's buffer, frames queue in the session instead.
WRITE_HIGH_WATER = 256 * 1024


class Session:
    __slots__ = (
        "__weakref__",
        "_budget",
        "_chunked",
        "_limit",
        "_on_expire",
        "_pending",
        "_pending_bytes",
        "_resnapshot",
        "_resync",
        "_sent",
        "_sent_bytes",
        "_trimmed",
        "_ttl_handle",
        "_waiter",
        "channels",
        "client_id",
        "closing",
        "coalesced",
        "identity",
        "resyncs",
        "stream_generation",
        "token",
        "transport",
    )

    def __init__(
        self,
        *,
        client_id: str,
        identity: str,
        buffer_bytes: int,
        resnapshot: Callable[[Session, str], None],
    ) -> None:
        self.client_id = client_id
        self.identity = identity
        self.token: str | None = None
        """The client's latest bearer token (bearer mode): rechecks and subscriber credentials."""
        self.channels: dict[str, Channel] = {}
        self.transport: asyncio.WriteTransport | None = None
        self.stream_generation = 0
        self.coalesced = 0
        self.resyncs = 0
        self.closing = False
        """Set by a drain: the stream ends once what is pending is written."""
        self._chunked = True
        self._limit = buffer_bytes
        self._budget = buffer_bytes
        self._pending: list[Frame] = []
        self._pending_bytes = 0
        self._sent: deque[Frame] | None = None
        """Written frames kept for replay; made at the first one (most idle clients have none)."""
        self._sent_bytes = 0
        self._trimmed: dict[str, int] = {}
        self._resync: dict[str, None] = {}
        self._resnapshot = resnapshot
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
            and not self._pending
            and t.get_write_buffer_size() < WRITE_HIGH_WATER
            and not t.is_closing()
        ):
            return t
        return None

    def push(self, frame: Frame) -> None:
        """Deliver one frame (shared with other sessions; never modified)."""
        if self._resync and frame.channel in self._resync:
            return  # superseded by the snapshot this channel is waiting for
        t = self._writable()
        if t is not None:
            t.write(frame.wire if self._chunked else frame.payload)
            self._remember_written((frame,))
            return
        self._pending.append(frame)
        self._pending_bytes += len(frame.wire)
        if self._pending_bytes > self._budget:
            self._relieve()
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
        self._remember_written(frames)

    def push_many(self, frames: Iterable[Frame]) -> None:
        """Queue a batch (a snapshot): it may exceed the buffer bound by its own size, once."""
        for frame in frames:
            self._pending.append(frame)
            self._pending_bytes += len(frame.wire)
        self._budget = max(self._budget, self._pending_bytes + self._limit)
        if self.transport is not None:
            self._wake()

    def _remember_written(self, frames: Iterable[Frame]) -> None:
        """Keep written frames for replay; frames made for this session alone (snapshots) are
        not kept (memory per client would grow with the snapshot): a resume from before one
        gets a ``resync`` of that channel instead, as for frames trimmed from the history."""
        sent = self._sent
        trimmed = self._trimmed
        size = 0
        for frame in frames:
            if frame.snapshot:
                trimmed[frame.channel] = frame.id
                continue
            if sent is None:
                sent = self._sent = deque()
            sent.append(frame)
            size += len(frame.wire)
        self._sent_bytes += size
        if self._sent_bytes > self._limit:
            self._trim_sent()

    def _trim_sent(self) -> None:
        sent = self._sent
        assert sent is not None
        trimmed = self._trimmed
        while self._sent_bytes > self._limit and sent:
            old = sent.popleft()
            self._sent_bytes -= len(old.wire)
            if old.channel:
                trimmed[old.channel] = old.id

    # ------------------------------------------------------------------ slow clients
    def _relieve(self) -> None:
        """Pending output is over budget: coalesce, then resync the heaviest channels."""
        before = len(self._pending)
        latest: dict[tuple[str, str], int] = {}
        frames = list(self._pending)
        for index, frame in enumerate(frames):
            if frame.key:
                latest[(frame.channel, frame.key)] = index
        kept = [
            frame
            for index, frame in enumerate(frames)
            if not frame.key or latest[(frame.channel, frame.key)] == index
        ]
        self.coalesced += before - len(kept)
        self._pending = kept
        self._pending_bytes = sum(len(f.wire) for f in kept)
        if self._pending_bytes <= self._limit:
            self._budget = self._limit
            return
        per_channel: dict[str, int] = {}
        for frame in kept:
            if frame.channel:
                per_channel[frame.channel] = per_channel.get(frame.channel, 0) + len(frame.wire)
        for channel, _size in sorted(per_channel.items(), key=lambda item: -item[1]):
            if self._pending_bytes <= self._limit:
                break
            self.mark_resync(channel)
        self._budget = max(self._limit, self._pending_bytes)
        log.info(
            "client.overflow",
            client_id=self.client_id,
            coalesced=before - len(kept),
            resync=list(self._resync),
        )

    def mark_resync(self, channel: str) -> None:
        """Drop the channel's pending frames; it gets ``resync`` + snapshot once drained."""
        if channel not in self.channels:
            return
        self._resync[channel] = None
        self.resyncs += 1
        self._pending = [f for f in self._pending if f.channel != channel]
        self._pending_bytes = sum(len(f.wire) for f in self._pending)
        if self.transport is not None:
            self._wake()

    def forget_channel(self, channel: str) -> None:
        """The session left the channel: nothing more of it may be delivered."""
        self._resync.pop(channel, None)

    # ------------------------------------------------------------------ streams
    @property
    def attached(self) -> bool:
        return self.transport is not None

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def attach(self, transport: asyncio.WriteTransport, *, chunked: bool, last_event_id: int | None) -> int:
        """A stream takes over the session; returns its generation. Replays after ``last_event_id``."""
        self.cancel_expiry()
        self.stream_generation += 1
        if last_event_id is not None:
            self._replay_after(last_event_id)
        self.transport = transport
        self._chunked = chunked
        self._wake()
        return self.stream_generation

    def detach(self, generation: int) -> bool:
        """The stream of ``generation`` ended; False when a newer stream already took over."""
        if generation != self.stream_generation:
            return False
        self.transport = None
        self._wake()
        return True

    def _replay_after(self, last_id: int) -> None:
        """Requeue what the client missed: frames after ``last_id`` go before anything pending."""
        sent = self._sent or deque()
        replay = [f for f in sent if f.id > last_id]
        lost = {channel for channel, trimmed_id in self._trimmed.items() if trimmed_id > last_id}
        if lost:
            replay = [f for f in replay if f.channel not in lost]
        self._pending[0:0] = replay
        self._pending_bytes += sum(len(f.wire) for f in replay)
        # What is replayed is no longer "sent": it is written again from pending.
        self._sent = deque(f for f in sent if f.id <= last_id)
        self._sent_bytes = sum(len(f.wire) for f in self._sent)
        self._budget = max(self._budget, self._pending_bytes + self._limit)
        for channel in lost:
            if channel in self.channels:
                self.mark_resync(channel)

    def reset(self) -> None:
        """A stream without ``Last-Event-ID``: the client starts over, nothing is replayed."""
        self._sent = None
        self._sent_bytes = 0
        self._trimmed.clear()
        self._pending.clear()
        self._pending_bytes = 0
        self._resync.clear()
        self._budget = self._limit

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def end_stream(self) -> None:
        """Finish the current stream after writing what is pending (server drain)."""
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
        """Write what is pending until this stream is detached or replaced; run by the stream handler.

        ``drain`` completes when the transport's buffer is below its low-water mark. A client that
        accepts nothing for ``stall_timeout_s`` is disconnected (its session stays, so it can
        resume). After ``heartbeat_s`` of silence a ``: ping`` comment is written; that also
        notices a vanished peer where the server does not cancel handlers on disconnect.
        """
        while self.stream_generation == generation and self.transport is not None:
            if not self._pending and not self._resync:
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
            if not self._pending:
                # Drained: now the channels that overflowed get their fresh snapshot.
                channel = next(iter(self._resync))
                del self._resync[channel]
                self._resnapshot(self, channel)
                continue
            self._write_pending(transport)

    def _write_pending(self, transport: asyncio.WriteTransport) -> None:
        """Everything pending in one write. A method of its own so that no local of the pump
        keeps the written frames (a whole snapshot) alive while it waits."""
        frames = list(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if self._chunked:
            transport.write(b"".join([f.wire for f in frames]))
        else:
            transport.write(b"".join([f.payload for f in frames]))
        self._remember_written(frames)

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
        self.cancel_expiry()
        self._pending.clear()
        self._sent = None
        self._pending_bytes = self._sent_bytes = 0
        self.transport = None
        self.stream_generation += 1
        self._wake()
