"""Session delivery: fast path, backlog, coalescing, resync on overflow, replay after Last-Event-ID."""

from __future__ import annotations

import asyncio
from typing import Any

from watchgw.hub.frames import Frame, FrameFactory
from watchgw.hub.replay import MAX_NOTES
from watchgw.hub.session import WRITE_HIGH_WATER, Session, SnapshotRequest
from watchgw.kube.types import ObjectKey, WatchTarget


class FakeTransport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = False
        self.aborted = False
        self.wrote = asyncio.Event()

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))
        self.wrote.set()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True
        self.closing = True


class FakeChannel:
    """Stands in for hub.channel.Channel in ``session.channels``: membership, and the resnapshot
    it is asked for (a ``resync`` frame, as the channel would start one)."""

    def __init__(self, key: str, resnapshots: Resnapshots) -> None:
        self.key = key
        self.target = WatchTarget("api/v1/secrets")
        self._resnapshots = resnapshots

    def resnapshot(self, session: Session, request: SnapshotRequest) -> None:
        self._resnapshots.append(self.key)
        self._resnapshots.happened.set()
        session.push(FRAMES.event("resync", {"channel": self.key, "reason": "overflow"}, channel=self.key))

    def leave(self, session: Session, reason: str, *, parking: bool = False) -> bool:
        session.left(self.key, reason, parking=parking)
        return True


FRAMES = FrameFactory(start_id=100)


def watch_frame(channel: str, name: str, size: int = 100) -> Frame:
    return FRAMES.watch(
        channel_json=b'"%s"' % channel.encode(),
        channel=channel,
        type="MODIFIED",
        key=ObjectKey(f"default/{name}"),
        object_json=b'{"metadata":{"name":"%s"},"pad":"%s"}' % (name.encode(), b"x" * size),
        resource_version="1",
    )


