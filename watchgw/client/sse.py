"""An incremental Server-Sent Events parser (the WHATWG rules), fed with raw byte chunks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str | None
    retry: int | None = None


class SSEParser:
    """Feed bytes, get complete events. Lines end in LF, CRLF or CR; ``:`` lines are comments."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id: str | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        out: list[SSEEvent] = []
        buf = self._buffer
        start = 0
        length = len(buf)
        while start < length:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else length)
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt >= length:
                    break  # a CR at the end: it may be the first half of a CRLF
                if buf[nxt : nxt + 1] == b"\n":
                    nxt += 1
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            event = self._line(buf[start:end].decode("utf-8", "replace"))
            if event is not None:
                out.append(event)
            start = nxt
        self._buffer = buf[start:]
        return out

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data and not self._event and self._retry is None:
                self._id = None
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
            if self._id is not None:
                self.last_event_id = self._id
            self._event, self._data, self._id, self._retry = "", [], None, None
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None
