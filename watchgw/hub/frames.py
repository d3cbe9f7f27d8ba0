"""SSE frames: each built once, as the bytes that go on the wire, and shared by every subscriber.

A frame is stored already wrapped in its HTTP/1.1 chunk (``<hex len>\\r\\n<frame>\\r\\n``) because the
stream writes straight to the transport (see ``hub/session.py``): a subscriber that is keeping up
costs one ``transport.write`` of a shared ``bytes`` object per event, with no per-subscriber encoding.
HTTP/1.0 clients (no chunking) get :attr:`Frame.payload`, a slice made only for them.

Event ids come from one process-wide counter that starts at the current time in nanoseconds
since the epoch and adds one per frame, so ids strictly increase within a session (every frame a
session receives is made after the one before). They also increase across a restart because the
counter cannot run ahead of the clock: that would take more than one frame per nanosecond, a
thousand times what a process builds even when it writes snapshots to thousands of clients at
once (with microseconds, a burst of a few million snapshot frames ran seconds ahead, and a restart
right after it went back in time). Nineteen digits until the year 2262; clients treat ids as
opaque strings anyway.

This module sits in ``hub`` rather than ``web`` because the hub builds the frames it fans out; the
web layer only writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ujson

from watchgw.kube.types import ObjectKey


def dumps(value: Any) -> bytes:
    """Compact JSON on one line (ujson escapes control characters, so no CR/LF can leak out)."""
    return ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False).encode()


class Frame:
    """One SSE event, encoded once.

    ``channel`` and ``key`` identify what the frame is about, for coalescing (the latest state of
    an object wins) and for per-channel resync; both are empty for session-level frames.
    """

    __slots__ = ("channel", "id", "key", "snapshot", "watch", "wire")

    def __init__(
        self,
        id: int,
        wire: bytes,
        channel: str = "",
        key: ObjectKey | None = None,
        snapshot: bool = False,
        watch: bool = False,
    ) -> None:
        self.id = id
        self.wire = wire
        self.channel = channel
        self.key = key
        self.snapshot = snapshot
        """Made for one session (snapshot, catch-up): not kept for replay, a resync rebuilds it."""
        self.watch = watch
        """A ``watch`` event (objects, bookmarks): what a pending snapshot of its channel supersedes."""

    @property
    def payload(self) -> bytes:
        """The SSE bytes without HTTP chunk framing."""
        start = self.wire.index(b"\r\n") + 2
        return self.wire[start:-2]

    def __len__(self) -> int:
        return len(self.wire)

    def __repr__(self) -> str:
        return f"Frame({self.id}, {self.payload[:60]!r})"


class FrameFactory:
    """Builds frames and hands out their ids."""

    __slots__ = ("_last_id",)

    def __init__(self, start_id: int | None = None, *, clock: Callable[[], int] = time.time_ns) -> None:
        self._last_id = start_id if start_id is not None else clock()

    @property
    def last_id(self) -> int:
        """The id of the newest frame built."""
        return self._last_id

    def next_id(self) -> int:
        """An id for a frame whose bytes are shared between sessions (a snapshot part)."""
        self._last_id += 1
        return self._last_id

    def _frame(
        self, event: bytes, data: bytes, channel: str, key: ObjectKey | None, snapshot: bool = False
    ) -> Frame:
        self._last_id += 1
        fid = self._last_id
        body = b"id: %d\nevent: %s\ndata: %s\n\n" % (fid, event, data)
        return Frame(fid, b"%x\r\n%s\r\n" % (len(body), body), channel, key, snapshot, event == b"watch")

    def event(self, event: str, data: dict[str, Any], *, channel: str = "", snapshot: bool = False) -> Frame:
        """A control event (``subscribed``, ``synced``, ``resync`` ...): not on the hot path.

        ``snapshot``: made for one session (not kept for replay, see :attr:`Frame.snapshot`)."""
        return self._frame(event.encode(), dumps(data), channel, None, snapshot)

    def watch(
        self,
        *,
        channel_json: bytes,
        channel: str,
        type: str,
        key: ObjectKey | None,
        object_json: bytes,
        resource_version: str,
        snapshot: bool = False,
    ) -> Frame:
        """A ``watch`` event: the object's JSON is spliced in as the informer encoded it."""
        data = b'{"channel":%s,"type":"%s","object":%s,"resourceVersion":%s}' % (
            channel_json,
            type.encode(),
            object_json,
            rv_json(resource_version),
        )
        return self._frame(b"watch", data, channel, key, snapshot)

    def reissue(self, frame: Frame, *, snapshot: bool = False) -> Frame:
        """The same event under a new id (catch-up from a channel's history for a late joiner)."""
        payload = frame.payload
        rest = payload[payload.index(b"\n") + 1 :]
        self._last_id += 1
        body = b"id: %d\n%s" % (self._last_id, rest)
        return Frame(self._last_id, chunk(body), frame.channel, frame.key, snapshot, frame.watch)

    def connected(
        self,
        *,
        client_id: str,
        resumed: bool,
        retry_ms: int,
        frame_id: int | None,
        replica: str | None = None,
    ) -> bytes:
        """The first frame of a stream, as raw SSE bytes (written through the response).

        A fresh session's ``connected`` takes a new id; a resumed one repeats the client's
        ``Last-Event-ID`` so the browser's idea of its position does not move backwards.
        ``replica`` names this process behind a load balancer: a client compares it with the
        replica named by its subscribe answers (requests routed elsewhere than its stream).
        """
        if frame_id is None:
            self._last_id += 1
            frame_id = self._last_id
        fields: dict[str, Any] = {"clientId": client_id, "resumed": resumed}
        if replica is not None:
            fields["replica"] = replica
        data = dumps(fields)
        return b"retry: %d\nid: %d\nevent: connected\ndata: %s\n\n" % (retry_ms, frame_id, data)


def rv_json(resource_version: str) -> bytes:
    """A resourceVersion as a JSON string; the fast path covers what Kubernetes sends (digits)."""
    if resource_version.isdigit() and resource_version.isascii():
        return b'"%s"' % resource_version.encode()
    return dumps(resource_version)


def chunk(payload: bytes) -> bytes:
    """Wrap raw SSE bytes in one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


PING = b": ping\n\n"
