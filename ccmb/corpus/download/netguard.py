"""Which addresses a download may connect to: public unicast only, unless ``--allow-private``.

The guard refuses every range of the IANA IPv4 and IPv6 Special-Purpose Address Registries that is not
globally reachable, plus multicast and the reserved blocks, and looks inside the IPv6 forms that carry an
IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``): such an address
is refused when the IPv4 address it carries is. Teredo (``2001::/32``) is refused outright (it tunnels to
an address the packet alone does not reveal). IPv6 outside global unicast (``2000::/3``) is refused.

:func:`refused_ip` is checked on the address actually connected to (after DNS, at every redirect hop), by
:mod:`ccmb.corpus.download.http_fetch`.
"""
from __future__ import annotations

import ipaddress
from typing import List, Optional, Tuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: IPv4 ranges refused (network, what it is): the IANA IPv4 Special-Purpose Address Registry's entries that
#: are not globally reachable, the deprecated 6to4 relay anycast, multicast and limited broadcast.
IPV4_REFUSED: List[Tuple[str, str]] = [
    ("0.0.0.0/8", "'this network'"),
    ("10.0.0.0/8", "private-use"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT; cloud metadata services)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata services)"),
    ("172.16.0.0/12", "private-use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private-use"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "limited broadcast"),
]

#: IPv6 ranges inside global unicast (2000::/3) that are refused; everything outside 2000::/3 is refused too
#: (loopback, unspecified, IPv4-compatible, discard-only, ULA fc00::/7, link-local fe80::/10, site-local,
#: multicast ff00::/8, SRv6 SIDs 5f00::/16 ...), except the forms that embed an IPv4 address (checked by it).
IPV6_REFUSED: List[Tuple[str, str]] = [
    ("2001::/32", "Teredo tunnelling"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
]
#: Globally reachable entries inside a refused block (AMT, AS112-v6): allowed.
IPV6_ALLOWED_INSIDE: List[str] = ["2001:3::/32", "2001:4:112::/48"]
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")

_V4 = [(ipaddress.ip_network(n), what) for n, what in IPV4_REFUSED]
_V6 = [(ipaddress.ip_network(n), what) for n, what in IPV6_REFUSED]
_V6_OK = [ipaddress.ip_network(n) for n in IPV6_ALLOWED_INSIDE]


def parse_ip(text: str) -> IPAddress:
    """An address from a socket address string (an IPv6 scope ``%eth0`` is dropped)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def refused_ip(ip: IPAddress) -> Optional[str]:
    """Why ``ip`` is refused (e.g. ``"100.64.0.0/10 shared address space ..."``), or None for a public address."""
    if ip.version == 4:
        for net, what in _V4:
            if ip in net:
                return f"{net} {what}"
        return None
    mapped = ip.ipv4_mapped
    if mapped is not None:
        inner = refused_ip(mapped)
        return f"IPv4-mapped {mapped}: {inner}" if inner else None
    if ip in NAT64:
        v4 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        inner = refused_ip(v4)
        return f"NAT64 {v4}: {inner}" if inner else None
    if ip in SIX_TO_FOUR:
        v4 = ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
        inner = refused_ip(v4)
        return f"6to4 {v4}: {inner}" if inner else None
    if ip not in GLOBAL_UNICAST:
        return f"{_v6_kind(ip)} (outside IPv6 global unicast 2000::/3)"
    if any(ip in net for net in _V6_OK):
        return None
    for net, what in _V6:
        if ip in net:
            return f"{net} {what}"
    return None


def _v6_kind(ip: ipaddress.IPv6Address) -> str:
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in ipaddress.ip_network("fc00::/7"):
        return "unique local"
    return "special-purpose"
