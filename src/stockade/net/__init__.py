"""Network mode "proxy": host rules and the filtering proxy the sandbox reaches through a bridge."""

from .proxy import Event, FilteringProxy, ProxyThread, json_lines
from .rules import Decision, HostRules, RuleError, check_rule, parse_rule

__all__ = [
    "Decision",
    "Event",
    "FilteringProxy",
    "HostRules",
    "ProxyThread",
    "RuleError",
    "check_rule",
    "json_lines",
    "parse_rule",
]
