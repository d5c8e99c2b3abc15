"""Built-in profiles, written in the same shape as a config file's `[profiles.NAME]` tables.

They go through the same validator as user files, so a built-in can never hold a key that a
user could not write.
"""

from __future__ import annotations

from typing import Any

BUILTIN_FILE = "<built-in profiles>"
GLOB_DEPTH = 8  # `**` in the built-ins matches at most this many components below a root

# Credentials in the home directory, hidden from the `workspace` profile (overridable by key).
# git over ssh still needs known_hosts and config, so the more specific entries reopen them;
# `:ssh_keys` then denies every key the SSH configuration names, wherever it lives (an exact
# entry beats a glob at the same path, and at a tie deny wins, so a key is never reopened).
SECRET_HOME_PATHS: dict[str, str] = {
    "~/.ssh": "deny",
    "~/.ssh/known_hosts*": "read",
    "~/.ssh/config": "read",
    ":ssh_keys": "deny",
    "~/.gnupg": "deny",
    "~/.aws": "deny",
    "~/.azure": "deny",
    "~/.config/gcloud": "deny",
    "~/.config/gh": "deny",
    "~/.docker/config.json": "deny",
    "~/.kube": "deny",
    "~/.netrc": "deny",
    "~/.pypirc": "deny",
    "~/.npmrc": "deny",
    "~/.git-credentials": "deny",
}

BUILTIN: dict[str, dict[str, Any]] = {
    "read-only": {
        "description": "Read the whole filesystem, write nothing (a private /tmp), network off.",
        "filesystem": {":root": "read"},
        "network": {"mode": "off"},
        "glob_scan_max_depth": GLOB_DEPTH,
    },
    "workspace": {
        "description": (
            "Read everything but home credentials and .env files, write the workspace roots, "
            "$TMPDIR and /tmp; "
            "protected metadata (.git config and hooks, .stockade, ...) stays read-only; "
            "network off."
        ),
        "filesystem": {
            ":root": "read",
            ":workspace_roots": "write",
            ":tmpdir": "write",
            ":slash_tmp": "write",
            **SECRET_HOME_PATHS,
            "**/.env": "deny",
            "**/.env.*": "deny",
        },
        "network": {"mode": "off"},
        "git": "protect",
        "glob_scan_max_depth": GLOB_DEPTH,
    },
    "full-access": {
        "description": "NO SANDBOX: the command runs unconfined, with the full environment.",
    },
}

DEFAULT_PROFILE = "workspace"
UNCONFINED = frozenset({"full-access"})
