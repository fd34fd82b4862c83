"""Network addresses: whether one names this machine only.

Plaintext is allowed on loopback only (internal services in development mode, the command
line's default gateway), so loopback is decided by parsing an IP address, never by a prefix:
`127.attacker.example` is a DNS name that resolves wherever its owner wants.
"""

from __future__ import annotations

import ipaddress


def is_loopback(address: str) -> bool:
    """Whether `address` (HOST, HOST:PORT, [IPv6]:PORT, or a gRPC `ipv4:`/`ipv6:` target)
    names a loopback IP address (127.0.0.0/8, ::1, or IPv4-mapped 127.0.0.0/8) or is exactly
    `localhost`. Any other name is not, whatever it starts with."""
    host = address.removeprefix("ipv4:").removeprefix("ipv6:")
    if host.startswith("["):
        host, bracket, _ = host[1:].partition("]")
        if not bracket:
            return False
    elif host.count(":") == 1:  # HOST:PORT; more colons: a bare IPv6 address
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback
