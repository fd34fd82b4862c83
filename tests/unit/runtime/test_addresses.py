"""Loopback is decided by parsing an IP address, never by a prefix (#9)."""

from __future__ import annotations

import pytest

from mixip.runtime.addresses import is_loopback


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "127.8.9.10:1",
        "[::1]:50051",
        "::1",
        "localhost:50051",
        "localhost",
        "ipv4:127.0.0.1:50051",
        "[::ffff:127.0.0.1]:50051",  # IPv4-mapped loopback is still this machine
    ],
)
def test_loopback_ip_addresses_and_exactly_localhost_are_loopback(address):
    assert is_loopback(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.attacker.example:50051",
        "127.0.0.1.nip.io:1",
        "127.0.0.1.attacker.example",
        "localhost.attacker.example:1",
        "localhost.:1",
        "LOCALHOST.attacker.example:1",
        "[::ffff:10.0.0.1]:1",
        "[::ffff:127.attacker.example]:1",
        "[::1.attacker.example]:1",
        "[::1:1",
        "127.1:1",
        "0.0.0.0:50051",
        "[::]:50051",
        "10.0.0.1:1",
        "gateway.example.com:443",
        "dns:///127.0.0.1:1",
        "",
    ],
)
def test_a_name_or_address_beyond_loopback_is_not_loopback(address):
    assert not is_loopback(address)
