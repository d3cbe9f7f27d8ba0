"""The client address per-address limits count (``watchgw.web.clientaddr``)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from watchgw.web.clientaddr import UNKNOWN, client_address, limit_key

PROXIES = ("10.0.0.0/8", "2001:db8:ffff::1")


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() -> None:
    spoofed = headers(("X-Forwarded-For", "192.0.2.1"), ("X-Real-IP", "192.0.2.2"))
    assert client_address("203.0.113.5", spoofed, ()) == "203.0.113.5"


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    spoofed = headers(("X-Forwarded-For", "192.0.2.1"), ("X-Real-IP", "192.0.2.2"))
    assert client_address("203.0.113.5", spoofed, PROXIES) == "203.0.113.5"


def test_last_untrusted_hop_of_forwarded_for_from_a_trusted_proxy() -> None:
    # The client forged "1.2.3.4"; our proxies appended 198.51.100.7 and 10.1.1.1.
    chain = headers(("X-Forwarded-For", "1.2.3.4, 198.51.100.7"), ("X-Forwarded-For", "10.1.1.1"))
    assert client_address("10.0.0.2", chain, PROXIES) == "198.51.100.7"
    assert client_address("10.0.0.2", headers(("X-Forwarded-For", "198.51.100.7")), PROXIES) == "198.51.100.7"


def test_all_hops_trusted_or_garbage_written_by_a_proxy() -> None:
    inside = headers(("X-Forwarded-For", "10.9.9.9, 10.1.1.1"))
    assert client_address("10.0.0.2", inside, PROXIES) == "10.9.9.9"
    garbage = headers(("X-Forwarded-For", "1.2.3.4, not-an-address"))
    assert client_address("10.0.0.2", garbage, PROXIES) == "10.0.0.2"  # nothing to trust beyond


def test_x_real_ip_when_there_is_no_forwarded_for() -> None:
    assert client_address("10.0.0.2", headers(("X-Real-IP", "198.51.100.8")), PROXIES) == "198.51.100.8"
    assert client_address("10.0.0.2", headers(("X-Real-IP", "junk")), PROXIES) == "10.0.0.2"
    assert client_address("10.0.0.2", headers(), PROXIES) == "10.0.0.2"


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        ("198.51.100.7:4711", "198.51.100.7"),
        ("[2001:db8::5]:443", "2001:db8::5"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("2001:DB8::5", "2001:db8::5"),
    ],
)
def test_address_forms_are_normalised(hop: str, expected: str) -> None:
    assert client_address("2001:db8:ffff::1", headers(("X-Forwarded-For", hop)), PROXIES) == expected


def test_peer_without_an_address() -> None:
    assert client_address(None, headers(), PROXIES) == UNKNOWN
    assert client_address("", headers(), ()) == UNKNOWN


def test_limit_key_groups_ipv6_by_64() -> None:
    assert limit_key("198.51.100.7") == "198.51.100.7"
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key(UNKNOWN) == UNKNOWN
