"""Whose failed authentications count together."""

from __future__ import annotations

import pytest

from app.middleware.auth import failure_bucket


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
        ("unknown", "unknown"),
    ],
)
def test_an_ipv4_address_counts_alone_and_an_ipv6_one_with_its_64(
    address: str, bucket: str
) -> None:
    assert failure_bucket(address) == bucket
