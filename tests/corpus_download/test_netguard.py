"""The private-address guard: every IANA special-purpose range, and the IPv6 forms that carry an IPv4 address."""
from __future__ import annotations

import ipaddress

import pytest

from ccmb.corpus.download.netguard import refused_ip

REFUSED = [
    "0.0.0.0", "0.1.2.3", "10.1.2.3", "100.64.0.1", "100.100.100.200", "100.127.255.254", "127.0.0.1", "127.9.9.9",
    "169.254.169.254", "172.16.0.1", "172.31.255.255", "192.0.0.1", "192.0.0.170", "192.0.2.7", "192.88.99.1",
    "192.168.1.1", "198.18.0.1", "198.19.255.255", "198.51.100.3", "203.0.113.9", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.254", "255.255.255.255",
    "::", "::1", "::127.0.0.1", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "100::1",
    "64:ff9b:1::1", "5f00::1", "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:2::1", "2001:10::1",
    "2001:db8::1", "3fff::1",
    # IPv4 hidden in IPv6: mapped, NAT64 well-known prefix, 6to4
    "::ffff:127.0.0.1", "::ffff:100.100.100.200", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1", "2002:a9fe:a9fe::1", "2002:7f00:1::", "2002:c0a8:101::1", "2002:6464:64c8::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.32.0.1", "192.0.1.1",
           "192.31.196.1", "198.20.0.1", "223.255.255.255", "2606:4700::1111", "2a00:1450:4001::200e",
           "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2001:3::1", "2001:4:112::1"]


@pytest.mark.parametrize("addr", REFUSED)
def test_special_purpose_addresses_are_refused(addr):
    assert refused_ip(ipaddress.ip_address(addr)), addr


@pytest.mark.parametrize("addr", ALLOWED)
def test_public_addresses_are_allowed(addr):
    assert refused_ip(ipaddress.ip_address(addr)) is None, addr


def test_the_reason_names_the_range():
    assert "100.64.0.0/10" in refused_ip(ipaddress.ip_address("100.100.100.200"))
    assert "NAT64 169.254.169.254" in refused_ip(ipaddress.ip_address("64:ff9b::a9fe:a9fe"))
    assert "6to4 127.0.0.1" in refused_ip(ipaddress.ip_address("2002:7f00:1::"))
    assert "IPv4-mapped 10.0.0.1" in refused_ip(ipaddress.ip_address("::ffff:10.0.0.1"))
