"""Network on Windows: an offline sandbox account, and Windows Firewall rules that block it.

The elevated backend runs the command as a local account of its own (`stockade-offline` when the
network is off or goes through the proxy, `stockade-online` when it is on), so firewall rules
can select the command's traffic by account. Windows Firewall lets a block rule win over any
allow rule, so "only the proxy's loopback ports" cannot be an allow rule on top of a block-all:
it is written as block rules covering everything else (every other address, and every other
port on loopback).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .model import FirewallRule

OFFLINE_ACCOUNT = "stockade-offline"
ONLINE_ACCOUNT = "stockade-online"
LOOPBACK = ("127.0.0.1", "::1")


def account_for(network: str) -> str:
    return ONLINE_ACCOUNT if network == "on" else OFFLINE_ACCOUNT


def _address_ranges_without(keep: str) -> list[str]:
    """Every address of `keep`'s family except `keep`, as at most two `a-b` ranges."""
    addr = ipaddress.ip_address(keep)
    top = (
        ipaddress.ip_address((1 << addr.max_prefixlen) - 1)
        if addr.version == 4
        else ipaddress.IPv6Address((1 << 128) - 1)
    )
    low = ipaddress.ip_address(0) if addr.version == 4 else ipaddress.IPv6Address(0)
    out = []
    if addr > low:
        out.append(f"{low}-{addr - 1}")
    if addr < top:
        out.append(f"{addr + 1}-{top}")
    return out


def port_ranges_without(ports: Iterable[int]) -> list[str]:
    """Every TCP port 1-65535 except `ports`, as ranges ("1-3127", "3129-65535")."""
    out, start = [], 1
    for port in sorted({int(p) for p in ports}):
        if not 1 <= port <= 65535:
            raise ValueError(f"proxy port {port} is out of range")
        if port > start:
            out.append(f"{start}-{port - 1}" if port - 1 > start else str(start))
        start = port + 1
    if start <= 65535:
        out.append(f"{start}-65535" if start < 65535 else "65535")
    return out


def firewall_rules(network: str, principal: str, proxy_ports: Iterable[int]) -> list[FirewallRule]:
    """Block rules for `principal` (the sandbox account): none when the network is on."""
    ports = tuple(proxy_ports)
    prefix = f"stockade {OFFLINE_ACCOUNT}"
    if network == "on":
        return []
    if network == "off" or not ports:
        return [FirewallRule(f"{prefix}: block all", principal, "any", ("any",), reason="network = off")]
    reason = f"network = proxy: only the proxy on loopback port {', '.join(map(str, ports))}"
    others = [r for addr in LOOPBACK for r in _address_ranges_without(addr)]
    return [
        FirewallRule(f"{prefix}: block all but loopback", principal, "any", tuple(others), reason=reason),
        FirewallRule(
            f"{prefix}: block other loopback tcp ports",
            principal,
            "tcp",
            LOOPBACK,
            tuple(port_ranges_without(ports)),
            reason=reason,
        ),
        FirewallRule(f"{prefix}: block loopback udp", principal, "udp", LOOPBACK, reason=reason),
    ]


LOOPBACK_NOTE = (
    "network: the firewall blocks the sandbox account's loopback connections as well (Windows cannot tell "
    "the command's own loopback servers from the host's); where Windows exempts loopback traffic from "
    "firewall rules, host services on 127.0.0.1 stay reachable: scripts/smoke-windows.ps1 checks this"
)
