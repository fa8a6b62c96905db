"""Client address -> country, and nothing more: the IP is looked up, then forgotten.

`client_ip` honours X-Forwarded-For only from configured trusted proxies
(walking the chain from the right, skipping trusted hops). `GeoLocator`
reads any MaxMind-format country database (.mmdb: GeoLite2-Country,
DB-IP country lite, ...); without one every lookup answers None (-> ZZ).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import maxminddb

from protocol.countries import ISO_COUNTRIES

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """Trusted-proxy CIDRs from settings."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def parse_ip(text: str) -> IPAddress:
    """`ipaddress.ip_address` of a string, the same value, about four times faster for plain addresses.

    glibc's `inet_pton` takes exactly the forms `ipaddress` takes (dotted quads
    without leading zeros, RFC 4291 text) and parses them in C; anything else
    (a scoped IPv6 address, garbage) goes to `ipaddress`, which decides.
    Every ingest request parses its peer address.
    """
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        pass
    try:
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        return ipaddress.ip_address(text)


def _unmapped(address: IPAddress) -> IPAddress:
    # A dual-stack socket shows an IPv4 client as ::ffff:a.b.c.d. The client is the IPv4
    # address: keyed as IPv6 /64 every IPv4 client would share one rate-limit bucket.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_ip(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> IPAddress | None:
    """The address of the client, believing X-Forwarded-For only when the peer is a trusted proxy.

    IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) come back as the IPv4 address they carry.
    """
    try:
        address: IPAddress | None = _unmapped(parse_ip(peer)) if peer else None
    except ValueError:
        address = None
    if address is None or not trusted or not forwarded_for:
        return address
    if not any(address in net for net in trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            candidate = _unmapped(parse_ip(hop))
        except ValueError:
            return address  # a malformed chain: trust nothing beyond the proxy
        if not any(candidate in net for net in trusted):
            return candidate
        address = candidate
    return address


class GeoLocator:
    """Country lookups in a MaxMind-format database, or no database at all."""

    def __init__(self, database: Path | None) -> None:
        self._reader: Any = maxminddb.open_database(str(database)) if database else None

    def country(self, address: IPAddress | None) -> str | None:
        """ISO alpha-2 code of the address's country, or None when unknown."""
        if self._reader is None or address is None:
            return None
        try:
            record = self._reader.get(address)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return None
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):
            entry = record.get(key)
            if isinstance(entry, dict):
                code = entry.get("iso_code")
                if isinstance(code, str) and code.upper() in ISO_COUNTRIES:
                    return code.upper()
        return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
