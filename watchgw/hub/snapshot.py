"""Snapshots of a channel, written to each session in parts, the parts' bytes shared.

A reconnect storm (a replica died and its clients land here) means thousands of snapshots of the
same few channels at the same versions. So the ADDED frames of a snapshot are built once per
channel version, as parts of at most ``room`` bytes, and the same ``bytes`` are written to every
session that snapshots the channel while its objects do not change (:class:`SharedSnapshot`).

What makes the bytes shareable: snapshot frames carry no ``id:`` line. Ids are per session, and an
SSE event without an id leaves the client's last event id where it was (the ``resync`` or
``subscribed`` before, or a live frame in between), which is exactly right: a snapshot frame is
not a position (its ``resourceVersion`` is empty) and is never replayed. A stream cut in the
middle of a part resumes from the id before it; the session's resume log notes the part under an
id taken for it (never written), so such a resume resnapshots the channel.

The writer takes the channel's key tuple when it starts and a position in it; each part holds the
*current* state of the next objects (see ``hub/channel.py`` for why that converges). A shared part
is keyed by the key tuple, the position and the room, and is valid for one version of the channel's
objects: any change makes the channel start a new :class:`SharedSnapshot`. A session whose key tuple
is no longer the channel's (keys were added or removed since it started) builds its parts alone.

Deletions after a snapshot (a client that may hold objects gone since it was here) are per session
and stay ordinary frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from watchgw.hub.frames import Frame, chunk
from watchgw.kube.types import ObjectKey, WatchEvent

if TYPE_CHECKING:
    from watchgw.hub.channel import Channel, Upstream

#: How long a channel keeps a shared snapshot after making it, unless its objects change first:
#: long enough for a storm of clients arriving over a few seconds to share it, short enough that a
#: quiet channel does not keep a second copy of its objects.
SHARED_SNAPSHOT_TTL_S = 5.0


class SharedSnapshot:
    """The ADDED frames of one version of a channel's objects, in parts, built on first use."""

    __slots__ = ("_channel", "_parts", "generation", "keys")

    def __init__(self, channel: Channel, keys: tuple[ObjectKey, ...], generation: int) -> None:
        self._channel = channel
        self.keys = keys
        self.generation = generation
        self._parts: dict[tuple[int, int], tuple[bytes, int]] = {}

    def part(self, start: int, room: int, objects: dict[ObjectKey, WatchEvent]) -> tuple[bytes, int]:
        """(one HTTP chunk of frames, the position after it) for the objects from ``start``, at
        least one object and about ``room`` bytes; an empty chunk when every one is gone."""
        cached = self._parts.get((start, room))
        if cached is not None:
            return cached
        keys = self.keys
        count = len(keys)
        channel_json = self._channel.key_json
        pieces: list[bytes] = []
        size = 0
        pos = start
        while pos < count and size < room:
            event = objects.get(keys[pos])
            pos += 1
            if event is not None:  # gone since the writer started: its DELETED was sent live
                piece = (
                    b'event: watch\ndata: {"channel":%s,"type":"ADDED","object":%s,"resourceVersion":""}\n\n'
                    % (channel_json, event.object_json)
                )
                pieces.append(piece)
                size += len(piece)
        built = (chunk(b"".join(pieces)) if pieces else b"", pos)
        self._channel.snapshot_parts_built += 1
        self._parts[(start, room)] = built
        return built


class SnapshotWriter:
    """One session's snapshot of a channel, written in parts: every object as ADDED (its state
    when its part is written), then, with ``stale_since``, a DELETED of each object deleted after
    that deletion number that is still gone, then ``synced``.

    Holds the channel's key tuple (shared between snapshots while it does not change) and a
    position: no frames, no objects."""

    __slots__ = ("_channel", "_deletions", "_keys", "_pos", "_stale_since", "_upstream")

    def __init__(self, channel: Channel, stale_since: int | None) -> None:
        self._channel = channel
        self._upstream: Upstream = channel.upstream
        self._keys = channel.snapshot_keys()
        self._pos = 0
        self._stale_since = stale_since
        self._deletions: list[tuple[ObjectKey, bytes]] | None = None

    def part(self, room: int) -> tuple[list[Frame], bool]:
        channel = self._channel
        if channel.upstream is not self._upstream or not channel.synced:
            # The upstream was restarted: the session got resync and waits for its first sync.
            return [], True
        objects = self._upstream.objects
        keys = self._keys
        out: list[Frame] = []
        size = 0
        if self._pos < len(keys):
            wire, self._pos = channel.shared_snapshot(keys).part(self._pos, room, objects)
            if wire:
                out.append(channel.part_frame(wire))
                size = len(wire)
            if self._pos < len(keys):
                return out, False
        if self._stale_since is not None:
            deletions = self._deletions
            if deletions is None:
                deletions = self._deletions = channel.deleted_since(self._stale_since)
                deletions.reverse()  # popped from the end: newest first, as before
            while deletions and size < room:
                key, object_json = deletions.pop()
                if key not in objects:
                    frame = channel.deletion_frame(key, object_json)
                    out.append(frame)
                    size += len(frame.wire)
            if deletions:
                return out, False
        out.append(channel.synced_frame())
        return out, True