class Resnapshots(list[str]):
    """The channels the session asked to resnapshot, with an event to await the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.happened = asyncio.Event()


def make_session(buffer_bytes: int = 10_000) -> tuple[Session, Resnapshots]:
    resnapshots = Resnapshots()
    session = Session(client_id="c1", identity="anonymous", buffer_bytes=buffer_bytes)
    session.joined(FakeChannel("a", resnapshots))
    session.joined(FakeChannel("b", resnapshots))
    return session, resnapshots


def queued(session: Session) -> list[Frame]:
    """The frames waiting for the socket, in order (without taking them)."""
    outbox = session._outbox
    if outbox is None:
        return []
    frames = outbox.take()
    for frame in frames:
        outbox.append(frame)
    return frames


def replayable(session: Session) -> list[Frame]:
    return list(session._log._frames or ()) if session._log is not None else []


def attach(session: Session, transport: FakeTransport, last_event_id: int | None = None) -> int:
    generation, _ended = session.attach(transport, chunked=True, last_event_id=last_event_id)
    return generation


def text(transport: FakeTransport) -> bytes:
    return b"".join(transport.written)


async def test_keeping_up_writes_straight_to_the_transport() -> None:
    session, _ = make_session()
    transport = FakeTransport()
    attach(session, transport)
    frame = watch_frame("a", "x")
    session.push(frame)
    assert transport.written == [frame.wire]
    assert session.pending_bytes == 0


async def test_behind_queues_then_coalesces_the_same_object() -> None:
    session, _ = make_session(buffer_bytes=2_000)
    transport = FakeTransport()
    transport.buffered = WRITE_HIGH_WATER  # the socket is not draining
    attach(session, transport)
    for version in range(40):
        session.push(watch_frame("a", "same", size=10 + version))
    assert transport.written == []
    assert session.coalesced == 39
    pending = queued(session)
    assert [f.key for f in pending] == ["default/same"], "one frame per object while queued"
    assert session._resync == {}, "coalescing was enough: no resync"
    assert b'"pad":"' + b"x" * 49 + b'"' in pending[-1].wire, "the latest state wins"


class CountingFrame(Frame):
    """A frame that counts how often its object key is looked at (the work of coalescing)."""

    __slots__ = ("_key",)
    looks = 0

    @property  # type: ignore[override]
    def key(self) -> ObjectKey | None:
        CountingFrame.looks += 1
        return self._key

    @key.setter
    def key(self, value: ObjectKey | None) -> None:
        self._key = value


async def test_coalescing_costs_constant_work_per_event_at_the_bound() -> None:
    """A queue held just under its bound used to be rescanned for every event (about 100x the
    CPU of a keeping-up client): coalescing must look at a constant number of frames per push."""
    objects = 100
    session, _ = make_session(buffer_bytes=objects * 240)
    transport = FakeTransport()
    transport.buffered = WRITE_HIGH_WATER
    attach(session, transport)
    CountingFrame.looks = 0
    pushes = 5_000
    for i in range(pushes):
        frame = watch_frame("a", f"obj-{i % objects}")
        session.push(CountingFrame(frame.id, frame.wire, frame.channel, frame.key))
    assert len(queued(session)) == objects, "the queue stays at its bound: one frame per object"
    assert session._resync == {}
    assert CountingFrame.looks <= 4 * pushes, f"{CountingFrame.looks} key lookups for {pushes} pushes"


async def test_overflow_of_distinct_objects_marks_resync_and_drops_that_channel() -> None:
    session, resnapshots = make_session(buffer_bytes=3_000)
    transport = FakeTransport()
    transport.buffered = WRITE_HIGH_WATER
    attach(session, transport)
    session.push(watch_frame("b", "only-b"))
    for i in range(60):
        session.push(watch_frame("a", f"obj-{i}"))
    assert "a" in session._resync
    assert all(f.channel != "a" for f in queued(session))
    assert session.pending_bytes <= 3_000
    # Frames of a channel waiting for its snapshot are not queued again.
    session.push(watch_frame("a", "late"))
    assert all(f.channel != "a" for f in queued(session))

    # The client drains: pending is written in one write, then the resync snapshot follows.
    drained = asyncio.Event()

    async def drain() -> None:
        await drained.wait()

    generation = session.stream_generation
    pump = asyncio.create_task(session.pump(generation, drain=drain, stall_timeout_s=5, heartbeat_s=5))
    await asyncio.sleep(0)  # one loop turn: the pump reaches its drain
    assert resnapshots == [], "no snapshot while the transport is still full"
    transport.buffered = 0
    drained.set()
    async with asyncio.timeout(5):
        await resnapshots.happened.wait()
    assert resnapshots == ["a"]
    assert b"only-b" in text(transport)
    session.detach(generation)
    await pump


async def test_stalled_client_is_aborted_after_the_timeout() -> None:
    session, _ = make_session()
    transport = FakeTransport()
    generation = attach(session, transport)
    transport.buffered = WRITE_HIGH_WATER
    session.push(watch_frame("a", "x"))

    async def never_drains() -> None:
        await asyncio.Event().wait()

    await session.pump(generation, drain=never_drains, stall_timeout_s=0.05, heartbeat_s=5)
    assert transport.aborted


async def test_replay_after_last_event_id() -> None:
    session, _ = make_session(buffer_bytes=100_000)
    first = FakeTransport()
    generation = attach(session, first)
    frames = [watch_frame("a", f"o{i}") for i in range(5)]
    for frame in frames:
        session.push(frame)
    session.detach(generation)
    missed = watch_frame("b", "while-away")
    session.push(missed)  # queued: no stream

    second = FakeTransport()
    attach(session, second, frames[2].id)
    wires = queued(session)
    assert [f.id for f in wires] == [frames[3].id, frames[4].id, missed.id]


async def test_replay_beyond_trimmed_history_resyncs_only_that_channel() -> None:
    session, _ = make_session(buffer_bytes=1_500)
    transport = FakeTransport()
    generation = attach(session, transport)
    start = watch_frame("b", "b-old")
    session.push(start)
    for i in range(30):
        session.push(watch_frame("a", f"o{i}"))  # pushes b-old and early a frames out of history
    last_b = watch_frame("b", "b-new")
    session.push(last_b)
    session.detach(generation)
    attach(session, FakeTransport(), start.id)
    assert "a" in session._resync or "b" in session._resync
    assert all(f.channel not in session._resync for f in queued(session))


async def test_a_batch_is_one_write_of_shared_bytes() -> None:
    session, _ = make_session(buffer_bytes=100_000)
    transport = FakeTransport()
    attach(session, transport)
    frames = [watch_frame("a", f"o{i}") for i in range(20)]
    wire = b"".join(f.wire for f in frames)
    session.push_batch(frames, wire)
    assert len(transport.written) == 1
    assert transport.written[0] == wire
    assert [f.id for f in replayable(session)] == [f.id for f in frames], "all kept for replay, in order"


async def test_snapshot_frames_are_not_kept_for_replay() -> None:
    session, _ = make_session(buffer_bytes=100_000)
    transport = FakeTransport()
    generation = attach(session, transport)
    snapshot = [
        FRAMES.watch(
            channel_json=b'"a"',
            channel="a",
            type="ADDED",
            key=ObjectKey(f"default/s{i}"),
            object_json=b"{}",
            resource_version="1",
            snapshot=True,
        )
        for i in range(10)
    ]
    session.push_many(snapshot)

    async def drain() -> None:
        return None

    pump = asyncio.create_task(session.pump(generation, drain=drain, stall_timeout_s=5, heartbeat_s=5))
    async with asyncio.timeout(5):
        await transport.wrote.wait()
    assert b"".join(transport.written) == b"".join(f.wire for f in snapshot)
    assert not replayable(session), "per-client snapshot frames do not stay in memory"
    session.detach(generation)
    await pump
    # A resume from the middle of the snapshot cannot replay it: the channel is resynced.
    attach(session, FakeTransport(), snapshot[4].id)
    assert "a" in session._resync


async def test_notes_of_channels_left_are_bounded_and_old_resumes_start_over() -> None:
    """A client that subscribes to and leaves thousands of channels keeps a bounded amount of
    bookkeeping; a resume from before a note was dropped is refused rather than inexact."""
    session, resnapshots = make_session(buffer_bytes=100_000)
    transport = FakeTransport()
    generation = attach(session, transport)
    first = watch_frame("a", "first")
    session.push(first)
    for i in range(2_000):
        channel = FakeChannel(f"ch-{i}", resnapshots)
        session.joined(channel)
        snapshot = FRAMES.event("synced", {"channel": channel.key}, channel=channel.key, snapshot=True)
        session.push(snapshot)  # written, not kept: a note that this channel cannot be replayed
        channel.leave(session, "client")
        session.push(FRAMES.event("unsubscribed", {"channel": channel.key}, channel=channel.key))
    log = session._log
    assert log is not None
    assert len(log._lost) <= MAX_NOTES + len(session.channels)
    assert len(log._left) <= MAX_NOTES
    session.detach(generation)
    assert not session.can_resume(first.id), "notes from then are gone: the client starts over"
    assert session.can_resume(transport_last_id(transport))


def transport_last_id(transport: FakeTransport) -> int:
    last = text(transport).rsplit(b"id: ", 1)[1]
    return int(last.split(b"\n", 1)[0])
