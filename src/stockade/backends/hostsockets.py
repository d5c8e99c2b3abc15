"""Host unix sockets that a sandbox must not reach through the filesystem.

Abstract sockets live in the network namespace (a sandbox with network off has its own), but a
pathname socket is reachable by anyone who can see its path: docker.sock, D-Bus, ssh-agent,
X11. The usual socket directories are hidden whole, which also covers sockets bound there after
launch; every other path the host network namespace's /proc/net/unix lists (absolute binds made
in this namespace) is masked at launch. See docs/design-notes.md for what this leaves open.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping


def bound_paths(proc_net_unix: str = "/proc/net/unix") -> set[str]:
    """Paths of pathname sockets bound in the current network namespace that still exist.

    A socket whose file was unlinked stays listed until it is closed; it cannot be reached
    (nor masked) any more, so it is left out.
    """
    paths: set[str] = set()
    try:
        with open(proc_net_unix, encoding="utf-8", errors="replace") as fh:
            next(fh, None)  # header
            for line in fh:
                fields = line.split(None, 7)
                if len(fields) == 8 and fields[7].startswith("/"):
                    paths.add(fields[7].rstrip("\n"))
    except OSError:
        pass
    return {p for p in paths if _is_socket(p)}


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


# Per-user socket directories that servers create in /tmp: tmux, OpenSSH agents, X11/ICE,
# D-Bus, Emacs. Hidden whole when they exist, so a server started after launch is covered too.
TMP_SOCKET_PREFIXES = ("tmux-", "ssh-", "dbus-", "emacs")
TMP_SOCKET_NAMES = frozenset({".X11-unix", ".ICE-unix", ".font-unix"})


def socket_dirs(env: Mapping[str, str]) -> list[str]:
    """Directories where host services put their sockets: hidden whole, which also covers
    sockets bound there after launch (/run holds docker, D-Bus, systemd, the user runtime dir)."""
    dirs = ["/run", "/var/run"]
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(runtime)
    agent = env.get("SSH_AUTH_SOCK")
    if agent and os.path.basename(os.path.dirname(agent)).startswith("ssh-"):
        dirs.append(os.path.dirname(agent))  # OpenSSH's private ssh-XXXX directory, wherever it is
    try:
        with os.scandir("/tmp") as entries:
            dirs += [
                e.path
                for e in entries
                if (e.name.startswith(TMP_SOCKET_PREFIXES) or e.name in TMP_SOCKET_NAMES)
                and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        pass
    return [d for d in dict.fromkeys(os.path.realpath(d) for d in dirs) if os.path.isdir(d) and d != "/tmp"]
