"""A channel: one upstream informer, its subscribers and its recent history.

The channel is the informer's listener. Each upstream event becomes one frame, built once and
pushed to every live subscriber; the frame also goes into a bounded history so a subscriber that
arrives with a ``resourceVersion`` can catch up without a snapshot.

``resourceVersion`` on the frames of a channel is the channel's version after that event: it never
goes backwards (a relist's DELETED events carry the object's last known version, which is older),
so a client can hand the last one it saw back to ``subscribe`` and get exactly what it missed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

import structlog

from watchgw.hub.frames import Frame, FrameFactory, dumps
from watchgw.hub.session import Session
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
        upstream_factory: UpstreamFactory,
        on_gone: Callable[[Channel], None],
    ) -> None:
        self.key = key
        self.target = target
        self.key_json = dumps(key)
        self._frames = frames
        self._upstream_factory = upstream_factory
        self._on_gone = on_gone
        self.upstream: Upstream = upstream_factory(target, self)
        self.subscribers: dict[Session, None] = {}
        """Sessions that receive every event as it happens."""
        self.waiting: dict[Session, bool] = {}
        """Sessions that joined before the first sync, with whether they want the snapshot."""
        self.synced = False
        self.phase = InformerPhase.LISTING
        self.error_frame: Frame | None = None
        self.history: deque[tuple[int, Frame]] = deque()
        self.history_limit = history_limit
        self.history_floor = -1
        """Every event after this version is in ``history`` (-1: nothing can be caught up)."""
        self.rv = ""
        self._rv_int = 0
        self.task: asyncio.Task[None] | None = None
        self.grace_handle: asyncio.TimerHandle | None = None
        self.events = 0
        self.deliveries = 0
        self.upstream_restarts = 0
        self._token_owner: Session | None = None
        self._rejected_tokens: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.upstream.run(), name=f"upstream {self.key}")

    @property
    def subscriber_count(self) -> int:
        return len(self.subscribers) + len(self.waiting)

    def restart_upstream(self) -> None:
        """The informer died of a bug: start a fresh one; subscribers get ``resync`` + snapshot."""
        self.upstream_restarts += 1
        for session in list(self.subscribers):
            session.push(
                self._frames.event(
                    "resync", {"channel": self.key, "reason": "restart"}, channel=self.key, snapshot=True
                )
            )
            self.waiting[session] = True
        self.subscribers.clear()
        self.synced = False
        self.history.clear()
        self.history_floor = -1
        self.upstream = self._upstream_factory(self.target, self)
        self.start()

    # ------------------------------------------------------------------ credential = "subscriber"
    def subscriber_token(self) -> str | None:
        """The upstream credential in ``subscriber`` mode: an authorized subscriber's own token.

        Every subscriber was authorized (and is re-checked) with its own token, so any of them
        may be used; one the control plane rejected (401) is skipped until its owner leaves.
        """
        present = {s.token for s in (*self.subscribers, *self.waiting) if s.token}
        self._rejected_tokens &= present
        for session in (*self.subscribers, *self.waiting):
            if session.token and session.token not in self._rejected_tokens:
                self._token_owner = session
                return session.token
        self._token_owner = None
        return None

    # ------------------------------------------------------------------ informer listener
    def on_events(self, events: list[WatchEvent]) -> None:
        """One upstream chunk: frames built once, written to each subscriber in one write."""
        self.events += len(events)
        advance = self._advance
        if not self.synced:
            # The first LIST: waiting sessions get one shared snapshot at sync.
            for event in events:
                advance(event.resource_version)
            return
        watch = self._frames.watch
        history = self.history
        frames: list[Frame] = []
        for event in events:
            rv = advance(event.resource_version)
            frame = watch(
                channel_json=self.key_json,
                channel=self.key,
                type=event.type,
                key=event.key if event.type != "BOOKMARK" else None,
                object_json=event.object_json,
                resource_version=rv,
            )
            frames.append(frame)
            history.append((self._rv_int, frame))
        while len(history) > self.history_limit:
            self.history_floor = history.popleft()[0]
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

    def on_relist(self, events: list[WatchEvent], resource_version: str) -> None:
        self.on_events(events)

    def _advance(self, resource_version: str) -> str:
        """The channel's version after an event: never older than the one before.

        A relist's DELETED events carry the LIST's resourceVersion (the object's own is older),
        so every frame's version is one a client can hand back to ``subscribe`` to catch up."""
        if resource_version.isdigit():
            value = int(resource_version)
            if value > self._rv_int or not self.rv:
                self._rv_int = max(value, self._rv_int)
                self.rv = str(self._rv_int)
        elif not self.rv:
            self.rv = resource_version
        return self.rv

    def on_state(self, state: InformerState) -> None:
        self.phase = state.phase
        if state.phase is InformerPhase.WATCHING:
            self.error_frame = None
            if state.resource_version:
                self._advance(state.resource_version)
            if not self.synced:
                self._first_sync()
        elif state.phase is InformerPhase.DEGRADED:
            owner = self._token_owner
            if state.error_code == 401 and owner is not None and owner.token:
                self._rejected_tokens.add(owner.token)  # the next attempt uses someone else's
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
        elif state.phase is InformerPhase.GONE:
            frame = self._frames.event(
                "unsubscribed", {"channel": self.key, "reason": "gone"}, channel=self.key
            )
            for session in (*self.subscribers, *self.waiting):
                session.push(frame)
                session.channels.pop(self.key, None)
                session.forget_channel(self.key)
            self.subscribers.clear()
            self.waiting.clear()
            self._on_gone(self)

    def _first_sync(self) -> None:
        self.synced = True
        self.history.clear()
        self.history_floor = self._rv_int
        wanting = [session for session, snapshot in self.waiting.items() if snapshot]
        if wanting:
            frames = self._snapshot_frames()
            for session in wanting:
                session.push_many(frames)
        for session in self.waiting:
            self.subscribers[session] = None
        self.waiting.clear()
        log.info("channel.synced", channel=self.key, objects=len(self.upstream.objects), rv=self.rv)

    def _snapshot_frames(self, *, resync: str | None = None) -> list[Frame]:
        """``resync`` (when a reason is given), every object as ADDED, then ``synced``: frames
        made in the order they are sent, so their ids increase."""
        frames = self._frames
        rv = self.rv
        out = []
        if resync is not None:
            out.append(
                frames.event(
                    "resync", {"channel": self.key, "reason": resync}, channel=self.key, snapshot=True
                )
            )
        out += [
            frames.watch(
                channel_json=self.key_json,
                channel=self.key,
                type="ADDED",
                key=key,
                object_json=event.object_json,
                resource_version=rv,
                snapshot=True,
            )
            for key, event in self.upstream.objects.items()
        ]
        out.append(
            frames.event(
                "synced", {"channel": self.key, "resourceVersion": rv}, channel=self.key, snapshot=True
            )
        )
        return out

    # ------------------------------------------------------------------ subscribers
    def join(self, session: Session, *, resource_version: str | None, snapshot: bool) -> None:
        """Add a subscriber; everything it needs comes from the channel's cache and history."""
        session.channels[self.key] = self
        session.push(self._frames.event("subscribed", {"channel": self.key}, channel=self.key, snapshot=True))
        if self.error_frame is not None:
            session.push(self._frames.reissue(self.error_frame, snapshot=True))
        if not self.synced:
            if snapshot and resource_version:
                # Nothing to catch up from yet: the client must drop what it holds.
                session.push(
                    self._frames.event(
                        "resync", {"channel": self.key, "reason": "expired"}, channel=self.key, snapshot=True
                    )
                )
            self.waiting[session] = snapshot
            return
        if snapshot:
            catch_up = self._catch_up(resource_version) if resource_version else None
            if catch_up is not None:
                catch_up.append(
                    self._frames.event(
                        "synced",
                        {"channel": self.key, "resourceVersion": self.rv},
                        channel=self.key,
                        snapshot=True,
                    )
                )
                session.push_many(catch_up)
            else:
                session.push_many(self._snapshot_frames(resync="expired" if resource_version else None))
        self.subscribers[session] = None

    def _catch_up(self, resource_version: str) -> list[Frame] | None:
        """Frames newer than ``resource_version`` under new ids, or None when history is short."""
        if not resource_version.isdigit():
            return None
        since = int(resource_version)
        if since < self.history_floor or since > self._rv_int or self.history_floor < 0:
            return None
        reissue = self._frames.reissue
        return [reissue(frame, snapshot=True) for rv, frame in self.history if rv > since]

    def leave(self, session: Session) -> bool:
        """Remove a subscriber; True when it was one."""
        session.forget_channel(self.key)
        session.channels.pop(self.key, None)
        if session is self._token_owner:
            # Its token must not keep the shared watch open: resume with another subscriber's.
            self._token_owner = None
            if self.subscriber_count > 1:
                self.upstream.restart_watch()
        if session in self.subscribers:
            del self.subscribers[session]
            return True
        return self.waiting.pop(session, None) is not None

    def resnapshot(self, session: Session) -> None:
        """``resync`` + snapshot + ``synced`` for one session that fell too far behind."""
        if self.key not in session.channels:
            return
        if not self.synced:
            session.push(
                self._frames.event(
                    "resync", {"channel": self.key, "reason": "overflow"}, channel=self.key, snapshot=True
                )
            )
            self.subscribers.pop(session, None)
            self.waiting[session] = True
            return
        session.push_many(self._snapshot_frames(resync="overflow"))
