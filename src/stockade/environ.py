"""The environment a sandboxed command sees: secrets stay out unless the profile lets them in."""

from __future__ import annotations

import fnmatch
import functools
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
    "OTEL_EXPORTER_OTLP_*HEADERS",  # the collector's API key usually travels here
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


@functools.cache
def _compiled(patterns: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """(shape, upper-cased core, pattern) per pattern: *X* / X* / *X / exact, or glob.

    The common shapes are matched without a regex: this runs for every variable of every command.
    """
    out = []
    for pattern in patterns:
        upper = pattern.upper()
        core = upper.strip("*")
        if any(c in core for c in "*?["):
            shape = "glob"
        elif upper.startswith("*") and upper.endswith("*") and len(upper) > 1:
            shape = "in"
        elif upper.endswith("*"):
            shape = "start"
        elif upper.startswith("*"):
            shape = "end"
        else:
            shape = "exact"
        out.append((shape, upper if shape == "glob" else core, pattern))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _matches(name: str, patterns: tuple[str, ...]) -> str | None:
    upper = name.upper()
    for shape, core, pattern in _compiled(patterns):
        if (
            (shape == "in" and core in upper)
            or (shape == "start" and upper.startswith(core))
            or (shape == "end" and upper.endswith(core))
            or (shape == "exact" and upper == core)
            or (shape == "glob" and fnmatch.fnmatchcase(upper, core))
        ):
            return pattern
    return None


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
