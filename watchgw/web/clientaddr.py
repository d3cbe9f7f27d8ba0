"""The client's address, as per-address limits count it.

The connection's peer is the client, unless the peer is one of ``server.trusted_proxies``: then
the address is the last hop of ``X-Forwarded-For`` that is not itself a trusted proxy (every hop
to its right was appended by a trusted proxy, so it cannot be forged; anything to its left can),
or, without that header, ``X-Real-IP``. A header from a peer that is not trusted is ignored:
anyone can send one.

:func:`limit_key` is what limits count by: the address, and for IPv6 its /64 (one subscriber's
network hands out the addresses of a /64 at will).
"""

from __future__ import annotations

import functools
import ipaddress
import sys
from collections.abc import Iterable, Mapping

from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"
"""The address of a peer without one (a Unix socket)."""


@functools.lru_cache(maxsize=16)
def trusted_networks(proxies: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """``server.trusted_proxies`` parsed (validated by the config already); cached per tuple."""
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _parse(value: str) -> IPAddress | None:
    """An address as peers and proxies write it: plain, ``[v6]:port`` or ``v4:port``."""
    value = value.strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_address(peer: object, headers: Mapping[str, str], proxies: tuple[str, ...]) -> str:
    """The client's address for a connection from ``peer`` with request ``headers``."""
    peer_address = _parse(peer) if isinstance(peer, str) else None
    if peer_address is None:
        return UNKNOWN
    networks = trusted_networks(proxies)
    if not networks or not _trusted(peer_address, networks):
        return str(peer_address)
    getall = getattr(headers, "getall", None)
    forwarded = getall("X-Forwarded-For", ()) if getall is not None else [headers.get("X-Forwarded-For", "")]
    hops = [hop for value in forwarded for hop in value.split(",") if hop.strip()]
    if hops:
        last_trusted = peer_address
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                # Written by a trusted proxy, so a misconfiguration: the last hop we can vouch for.
                return str(last_trusted)
            if not _trusted(address, networks):
                return str(address)
            last_trusted = address
        return str(last_trusted)  # every hop a proxy of ours: the request comes from inside
    real = _parse(headers.get("X-Real-IP", ""))
    return str(real) if real is not None else str(peer_address)


def limit_key(address: str) -> str:
    """What per-address limits count: the address, an IPv6 address by its /64."""
    parsed = _parse(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))
    return address


def request_limit_key(request: web.BaseRequest, proxies: tuple[str, ...]) -> str:
    """:func:`limit_key` of an aiohttp request's client (``request.remote``, its headers).

    Interned: every session of an address holds it (as its identity without auth), so thousands
    of streams from one address share one string rather than a copy each."""
    return sys.intern(limit_key(client_address(request.remote, request.headers, proxies)))
