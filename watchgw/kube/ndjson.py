"""Incremental NDJSON splitter over arbitrary byte chunks.

aiohttp's ``StreamReader.readline`` fails on lines over 128 KiB, and Kubernetes objects can be
several MiB, so lines are split here from ``response.content.iter_any()`` chunks: one
``bytes.split`` per chunk (C speed, no per-byte Python loop), a list of pending parts for a line
that spans chunks (no quadratic concatenation of a multi-MiB line), ``\\r\\n`` and empty lines
tolerated, and a bound on the line length that raises :class:`MalformedResponseError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from watchgw.kube.errors import MalformedResponseError

#: A single line longer than this is refused: it bounds the memory one stream can take.
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024


class NDJSONSplitter:
    """Feed chunks, get complete lines (without the terminator, never empty)."""

    __slots__ = ("_max", "_parts", "_pending")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._parts: list[bytes] = []
        self._pending = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of the incomplete line held so far."""
        return self._pending

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines ended in ``chunk``; the unterminated tail is kept for the next call."""
        nl = chunk.find(b"\n")
        if nl < 0:
            if chunk:
                self._pending += len(chunk)
                if self._pending > self._max:
                    self._too_long(self._pending)
                self._parts.append(chunk)
            return []
        if self._parts:
            self._parts.append(chunk[:nl])
            first = b"".join(self._parts)
            self._parts = []
            self._pending = 0
            lines = chunk[nl + 1 :].split(b"\n")
            lines.insert(0, first)
        else:
            lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self._parts.append(tail)
            self._pending = len(tail)
            if self._pending > self._max:
                self._too_long(self._pending)
        out = []
        limit = self._max
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if line:
                if len(line) > limit:
                    self._too_long(len(line))
                out.append(line)
        return out

    def finish(self) -> bytes | None:
        """The unterminated last line at end of stream (``None`` when there is none)."""
        if not self._parts:
            return None
        line = b"".join(self._parts)
        self._parts = []
        self._pending = 0
        if line[-1:] == b"\r":
            line = line[:-1]
        return line or None

    def _too_long(self, size: int) -> None:
        self._parts = []
        self._pending = 0
        raise MalformedResponseError(f"stream line longer than {self._max} bytes (at least {size})")


async def iter_lines(
    chunks: AsyncIterable[bytes],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> AsyncIterator[list[bytes]]:
    """Batches of complete lines from ``chunks`` (one batch per chunk that ended a line).

    A final unterminated line is yielded too: a watch stream cut in the middle of a line then
    fails to parse, which is the truth. Chunks that complete no line yield nothing: a stream
    dripping bytes without a newline is, to the consumer, a silent one.
    """
    splitter = NDJSONSplitter(max_line_bytes)
    async for chunk in chunks:
        lines = splitter.feed(chunk)
        if lines:
            yield lines
    last = splitter.finish()
    if last is not None:
        yield [last]
