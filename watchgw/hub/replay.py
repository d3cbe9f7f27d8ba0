"""The resume log of a session: frames already written, so a reconnect with ``Last-Event-ID`` gets
every frame after that id, in order.

Bounded in bytes (``client_buffer_bytes``). What cannot be replayed exactly is remembered per
channel as the id of the newest frame that is missing, so a resume from before it knows which
channels it lost:

- frames trimmed from the log (over the byte bound);
- frames made for this session alone (snapshots, catch-ups, ``subscribed``/``synced``): they are
  not kept, since memory per client would grow with the snapshot.

A channel the session still holds gets ``resync`` + snapshot on such a resume; a channel it left
gets a fresh ``unsubscribed`` with the reason it was left for, so a client never keeps a channel
whose end it did not hear about. These per-channel notes are bounded too (:data:`MAX_NOTES`): when
an old note of a channel the session no longer holds is dropped, resumes from before it are
refused (the client starts over, ``"resumed": false``), which is always correct.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable

from watchgw.hub.frames import Frame

#: Per-channel notes kept beyond the channels a session holds.
MAX_NOTES = 64


class ReplayLog:
    __slots__ = ("_bytes", "_forgotten_before", "_frames", "_last_id", "_left", "_limit", "_lost")

    def __init__(self, limit_bytes: int) -> None:
        self._frames: deque[Frame] | None = None
        """Made at the first frame kept: a client that only ever got snapshots needs none."""
        self._bytes = 0
        self._limit = limit_bytes
        self._lost: dict[str, int] = {}
        """Channel -> id of the newest frame of it that cannot be replayed."""
        self._left: dict[str, str] = {}
        """Channels the session left, with the reason its ``unsubscribed`` said."""
        self._forgotten_before = 0
        """A resume from before this id may have lost a note: it cannot be exact."""
        self._last_id = 0
        """The newest frame written."""

    def remember(self, frames: Iterable[Frame], held: Container[str]) -> None:
        """``frames`` were written to the socket, in order."""
        log = self._frames
        lost = self._lost
        size = 0
        for frame in frames:
            self._last_id = frame.id
            if frame.snapshot:
                if frame.channel:
                    lost[frame.channel] = frame.id
                continue
            if log is None:
                log = self._frames = deque()
            log.append(frame)
            size += len(frame.wire)
        self._bytes += size
        while self._bytes > self._limit and log:
            old = log.popleft()
            self._bytes -= len(old.wire)
            if old.channel:
                lost[old.channel] = old.id
        if len(lost) > MAX_NOTES:
            self._prune(held)

    def left(self, channel: str, reason: str) -> None:
        self._left.pop(channel, None)
        self._left[channel] = reason  # newest last
        if len(self._left) > MAX_NOTES:
            # The oldest departure's unsubscribed may still be in the log: from here on, a resume
            # from before now could miss it, so such resumes start over.
            oldest = next(iter(self._left))
            del self._left[oldest]
            self._lost.pop(oldest, None)
            self._forgotten_before = max(self._forgotten_before, self._last_id + 1)

    def rejoined(self, channel: str) -> None:
        self._left.pop(channel, None)

    def _prune(self, held: Container[str]) -> None:
        """Drop the oldest notes of channels no longer held, down to :data:`MAX_NOTES`."""
        stale = sorted((fid, ch) for ch, fid in self._lost.items() if ch not in held)
        for fid, channel in stale[: max(0, len(self._lost) - MAX_NOTES)]:
            del self._lost[channel]
            self._left.pop(channel, None)
            self._forgotten_before = max(self._forgotten_before, fid)

    def can_resume(self, last_id: int) -> bool:
        return last_id >= self._forgotten_before

    def after(self, last_id: int) -> tuple[list[Frame], list[str], dict[str, str]]:
        """For a resume from ``last_id``: the frames to write again (in order), the held channels
        that lost frames (to resync) and the left channels that lost frames, with their reasons.

        The replayed frames leave the log: they are written again, and remembered again then."""
        lost = {channel for channel, fid in self._lost.items() if fid > last_id}
        replay: list[Frame] = []
        kept: deque[Frame] = deque()
        for frame in self._frames or ():
            if frame.id <= last_id:
                kept.append(frame)
            elif frame.channel not in lost:
                replay.append(frame)
        self._frames = kept
        self._bytes = sum(len(f.wire) for f in kept)
        ended = {channel: self._left.get(channel, "expired") for channel in lost if channel in self._left}
        resync = [channel for channel in lost if channel not in self._left]
        return replay, resync, ended
