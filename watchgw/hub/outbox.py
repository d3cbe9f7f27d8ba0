"""The queue of a client that is behind: frames waiting for its socket, coalesced as they arrive.

A frame only queues here when the session cannot write it straight to the transport (a slow
reader, a snapshot being written, no stream attached). Every operation a push can trigger is O(1)
amortized, so a client held just under its bound costs what a keeping-up client costs:

- a live ``watch`` frame of an object that already has one queued replaces it (the latest state
  wins): the older frame's slot becomes a hole (``None``), its bytes are released at once;
- bytes are counted per channel as frames come and go, so the heaviest channel is found without
  looking at the frames;
- dropping a channel (for a ``resync``) rebuilds the queue once; its frames are then gone, and the
  session refuses new ones of that channel until the resync, so each frame is dropped at most once.

Snapshot frames (``Frame.snapshot``) are never coalesced: the ``synced`` that follows them promises
the client the complete state.
"""

from __future__ import annotations

from collections.abc import Container

from watchgw.hub.frames import Frame


class Outbox:
    __slots__ = ("_channel_bytes", "_frames", "_holes", "_latest", "bytes", "coalesced")

    def __init__(self) -> None:
        self._frames: list[Frame | None] = []
        self._holes = 0
        self._latest: dict[tuple[str, str], int] = {}
        """(channel, object key) -> index of its queued live frame."""
        self._channel_bytes: dict[str, int] = {}
        self.bytes = 0
        self.coalesced = 0
        """Frames replaced by a newer frame of the same object, over the outbox's life."""

    def __len__(self) -> int:
        return len(self._frames) - self._holes

    def append(self, frame: Frame) -> None:
        size = len(frame.wire)
        channel = frame.channel
        key = frame.key
        if key and not frame.snapshot:
            slot = (channel, key)
            index = self._latest.get(slot)
            if index is not None:
                old = self._frames[index]
                assert old is not None
                self._frames[index] = None
                self._holes += 1
                self._release(old)
                self.coalesced += 1
            self._latest[slot] = len(self._frames)
        self._frames.append(frame)
        self.bytes += size
        if channel:
            self._channel_bytes[channel] = self._channel_bytes.get(channel, 0) + size

    def _release(self, frame: Frame) -> None:
        size = len(frame.wire)
        self.bytes -= size
        if frame.channel:
            left = self._channel_bytes[frame.channel] - size
            if left:
                self._channel_bytes[frame.channel] = left
            else:
                del self._channel_bytes[frame.channel]

    def heaviest_channel(self, *, among: Container[str]) -> str | None:
        """The channel of ``among`` with the most bytes queued (the one a snapshot relieves most)."""
        best, most = None, 0
        for channel, size in self._channel_bytes.items():
            if size > most and channel in among:
                best, most = channel, size
        return best

    def drop_channel(self, channel: str) -> None:
        """Forget every queued frame of ``channel`` (it will be resynced instead)."""
        if channel not in self._channel_bytes:
            return
        kept = [f for f in self._frames if f is not None and f.channel != channel]
        self.clear()
        for frame in kept:
            self.append(frame)

    def prepend(self, frames: list[Frame]) -> None:
        """Put ``frames`` (a replay) before everything queued."""
        queued = self.take()
        for frame in frames:
            self.append(frame)
        for frame in queued:
            self.append(frame)

    def take(self) -> list[Frame]:
        """Everything queued, in order; the outbox is empty afterwards."""
        frames = [f for f in self._frames if f is not None]
        self._frames = []
        self._holes = 0
        self._latest.clear()
        self._channel_bytes.clear()
        self.bytes = 0
        return frames

    def clear(self) -> None:
        self.take()
