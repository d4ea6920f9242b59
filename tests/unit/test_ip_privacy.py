"""AUDIT_IP_MODE and pseudonymise-ips: what each mode keeps of an address."""

from __future__ import annotations

import pytest

from kpi_export.contract.ip_privacy import reduce_ip, truncate_ip


@pytest.mark.parametrize(
    ("stored", "truncated"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("203.0.113.0", "203.0.113.0"),  # already truncated: unchanged
        ("10.1.2.3:5000", "10.1.2.0"),  # as the Node original may have stored it
        ("::ffff:10.1.2.3", "10.1.2.0"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
        ("[2001:db8:abcd:12::1]:443", "2001:db8:abcd::"),
        ("2001:db8:1::", "2001:db8:1::"),
        ("198.51.100.7, 10.0.0.1", "198.51.100.0"),  # X-Forwarded-For: the client
        ("unknown", None),  # not an address, and may still say who it was
        ("", None),
    ],
)
def test_truncate_ip(stored: str, truncated: str | None) -> None:
    assert truncate_ip(stored) == truncated


@pytest.mark.parametrize(
    ("mode", "ip", "kept"),
    [
        ("full", "203.0.113.77", "203.0.113.77"),
        ("truncated", "203.0.113.77", "203.0.113.0"),
        ("none", "203.0.113.77", None),
        ("truncated", None, None),
        ("full", None, None),
    ],
)
def test_reduce_ip(mode: str, ip: str | None, kept: str | None) -> None:
    assert reduce_ip(ip, mode) == kept  # type: ignore[arg-type]
