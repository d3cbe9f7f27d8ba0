"""Shared helpers for the simulator tests (reading NDJSON watch streams without sleeping)."""

from __future__ import annotations

from typing import Any

import aiohttp
import ujson

CM = "api/v1/configmaps"
ZONES = "apis/dns.networking.miloapis.com/v1alpha1/dnszones"


class Lines:
    """Incremental NDJSON reader over an aiohttp response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buf = b""

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            chunk = await self.resp.content.readany()
            if not chunk:
                if self.buf:
                    raise AssertionError(f"stream ended mid-line: {self.buf[:80]!r}")
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        event: dict[str, Any] = ujson.loads(line)
        return event

    async def take(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            ev = await self.next()
            assert ev is not None, f"stream ended after {len(out)} events"
            out.append(ev)
        return out

    async def rest(self) -> list[dict[str, Any]]:
        out = []
        while (ev := await self.next()) is not None:
            out.append(ev)
        return out


def cm(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": dict(labels)}, "data": {"k": name}}


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events]
