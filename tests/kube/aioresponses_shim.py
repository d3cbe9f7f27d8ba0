"""Test-only shim: aioresponses 0.7.9 on aiohttp 3.14.

aiohttp 3.14 made ``stream_writer`` a required keyword argument of ``ClientResponse.__init__``;
aioresponses 0.7.9 does not pass it, so every mocked request fails with ``TypeError: ...
missing 1 required keyword-only argument: 'stream_writer'`` (pnuckowski/aioresponses#289; fix
pending in PR #288, also carried by PR #292). aiohttp 3.14 is a security release, so it is not
pinned lower: instead the response class aioresponses builds is replaced by a subclass that
supplies a stand-in writer. With ``writer=None`` (aioresponses' "request already sent") aiohttp
only reads ``stream_writer.output_size`` from it.

Known remaining limit (PR #292): bodies above the 64 KiB StreamReader limit can trip aiohttp
3.14's ``pause_reading`` assertion; keep mocked bodies small (streams are tested against a real
local server anyway).

Remove this module (and its import in ``conftest.py``) once aioresponses > 0.7.9 ships the fix.
"""

from __future__ import annotations

import inspect
from typing import Any

import aioresponses.core
from aiohttp import ClientResponse

_NEEDS_SHIM = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


class _StreamWriterStub:
    """What a finished request's writer exposes to ``ClientResponse``."""

    output_size = 0


class ShimClientResponse(ClientResponse):
    """``ClientResponse`` that tolerates aioresponses 0.7.9 not passing ``stream_writer``."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _StreamWriterStub())
        super().__init__(method, url, **kwargs)


def install() -> None:
    """Make aioresponses build :class:`ShimClientResponse` by default (idempotent)."""
    if _NEEDS_SHIM and aioresponses.core.ClientResponse is ClientResponse:
        aioresponses.core.ClientResponse = ShimClientResponse  # type: ignore[misc]
