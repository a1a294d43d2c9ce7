"""The client's IP address, as far as it can be believed.

Rate limits key on it, so a client must not be able to choose it: `X-Forwarded-For` is
read only when the peer is one of `KEEL_SERVER_TRUSTED_PROXIES`, and then only from the
right, where our own proxies append, up to the first hop they did not vouch for.
Everything left of that hop was written by the client and is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import HTTPConnection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: str) -> IPAddress | None:
    """An address from a header or peer; tolerates a port and brackets; None if garbled."""
    text = value.strip()
    if text.startswith("["):  # "[2001:db8::1]:443"
        text, bracket, port = text[1:].partition("]")
        if not bracket or not (port == "" or (port[0] == ":" and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:  # "203.0.113.7:443"; bare IPv6 has several colons
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; one client, one key.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientIpResolver:
    """`client_ip` with the trusted networks parsed once (it runs on every request)."""

    __slots__ = ("_networks",)

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        networks: list[IPNetwork] = []
        for entry in trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                # A typo here would silently make XFF spoofable or ignored: fail at start.
                raise ValueError(f"trusted proxy {entry!r} is not an IP or CIDR") from exc
        self._networks = tuple(networks)

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._networks)

    def __call__(self, scope_or_request: HTTPConnection | Mapping[str, Any]) -> str | None:
        scope = (
            scope_or_request.scope
            if isinstance(scope_or_request, HTTPConnection)
            else scope_or_request
        )
        client = scope.get("client")
        if not client:
            return None
        peer_text = str(client[0])
        peer = parse_ip(peer_text)
        if peer is None:
            return peer_text  # not an IP (a test client's name): nothing to trust
        if not self.is_trusted(peer):
            return str(peer)

        nearest_trusted = peer
        for hop in reversed(_forwarded_for(scope.get("headers", ()))):
            if not hop.strip():
                continue  # ",," carries no hop
            address = parse_ip(hop)
            if address is None:
                # A garbled hop hides who connected to the proxy that wrote it, and
                # everything further left came from that unknown party: stop here.
                return str(nearest_trusted)
            if not self.is_trusted(address):
                return str(address)
            nearest_trusted = address
        return str(nearest_trusted)


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    # Several X-Forwarded-For fields are one list, in order (RFC 9110 §5.3).
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            hops.extend(value.decode("latin-1").split(","))
    return hops


def request_client_ip(connection: HTTPConnection) -> str | None:
    """The client IP of a request or WebSocket, by the app's one resolver (its trusted
    proxies parsed once at start-up)."""
    resolver: ClientIpResolver = connection.app.state.client_ip
    return resolver(connection)
