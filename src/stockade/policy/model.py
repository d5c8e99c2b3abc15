"""The Profile: what the user wrote, symbolic and validated, before any path is resolved."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Access = Literal["read", "write", "deny"]
ACCESS_VALUES: tuple[str, ...] = ("read", "write", "deny", "none")
NETWORK_MODES: tuple[str, ...] = ("off", "proxy", "on")
GIT_MODES: tuple[str, ...] = ("protect", "read-only", "write")
BACKENDS: tuple[str, ...] = ("auto", "bwrap", "landlock", "seatbelt", "windows")

# Special path keys. Anchored keys may also carry a sub-path (`:workspace_roots` table form).
SPECIAL_KEYS: tuple[str, ...] = (
    ":root",
    ":minimal",
    ":workspace_roots",
    ":tmpdir",
    ":slash_tmp",
    ":home",
    ":ssh_keys",
)
WORKSPACE_ROOTS = ":workspace_roots"


@dataclass(frozen=True)
class FsRule:
    """One filesystem entry: `path` is relative to `anchor` when an anchor is set.

    anchor None: `path` is absolute or starts with `~`.
    anchor ":workspace_roots": `path` is "." or a relative path or glob under every root.
    Other special anchors: `path` is "." (the special location itself).
    `:home` (and `~` or the home path written out) expands to the home directory's children,
    never the directory itself, minus the sensitive ones. `:ssh_keys` is every private key,
    certificate and agent or master socket that the SSH configuration names.
    """

    anchor: str | None
    path: str
    access: Access
    source: str  # where it was written: "file: key" or "--flag", for explain

    @property
    def key(self) -> str:
        if self.anchor is None:
            return self.path
        return self.anchor if self.path == "." else f"{self.anchor}/{self.path}"


@dataclass(frozen=True)
class EnvPolicy:
    passthrough: tuple[str, ...] = ()  # names let through even when they look like secrets
    set: tuple[tuple[str, str], ...] = ()  # fixed values
    deny: tuple[str, ...] = ()  # extra name patterns withheld (fnmatch, case-insensitive)


@dataclass(frozen=True)
class ProxyPolicy:
    """`network.mode = "proxy"`: which hosts the filtering proxy lets through (deny beats allow)."""

    allow: tuple[str, ...] = ()  # "pypi.org", "*.pythonhosted.org", "**.github.com:443", "10.0.0.5"
    deny: tuple[str, ...] = ()
    allow_local_binding: bool = False  # allowed names may resolve to loopback/private addresses


LIMIT_KEYS: tuple[str, ...] = ("memory", "processes", "cpu_seconds", "file_size", "open_files")


@dataclass(frozen=True)
class Limits:
    """`[profiles.NAME.limits]`: resource limits on every process of the command (None: host's)."""

    memory: int | None = None  # bytes of address space per process (RLIMIT_AS)
    processes: int | None = None  # processes and threads the command may have at once
    cpu_seconds: int | None = None  # CPU time per process (SIGXCPU, then SIGKILL a second later)
    file_size: int | None = None  # bytes: the largest file a process may write (SIGXFSZ/EFBIG)
    open_files: int | None = None  # descriptors per process (RLIMIT_NOFILE)

    def items(self) -> list[tuple[str, int]]:
        return [(k, v) for k in LIMIT_KEYS if (v := getattr(self, k)) is not None]


@dataclass(frozen=True)
class Profile:
    name: str
    filesystem: tuple[FsRule, ...] = ()
    network: str = "off"
    proxy: ProxyPolicy = field(default_factory=ProxyPolicy)
    env: EnvPolicy = field(default_factory=EnvPolicy)
    git: str = "protect"
    unconfined: bool = False  # only full-access: runs without a sandbox, and is named so
    glob_scan_max_depth: int | None = None  # required by any `**` pattern: walks stay bounded
    skip_missing: bool = False  # skip write/read entries whose path does not exist
    description: str = ""
    config_files: tuple[str, ...] = ()  # the files it was read from: never writable inside
    backend: str = "auto"  # auto: bubblewrap where it works, else Landlock
    limits: Limits = field(default_factory=Limits)

    def with_rules(self, rules: list[FsRule]) -> Profile:
        """Later rules for the same key replace earlier ones; order is kept otherwise."""
        merged: dict[str, FsRule] = {r.key: r for r in self.filesystem}
        for rule in rules:
            merged.pop(rule.key, None)
            merged[rule.key] = rule
        return replace(self, filesystem=tuple(merged.values()))
