"""Built-in profiles, written in the same shape as a config file's `[profiles.NAME]` tables.

They go through the same validator as user files, so a built-in can never hold a key that a
user could not write.
"""

from __future__ import annotations

from typing import Any

BUILTIN_FILE = "<built-in profiles>"

# Credentials in the home directory, hidden from the `workspace` profile (overridable by key).
# git over ssh still needs known_hosts and config, so the more specific entries reopen them.
# (Issue 3 extends this: `:home`, SSH-config key files, `**/.env` globs.)
SECRET_HOME_PATHS: dict[str, str] = {
    "~/.ssh": "deny",
    "~/.ssh/known_hosts": "read",
    "~/.ssh/config": "read",
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
    },
    "workspace": {
        "description": (
            "Read everything but home credentials, write the workspace roots, $TMPDIR and /tmp; "
            "protected metadata (.git config and hooks, .stockade, ...) stays read-only; "
            "network off."
        ),
        "filesystem": {
            ":root": "read",
            ":workspace_roots": "write",
            ":tmpdir": "write",
            ":slash_tmp": "write",
            **SECRET_HOME_PATHS,
        },
        "network": {"mode": "off"},
        "git": "protect",
    },
    "full-access": {
        "description": "NO SANDBOX: the command runs unconfined, with the full environment.",
    },
}

DEFAULT_PROFILE = "workspace"
UNCONFINED = frozenset({"full-access"})
