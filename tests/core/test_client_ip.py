"""The client IP: the peer, or X-Forwarded-For read from the right behind trusted proxies."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from keel.core.client_ip import ClientIpResolver, parse_ip

PROXIES = ["10.0.0.0/8", "192.0.2.10", "2001:db8:ffff::/48"]


def scope(peer: str | None, *forwarded_for: str) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 51234),
        "headers": [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded_for],
    }


def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    resolve = ClientIpResolver([])
    assert resolve(scope("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_untrusted_peer_cannot_choose_its_address() -> None:
    resolve = ClientIpResolver(PROXIES)
    # Not one of our proxies: whatever it claims to forward for is its own invention.
    assert resolve(scope("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_trusted_peer_gives_the_forwarded_address() -> None:
    resolve = ClientIpResolver(PROXIES)
    assert resolve(scope("10.0.0.1", "203.0.113.7")) == "203.0.113.7"


def test_rightmost_untrusted_hop_wins_over_spoofed_entries() -> None:
    resolve = ClientIpResolver(PROXIES)
    # The client sent "1.1.1.1, 8.8.8.8"; our two proxies appended what they saw.
    header = "1.1.1.1, 8.8.8.8, 203.0.113.7, 10.1.2.3"
    assert resolve(scope("10.0.0.1", header)) == "203.0.113.7"


def test_trusted_proxy_without_forwarded_for_is_the_client() -> None:
    assert ClientIpResolver(PROXIES)(scope("10.0.0.1")) == "10.0.0.1"


def test_every_hop_trusted_gives_the_leftmost() -> None:
    resolve = ClientIpResolver(PROXIES)
    assert resolve(scope("10.0.0.1", "10.9.9.9, 192.0.2.10")) == "10.9.9.9"


def test_single_address_entry_is_trusted_exactly() -> None:
    resolve = ClientIpResolver(PROXIES)
    assert resolve(scope("192.0.2.10", "203.0.113.7")) == "203.0.113.7"
    assert resolve(scope("192.0.2.11", "203.0.113.7")) == "192.0.2.11"


def test_several_headers_are_one_list_in_order() -> None:
    resolve = ClientIpResolver(PROXIES)
    assert resolve(scope("10.0.0.1", "1.1.1.1", "203.0.113.7, 10.0.0.2")) == "203.0.113.7"


def test_ipv6_cidr_and_normal_form() -> None:
    resolve = ClientIpResolver(PROXIES)
    assert resolve(scope("2001:db8:ffff::1", "2001:DB8:0:0::42")) == "2001:db8::42"
    assert resolve(scope("2001:db8:fffe::1", "203.0.113.7")) == "2001:db8:fffe::1"


def test_ipv4_mapped_peer_matches_ipv4_networks() -> None:
    resolve = ClientIpResolver(PROXIES)
    assert resolve(scope("::ffff:10.0.0.1", "203.0.113.7")) == "203.0.113.7"
    assert resolve(scope("::ffff:203.0.113.7")) == "203.0.113.7"


def test_ports_and_brackets_are_tolerated() -> None:
    resolve = ClientIpResolver(PROXIES)
    assert resolve(scope("10.0.0.1", "203.0.113.7:4711")) == "203.0.113.7"
    assert resolve(scope("10.0.0.1", "[2001:db8:1::1]:443")) == "2001:db8:1::1"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Garbage left of the client's address is the client's own business.
        ("not-an-ip, 203.0.113.7", "203.0.113.7"),
        # A garbled hop among our proxies: nothing to its left can be believed, so the
        # nearest proxy that is known stands for the client (never "1.2.3.4").
        ("1.2.3.4, unknown, 10.0.0.2", "10.0.0.2"),
        ("1.2.3.4, 999.1.1.1", "10.0.0.1"),
        ("\xff\xfe", "10.0.0.1"),
        ("[::1", "10.0.0.1"),
        ("[::1]x", "10.0.0.1"),
        ("203.0.113.7:http", "10.0.0.1"),
        # Empty entries carry no hop.
        (" , ,203.0.113.7,", "203.0.113.7"),
        ("", "10.0.0.1"),
    ],
)
def test_malformed_entries_are_never_believed(header: str, expected: str) -> None:
    assert ClientIpResolver(PROXIES)(scope("10.0.0.1", header)) == expected


def test_peer_that_is_not_an_ip_is_returned_as_is() -> None:
    assert ClientIpResolver(PROXIES)(scope("testclient", "203.0.113.7")) == "testclient"


def test_no_peer_is_none() -> None:
    assert ClientIpResolver(PROXIES)(scope(None, "203.0.113.7")) is None


def test_bad_trusted_proxy_setting_fails_loudly() -> None:
    with pytest.raises(ValueError, match="not-a-network"):
        ClientIpResolver(["10.0.0.0/8", "not-a-network"])


def test_request_form() -> None:
    request = Request(scope("10.0.0.1", "203.0.113.7"))
    assert ClientIpResolver(PROXIES)(request) == "203.0.113.7"
    assert ClientIpResolver([])(request) == "10.0.0.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 2001:db8::1 ", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("bad", None),
        ("[]:80", None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    parsed = parse_ip(text)
    assert (None if parsed is None else str(parsed)) == expected
