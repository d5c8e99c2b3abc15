"""Host rules for the filtering proxy: which names and addresses a sandboxed command may reach.

    pypi.org             that name only (any port)
    *.pythonhosted.org   its subdomains, not the name itself
    **.github.com        the name and its subdomains
    github.com:443       one port only
    10.0.0.5, 10.0.0.0/8, [2001:db8::1]:443   addresses (a raw-IP request, or an allowed local one)

Names are normalized (case, trailing dot, IDNA) and malformed ones are refused when the policy
is loaded, never turned into a rule that silently matches nothing. Deny beats allow. An allowed
*name* still never reaches a loopback, link-local, private or host-own address unless
`allow_local_binding` is set or an address rule allows that address: a public name that
resolves to 169.254.169.254 must not open the cloud metadata service.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class RuleError(ValueError):
    """A malformed host rule or request target; `entry` is what was written."""

    def __init__(self, entry: str, problem: str) -> None:
        super().__init__(f"{entry!r}: {problem}")
        self.entry, self.problem = entry, problem


def normalize_host(name: str) -> str:
    """Lowercase ASCII (IDNA) form of a host name, or RuleError saying what is wrong."""
    if not name or any(ord(c) < 0x21 or ord(c) == 0x7F for c in name):
        raise RuleError(name, "a host name has no spaces, NUL or control characters")
    name = name[:-1] if name.endswith(".") else name
    labels = name.split(".")
    out = []
    for label in labels:
        if not label:
            raise RuleError(name, "empty label (two dots in a row, or a leading dot)")
        try:
            ascii_label = (label if label.isascii() else label.encode("idna").decode("ascii")).lower()
        except UnicodeError:
            raise RuleError(name, f"label {label!r} is not a valid internationalized name") from None
        if len(ascii_label) > 63:
            raise RuleError(name, f"label {label[:20]!r}... is longer than 63 characters")
        if not set(ascii_label) <= HOST_CHARS or ascii_label.startswith("-") or ascii_label.endswith("-"):
            raise RuleError(name, f"label {label!r} may hold only letters, digits, '-' and '_'")
        out.append(ascii_label)
    host = ".".join(out)
    if len(host) > 253:
        raise RuleError(name, "a host name is at most 253 characters")
    return host


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (`[v6]` accepted), or None when `text` is a name."""
    try:
        return ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Rule:
    text: str  # as written: the decision names it
    kind: str  # "name", "sub" (*.x), "tree" (**.x), "net" (address or CIDR)
    host: str = ""
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches_name(self, host: str, port: int) -> bool:
        if self.kind == "net" or (self.port is not None and self.port != port):
            return False
        if self.kind == "name":
            return host == self.host
        if self.kind == "sub":
            return host.endswith("." + self.host)
        return host == self.host or host.endswith("." + self.host)

    def matches_address(self, address: IPAddress, port: int) -> bool:
        if self.kind != "net" or (self.port is not None and self.port != port):
            return False
        assert self.network is not None
        return address.version == self.network.version and address in self.network


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6] or [v6]:port
        end = entry.find("]")
        rest = entry[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise RuleError(entry, "write an IPv6 address as [2001:db8::1] or [2001:db8::1]:443")
        return entry[: end + 1], _port(entry, rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(entry, port)
    return entry, None


def _port(entry: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:  # "²" is a digit too
        raise RuleError(entry, f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_rule(entry: str) -> Rule:
    """One allow/deny entry as a Rule, or RuleError."""
    if not isinstance(entry, str) or not entry.strip():
        raise RuleError(str(entry), "empty rule")
    host, port = _split_port(entry)
    if "/" in host:
        try:
            network = ipaddress.ip_network(host.strip("[]"), strict=True)
        except ValueError as exc:
            raise RuleError(entry, f"not a network: {exc}") from None
        return Rule(entry, "net", network=network, port=port)
    address = parse_address(host)
    if address is not None:
        return Rule(entry, "net", network=ipaddress.ip_network(address), port=port)
    kind = "name"
    if host.startswith("**."):
        kind, host = "tree", host[3:]
    elif host.startswith("*."):
        kind, host = "sub", host[2:]
    if "*" in host:
        raise RuleError(entry, "a wildcard goes only at the start: *.example.com or **.example.com")
    name = normalize_host(host)
    if kind != "name" and "." not in name:
        raise RuleError(entry, "a wildcard needs a domain with a dot after it (*.example.com)")
    return Rule(entry, kind, host=name, port=port)


def check_rule(entry: str) -> str | None:
    """What is wrong with `entry`, or None: for the policy loader's error messages."""
    try:
        parse_rule(entry)
    except RuleError as exc:
        return exc.problem
    return None


class Decision(NamedTuple):
    allowed: bool
    rule: str  # the rule that decided, or why nothing did


class HostRules:
    """The allow and deny lists, parsed once; deny beats allow."""

    def __init__(self, allow: tuple[str, ...], deny: tuple[str, ...], allow_local_binding: bool = False):
        self.allow = [parse_rule(e) for e in allow]
        self.deny = [parse_rule(e) for e in deny]
        self.allow_local_binding = allow_local_binding

    def decide_name(self, host: str, port: int) -> Decision:
        for rule in self.deny:
            if rule.matches_name(host, port):
                return Decision(False, f'denied by rule "{rule.text}"')
        for rule in self.allow:
            if rule.matches_name(host, port):
                return Decision(True, f'allowed by rule "{rule.text}"')
        return Decision(False, "not in the allow list")

    def decide_address(self, address: IPAddress, port: int, *, named: bool) -> Decision:
        """A raw-IP request (`named` False), or an address an allowed name resolved to."""
        address = unmapped(address)  # ::ffff:a.b.c.d is a.b.c.d: IPv4 rules must see it
        for rule in self.deny:
            if rule.matches_address(address, port):
                return Decision(False, f'denied by rule "{rule.text}"')
        for rule in self.allow:
            if rule.matches_address(address, port):
                return Decision(True, f'allowed by rule "{rule.text}"')
        if not named:
            return Decision(False, "not in the allow list")
        if is_local(address) and not self.allow_local_binding:
            return Decision(False, f"resolves to local address {address} (allow_local_binding is off)")
        return Decision(True, "")


def unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_local(address: IPAddress) -> bool:
    """Anything not globally routable (loopback, link-local, private, shared 100.64/10 where
    Alibaba Cloud keeps its metadata service, reserved, ...), multicast, or one of this host's
    own addresses (it can be bound here): nothing a public name should lead to."""
    address = unmapped(address)
    if not address.is_global or address.is_multicast:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True
