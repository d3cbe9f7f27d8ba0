"""A channel: one upstream informer, its subscribers and its recent history.

The channel is the informer's listener. Each upstream event becomes one frame, built once and
pushed to every live subscriber; the frame also goes into a bounded history so a subscriber that
arrives with a ``resourceVersion`` can catch up without a snapshot.

Positions. The ``resourceVersion`` on a channel's frames is a position a client can hand back to
``subscribe`` (here or on another replica watching the same control plane) and converge exactly.
A label ``V`` promises: the client's objects are the control plane's at ``V``, except objects that
changed after ``V`` (whose changes a catch-up from ``V`` sends again). So:

- a watch event or a bookmark is labelled with its own version (never lower than the label before);
- a relist's difference is several events of which only the last leaves a consistent state: the
  events before it are labelled with the version before the relist, the last with the LIST's;
- snapshot frames carry an empty version: the state is complete only at the ``synced`` after them.

A catch-up from ``V`` replays every frame whose group ends at or after ``V`` (the group of a
watch event is itself; of a relist event, the whole relist). Replaying from the first event at
``V`` rather than after it is what makes several events sharing a version safe, whatever shares it:
events carry whole objects, so applying one again changes nothing.

A position strictly inside one of this channel's relists (``P < V < L``, which only a client of
another replica can hold) cannot be caught up: the relist's difference does not show objects that
were created and deleted between ``P`` and ``L``, and the client may hold one. Such a client gets
``resync`` + snapshot, as does one whose position is older than the history.

Snapshots are written in parts (``hub/snapshot.py``: built once per version of the objects and
shared by the sessions that need them), one part each time the session's socket
has drained, never built whole: a session queues at most ``client_buffer_bytes`` whatever the size
of the channels it holds. The writer takes the channel's object keys when it starts and, for each,
writes the object's state *at the time the part is written* (an object deleted meanwhile is
skipped). From its start, the session receives the channel's live frames again, interleaved with
the parts. So, for every object, the last frame the client gets carries its latest state: a change
before the object's part is in the part (the live frame came earlier), a change after it comes as a
live frame after it, an object created after the start arrives live only, a deletion after the
start arrives live (its part, if later, is skipped). At ``synced`` (built after the last part) the
client therefore holds exactly the channel's objects. Live frames between ``subscribed``/``resync``
and ``synced`` carry their positions, but a position is one to resume from only once the channel is
synced (PROTOCOL.md section 4; both of watchgw's clients take positions from ``synced`` on).

Bounds: :attr:`Channel.history` keeps at most ``channel_history`` frames and
``channel_history_bytes`` bytes, :attr:`Channel.tombstones` as many deletions and as many bytes of
their objects.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Protocol

import structlog

from watchgw.hub.credential import SubscriberCredential
from watchgw.hub.frames import Frame, FrameFactory, dumps
from watchgw.hub.session import Session, SnapshotRequest
from watchgw.hub.snapshot import SHARED_SNAPSHOT_TTL_S, SharedSnapshot, SnapshotWriter
from watchgw.kube.types import (
    InformerPhase,
    InformerState,
    ObjectKey,
    WatchEvent,
    WatchTarget,
)

log = structlog.get_logger("watchgw.channel")


class Upstream(Protocol):
    """What a channel needs of its informer (``kube.informer.Informer`` in production)."""

    @property
    def objects(self) -> dict[ObjectKey, WatchEvent]: ...

    @property
    def resource_version(self) -> str: ...

    async def run(self) -> None: ...

    def restart_watch(self) -> None:
        """End the current watch and resume it from the latest resourceVersion (no LIST)."""


class UpstreamFactory(Protocol):
    def __call__(self, target: WatchTarget, listener: Channel) -> Upstream: ...


class Channel:
    def __init__(
        self,
        *,
        key: str,
        target: WatchTarget,
        frames: FrameFactory,
        history_limit: int,
        history_bytes: int = 8 * 1024 * 1024,
        upstream_factory: UpstreamFactory,
        on_gone: Callable[[Channel], None],
        registry_key: str | None = None,
        watch_error_after_s: float = 0.0,
    ) -> None:
        self.key = key
        """The key clients see in frames."""
        self.registry_key = registry_key if registry_key is not None else key
        """The hub's key: for a user-scoped channel the key plus its user."""
        self.target = target
        """What the upstream watches (a project default namespace already applied)."""
        self._watch_error_after_s = watch_error_after_s
        self._failing: InformerState | None = None
        """The latest failure of the current streak (None while the upstream is healthy)."""
        self._report_handle: asyncio.TimerHandle | None = None
        self.key_json = dumps(key)
        self._frames = frames
        self._upstream_factory = upstream_factory
        self._on_gone = on_gone
        self.upstream: Upstream = upstream_factory(target, self)
        self.subscribers: dict[Session, None] = {}
        """Sessions that receive every event as it happens."""
        self.waiting: dict[Session, bool] = {}
        """Sessions that joined before the first sync, with whether they want the snapshot."""
        self.parked: dict[Session, None] = {}
        """Sessions that held the channel when their client started over (a stream without
        ``Last-Event-ID``): they receive nothing, but keep the channel and its tombstones for
        when the client subscribes again (within ``session_ttl_s``)."""
        self.tombstones: deque[tuple[int, ObjectKey, bytes]] = deque()
        """(number, key, last known object) of the latest deletions, at most ``history_limit`` and
        ``history_bytes`` of objects: what a client that never clears its state may still hold
        when it comes back."""
        self.tombstone_bytes = 0
        self.buried = 0
        """Deletions so far: a session notes it when it joins, and later gets only newer ones."""
        self.synced = False
        self.phase = InformerPhase.LISTING
        self.error_frame: Frame | None = None
        self.history: deque[tuple[int, Frame]] = deque()
        """(position at the end of the frame's group, frame), oldest first."""
        self.history_limit = history_limit
        self.history_bytes = history_bytes
        """Bound of :attr:`history` in bytes (frames on the wire), as of :attr:`tombstones`."""
        self.history_size = 0
        """Bytes of the frames in :attr:`history`."""
        self._generation = 0
        """Counts changes of the objects: a shared snapshot is valid for one generation."""
        self._shared: SharedSnapshot | None = None
        self._shared_handle: asyncio.TimerHandle | None = None
        self._keys: tuple[ObjectKey, ...] | None = None
        """The object keys, shared by the snapshots that start while the set of keys is unchanged
        (forgotten at every ADDED, DELETED, LIST and new upstream)."""
        self.complete_from: int | None = None
        """``history`` holds every frame whose group ends at or after this (None: nothing yet)."""
        self.relists: deque[tuple[int, int]] = deque()
        """(start, end) positions of the relists that ``history`` covers, oldest first."""
        self.rv = ""
        """The latest consistent position (a resourceVersion), as sent in ``synced``."""
        self._rv_int = 0
        self.task: asyncio.Task[None] | None = None
        self.grace_handle: asyncio.TimerHandle | None = None
        self.events = 0
        self.deliveries = 0
        self.snapshot_parts_built = 0
        self.snapshot_parts_written = 0
        """Parts of snapshots encoded, and written to sessions: their ratio is the sharing."""
        self.upstream_restarts = 0
        self._credential = SubscriberCredential()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.upstream.run(), name=f"upstream {self.key}")

    @property
    def subscriber_count(self) -> int:
        """Sessions holding the channel (parked ones too: they may come back)."""
        return len(self.subscribers) + len(self.waiting) + len(self.parked)

    def restart_upstream(self) -> None:
        """The informer died of a bug: start a fresh one; subscribers get ``resync`` + snapshot."""
        self.upstream_restarts += 1
        for session in list(self.subscribers):
            session.push(self._control("resync", reason="restart"))
            self.waiting[session] = True
        self.subscribers.clear()
        self.synced = False
        self._clear_history()
        self.complete_from = None
        self._keys = None
        self._objects_changed()
        self.upstream = self._upstream_factory(self.target, self)
        self.start()

    def subscriber_token(self) -> str | None:
        """The upstream credential in ``credential = "subscriber"`` mode (see hub/credential.py)."""
        return self._credential.pick((*self.subscribers, *self.waiting))

    # ------------------------------------------------------------------ positions
    def _advance(self, resource_version: str) -> int:
        """Move the channel's position to ``resource_version`` (never backwards); returns it."""
        if resource_version.isdigit() and resource_version.isascii():
            value = int(resource_version)
            if value > self._rv_int or not self.rv:
                self._rv_int = max(value, self._rv_int)
                self.rv = str(self._rv_int)
        return self._rv_int

    def _frame_of(self, event: WatchEvent, label: str) -> Frame:
        return self._frames.watch(
            channel_json=self.key_json,
            channel=self.key,
            type=event.type,
            key=event.key if event.type != "BOOKMARK" else None,
            object_json=event.object_json,
            resource_version=label,
        )

    # ------------------------------------------------------------------ informer listener
    def on_events(self, events: list[WatchEvent]) -> None:
        """One upstream chunk: frames built once, written to each subscriber in one write."""
        self.events += len(events)
        if len(events) != 1 or events[0].type != "BOOKMARK":
            self._objects_changed()
        advance = self._advance
        if not self.synced:
            # The first LIST: waiting sessions get their snapshots at sync.
            self._keys = None
            for event in events:
                advance(event.resource_version)
            return
        frames: list[Frame] = []
        history = self.history
        size = 0
        for event in events:
            end = advance(event.resource_version)
            frame = self._frame_of(event, self.rv)
            frames.append(frame)
            history.append((end, frame))
            size += len(frame.wire)
            if event.type == "DELETED":
                self._bury(event)
            elif event.type == "ADDED":
                self._keys = None
        self.history_size += size
        self._fan_out(frames)

    def _bury(self, event: WatchEvent) -> None:
        self._keys = None
        self.buried += 1
        tombstones = self.tombstones
        tombstones.append((self.buried, event.key, event.object_json))
        self.tombstone_bytes += len(event.object_json)
        while len(tombstones) > self.history_limit or self.tombstone_bytes > self.history_bytes:
            self.tombstone_bytes -= len(tombstones.popleft()[2])

    def on_relist(self, events: list[WatchEvent], resource_version: str) -> None:
        """A relist's difference: consistent only once every event of it is applied."""
        self.events += len(events)
        self._objects_changed()
        self._keys = None
        if not self.synced:
            self._advance(resource_version)
            return
        before = self.rv
        start = self._rv_int
        end = self._advance(resource_version)
        if end > start:
            self.relists.append((start, end))
        if not events:
            return
        frames = [self._frame_of(event, before) for event in events[:-1]]
        frames.append(self._frame_of(events[-1], self.rv))
        for event in events:
            if event.type == "DELETED":
                self._bury(event)
        self.history.extend((end, frame) for frame in frames)
        self.history_size += sum(len(frame.wire) for frame in frames)
        self._fan_out(frames)

    def _clear_history(self) -> None:
        self.history.clear()
        self.history_size = 0
        self.relists.clear()

    def _fan_out(self, frames: list[Frame]) -> None:
        history = self.history
        while len(history) > self.history_limit or self.history_size > self.history_bytes:
            trimmed_end, trimmed = history.popleft()
            self.history_size -= len(trimmed.wire)
            # A client at ``trimmed_end`` may lack that frame: catch-ups start above it now.
            if self.complete_from is not None:
                self.complete_from = max(self.complete_from, trimmed_end + 1)
                relists = self.relists
                while relists and relists[0][1] < self.complete_from:
                    relists.popleft()
        subscribers = self.subscribers
        if not subscribers:
            return
        if len(frames) == 1:
            frame = frames[0]
            for session in subscribers:
                session.push(frame)
        else:
            wire = b"".join([f.wire for f in frames])
            for session in subscribers:
                session.push_batch(frames, wire)
        self.deliveries += len(subscribers) * len(frames)

    def on_state(self, state: InformerState) -> None:
        self.phase = state.phase
        if state.phase is not InformerPhase.DEGRADED:
            self._recovered()
        if state.phase is InformerPhase.WATCHING:
            if state.resource_version:
                self._advance(state.resource_version)
            if not self.synced:
                self._first_sync()
        elif state.phase is InformerPhase.DEGRADED:
            if state.error_code in (401, 403) and self._credential.rejected():
                # A subscriber's own token was refused (expired, or its user lost access): the
                # next attempt uses another subscriber's. What the control plane said names that
                # user; the other subscribers must not learn it.
                state = dataclasses.replace(
                    state,
                    error_message=(
                        f"the control plane refused a subscriber's credential ({state.error_code});"
                        " the watch moves to another subscriber's"
                    ),
                )
            first = self._failing is None
            self._failing = state
            if self.error_frame is not None or self._watch_error_after_s <= 0:
                self._report()  # already reporting (or told to at once): this failure too
            elif first:
                self._report_handle = asyncio.get_running_loop().call_later(
                    self._watch_error_after_s, self._report
                )
        elif state.phase is InformerPhase.GONE:
            frame = self._frames.event(
                "unsubscribed", {"channel": self.key, "reason": "gone"}, channel=self.key
            )
            for session in (*self.subscribers, *self.waiting):
                session.left(self.key, "gone")
                session.push(frame)
            self.subscribers.clear()
            self.waiting.clear()
            self.parked.clear()
            self._on_gone(self)

    def _report(self) -> None:
        """``watch-error`` to every subscriber: the upstream has been failing long enough."""
        self._report_handle = None
        state = self._failing
        if state is None:
            return
        frame = self._frames.event(
            "watch-error",
            {
                "channel": self.key,
                "code": state.error_code,
                "reason": state.error_reason,
                "message": state.error_message,
            },
            channel=self.key,
        )
        self.error_frame = frame
        for session in (*self.subscribers, *self.waiting):
            session.push(frame)

    def _recovered(self) -> None:
        self._failing = None
        self.error_frame = None
        if self._report_handle is not None:
            self._report_handle.cancel()
            self._report_handle = None

    def stop(self) -> None:
        """The channel closes: no report or timer may fire after it."""
        self._recovered()
        if self._shared_handle is not None:
            self._shared_handle.cancel()
        self._forget_shared()

    def _first_sync(self) -> None:
        self.synced = True
        self._clear_history()
        self.complete_from = self._rv_int
        for session, snapshot in self.waiting.items():
            if snapshot:
                # Noted only: built in parts once the session's stream has room for it.
                session.request_snapshot(self.key, (None, None))
            self.subscribers[session] = None
        self.waiting.clear()
        log.info("channel.synced", channel=self.key, objects=len(self.upstream.objects), rv=self.rv)

    def _control(self, event: str, **data: str) -> Frame:
        """A control frame of this channel made for one session (not kept for replay)."""
        return self._frames.event(event, {"channel": self.key, **data}, channel=self.key, snapshot=True)

    def snapshot_keys(self) -> tuple[ObjectKey, ...]:
        """The keys of the current objects (shared while the set of keys does not change)."""
        objects = self.upstream.objects
        keys = self._keys
        if keys is None or len(keys) != len(objects):
            keys = self._keys = tuple(objects)
        return keys

    def _objects_changed(self) -> None:
        self._generation += 1
        self._shared = None  # its bytes no longer match: free them now

    def shared_snapshot(self, keys: tuple[ObjectKey, ...]) -> SharedSnapshot:
        """The parts of a snapshot over ``keys`` at the current version of the objects: shared
        with the other sessions snapshotting now while ``keys`` is the current key tuple, else
        made for one session (see ``hub/snapshot.py``)."""
        shared = self._shared
        if shared is not None and shared.keys is keys and shared.generation == self._generation:
            return shared
        shared = SharedSnapshot(self, keys, self._generation)
        if keys is self._keys:
            self._shared = shared
            if self._shared_handle is None:
                self._shared_handle = asyncio.get_running_loop().call_later(
                    SHARED_SNAPSHOT_TTL_S, self._forget_shared
                )
        return shared

    def _forget_shared(self) -> None:
        self._shared_handle = None
        self._shared = None

    def part_frame(self, wire: bytes) -> Frame:
        """A shared snapshot part as one session's frame: an id of its own for the session's
        resume log, never written (see ``hub/snapshot.py``)."""
        self.snapshot_parts_written += 1
        return Frame(self._frames.next_id(), wire, self.key, None, snapshot=True, watch=True)

    def deletion_frame(self, key: ObjectKey, object_json: bytes) -> Frame:
        """A ``DELETED`` after a snapshot, for one session (what it may hold from before): no
        position. (The snapshot's own objects are shared parts: :meth:`part_frame`.)"""
        return self._frames.watch(
            channel_json=self.key_json,
            channel=self.key,
            type="DELETED",
            key=key,
            object_json=object_json,
            resource_version="",
            snapshot=True,
        )

    def deleted_since(self, since: int) -> list[tuple[ObjectKey, bytes]]:
        """(key, last object) of each object deleted after deletion number ``since`` that is
        gone now, newest first (from :attr:`tombstones`: references, nothing copied)."""
        objects = self.upstream.objects
        done: set[ObjectKey] = set()
        out = []
        for number, key, object_json in reversed(self.tombstones):
            if number <= since:
                break
            if key in objects or key in done:
                continue
            done.add(key)
            out.append((key, object_json))
        return out

    def synced_frame(self) -> Frame:
        return self._control("synced", resourceVersion=self.rv)

    # ------------------------------------------------------------------ subscribers
    def join(self, session: Session, *, resource_version: str | None, snapshot: bool) -> None:
        """Add a subscriber; everything it needs comes from the channel's cache and history.

        ``resource_version`` must be ASCII digits (the web layer refuses anything else)."""
        came_back = self.parked.pop(session, None) is not None or self.key in session.released
        joined_at = session.deletions_seen.setdefault(self.key, self.buried)
        session.joined(self)
        session.push(self._control("subscribed"))
        if self.error_frame is not None:
            session.push(self._frames.reissue(self.error_frame, snapshot=True))
        if not self.synced:
            if snapshot and resource_version:
                # Nothing to catch up from yet: the client must drop what it holds.
                session.push(self._control("resync", reason="expired"))
            self.waiting[session] = snapshot
            return
        if snapshot:
            catch_up = self._catch_up(int(resource_version)) if resource_version else None
            if catch_up is not None:
                # At most the channel's history; over the session's buffer it becomes a resync.
                catch_up.append(self._control("synced", resourceVersion=self.rv))
                session.push_many(catch_up)
            elif resource_version:
                # The client may hold (and may not clear) objects from anywhere: every deletion.
                session.request_snapshot(self.key, ("expired", joined_at if came_back else 0))
            else:
                # Noted only: built in parts once the session's stream has room for it (a
                # session whose stream is gone builds nothing).
                session.request_snapshot(self.key, (None, joined_at if came_back else None))
        self.subscribers[session] = None

    def _catch_up(self, since: int) -> list[Frame] | None:
        """Frames of every group ending at or after ``since``, under new ids; None when the
        history does not reach back that far (or ``since`` is ahead of this channel)."""
        if self.complete_from is None or since < self.complete_from or since > self._rv_int:
            return None
        if any(start < since < end for start, end in self.relists):
            return None
        reissue = self._frames.reissue
        return [reissue(frame, snapshot=True) for end, frame in self.history if end >= since]

    def park(self, session: Session) -> None:
        """``session``'s client started over: keep the channel for it until it subscribes again
        (:meth:`join`) or the session ends (:meth:`unpark`)."""
        self.leave(session, "client", parking=True)
        self.parked[session] = None

    def unpark(self, session: Session) -> bool:
        return self.parked.pop(session, None) is not None

    def leave(self, session: Session, reason: str, *, parking: bool = False) -> bool:
        """Remove a subscriber; True when it was one."""
        session.left(self.key, reason, parking=parking)
        if self._credential.owner_left(session) and self.subscriber_count > 1:
            # Its token must not keep the shared watch open: resume with another subscriber's.
            self.upstream.restart_watch()
        if session in self.subscribers:
            del self.subscribers[session]
            return True
        return self.waiting.pop(session, None) is not None

    def resnapshot(self, session: Session, request: SnapshotRequest) -> None:
        """Start the snapshot ``request`` (``resync`` reason, deletions since) for ``session``,
        whose stream is attached and drained: the ``resync`` frame now, then the writer's parts."""
        if self.key not in session.channels:
            return
        reason, stale_since = request
        if not self.synced:
            if reason is not None:
                session.push(self._control("resync", reason=reason))
            self.subscribers.pop(session, None)
            self.waiting[session] = True
            return
        # From here on the session gets live frames again: the writer's keys are taken now and
        # the resync (which makes the client drop what it holds) comes before any of them.
        session.begin_snapshot(self.key, SnapshotWriter(self, stale_since))
        if reason is not None:
            session.push(self._control("resync", reason=reason))
