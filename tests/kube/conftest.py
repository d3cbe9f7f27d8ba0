"""Fixtures of the upstream-side tests (``watchgw.kube``)."""

from __future__ import annotations

from . import aioresponses_shim

aioresponses_shim.install()
