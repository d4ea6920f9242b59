"""How much of the client address an audit row keeps (AUDIT_IP_MODE), as the web analytics practice has it:
`full`, `truncated` (IPv4 to its /24, IPv6 to its /48) or `none`. Pure functions."""

from __future__ import annotations

import ipaddress
from typing import Literal

from kpi_export.contract.fields import canonical_address

IpMode = Literal["full", "truncated", "none"]
IPV4_PREFIX = 24
IPV6_PREFIX = 48


def truncate_ip(text: str) -> str | None:
    """The network of the address `text` names (10.1.2.3 -> 10.1.2.0, 2001:db8:1:2::5 -> 2001:db8:1::);
    None for text that is not an address, which may still say who someone is."""
    address = canonical_address(text)
    if address is None:
        return None
    prefix = IPV4_PREFIX if ":" not in address else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def reduce_ip(ip: str | None, mode: IpMode) -> str | None:
    """The value of the `ip` column under `mode`."""
    if ip is None or mode == "full":
        return ip
    if mode == "none":
        return None
    return truncate_ip(ip)
