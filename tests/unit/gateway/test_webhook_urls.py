"""Which webhook URLs the gateway takes (gateway/webhooks.py): https to a public host, or with
the development setting anything http(s) with a host."""

from __future__ import annotations

import pytest

from gateway.webhooks import check_url, refused_address
from mixip.runtime.validation import Checks

PUBLIC = ["https://hooks.example.com/x?a=1", "https://8.8.8.8:8443/x", "https://[2001:4860::8888]/"]
PRIVATE = [
    "https://127.0.0.1/x",
    "https://10.0.0.1/x",
    "https://192.168.0.1/x",
    "https://100.64.0.1/x",
    "https://169.254.169.254/x",
    "https://224.0.0.1/x",
    "https://0.0.0.0/x",
    "https://[::1]/x",
    "https://[fe80::1]/x",
    "https://[ff02::1]/x",
    "https://[::ffff:10.0.0.1]/x",
    "https://localhost/x",
    "https://a.localhost/x",
]
NEVER = ["", "ftp://h/x", "https:///x", "https://u:p@h/x", "https://h/x#f", "https://h:0x/", "h/x"]


def _violations(url: str, allow_private: bool) -> list[str]:
    checks = Checks()
    check_url(checks, "url", url, allow_private=allow_private)
    assert all(v.field == "url" for v in checks.violations)
    return [v.description for v in checks.violations]


@pytest.mark.parametrize("url", PUBLIC)
def test_https_to_a_public_host_is_taken(url):
    assert _violations(url, allow_private=False) == []


@pytest.mark.parametrize("url", PRIVATE)
def test_a_private_loopback_link_local_or_multicast_host_needs_the_development_setting(url):
    assert _violations(url, allow_private=False) != []
    assert _violations(url, allow_private=True) == []


@pytest.mark.parametrize("url", NEVER)
def test_no_setting_takes_a_url_without_a_host_or_with_credentials(url):
    assert _violations(url, allow_private=True) != []


def test_http_only_with_the_development_setting():
    assert _violations("http://hooks.example.com/x", allow_private=False) != []
    assert _violations("http://hooks.example.com/x", allow_private=True) == []


@pytest.mark.parametrize(
    ("address", "refused"),
    [("8.8.8.8", False), ("127.0.1.1", True), ("::ffff:127.0.0.1", True), ("fe80::1%eth0", True)],
)
def test_resolved_addresses_are_judged_the_same_way(address, refused):
    assert refused_address(address) is refused
