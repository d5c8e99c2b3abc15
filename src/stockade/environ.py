"""The environment a sandboxed command sees: secrets stay out unless the profile lets them in."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping

from .policy.model import EnvPolicy

# Always passed when present (none of them can carry a credential by themselves).
CORE = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TERM",
        "TZ",
        "PWD",
        "COLORTERM",
        "NO_COLOR",
        "FORCE_COLOR",
        "COLUMNS",
        "LINES",
        "PAGER",
        "EDITOR",
        "VISUAL",
    }
)

# Names that look like credentials (matched case-insensitively) are withheld by default.
SECRET_PATTERNS = (
    "*KEY*",
    "*SECRET*",
    "*TOKEN*",
    "*PASSW*",
    "*CREDENTIAL*",
    "*PRIVATE*",
    "*AUTH",
    "*AUTH_*",
    "*OAUTH*",
    "*COOKIE*",
    "*SESSION*",
    "*_PAT",
    "AWS_*",
    "AZURE_*",
    "GOOGLE_*",
    "GCLOUD_*",
    "*CONNECTION_STRING*",
    "*DSN*",
    "*WEBHOOK*",
    "VAULT_*",
    # Side doors to host services, useless (unreachable) inside anyway.
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "DOCKER_HOST",
)
# A value with userinfo in a URL (scheme://user:password@host) is a credential whatever its name.
URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@")


def _match(name: str, pattern: str) -> bool:
    """fnmatch, case-insensitive, with the common shapes (*X*, X*, *X) done without a regex:
    compiling dozens of patterns would cost more than the rest of a CLI run's planning."""
    core = pattern.strip("*")
    if "*" in core or "?" in core or "[" in core:
        return fnmatch.fnmatchcase(name, pattern)
    if pattern.startswith("*") and pattern.endswith("*") and len(pattern) > 1:
        return core in name
    if pattern.endswith("*"):
        return name.startswith(core)
    if pattern.startswith("*"):
        return name.endswith(core)
    return name == pattern


def _matches(name: str, patterns: tuple[str, ...]) -> str | None:
    upper = name.upper()
    return next((p for p in patterns if _match(upper, p.upper())), None)


def sandbox_env(host: Mapping[str, str], policy: EnvPolicy) -> tuple[dict[str, str], dict[str, str]]:
    """(environment to pass, withheld name -> the reason), before stockade's own settings."""
    allowed = set(policy.passthrough)
    deny = SECRET_PATTERNS + policy.deny
    env: dict[str, str] = {}
    withheld: dict[str, str] = {}
    for name, value in host.items():
        if name in allowed or name in CORE:
            env[name] = value
        elif pattern := _matches(name, deny):
            withheld[name] = f"name matches {pattern}"
        elif URL_WITH_PASSWORD.search(value):
            withheld[name] = "value holds a URL with a password"
        else:
            env[name] = value
    env.update(policy.set)
    return env, withheld
