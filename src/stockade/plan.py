"""materialize(Profile, Context) -> Plan: every symbolic key resolved to concrete paths.

The Plan is plain data and platform-neutral. The effective access of any path is the access
of its nearest entry (itself or an ancestor); a path under no entry is not visible at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

from . import globcache, globs, home, hostdirs
from .environ import sandbox_env
from .errors import ConfigError
from .policy.builtin import BUILTIN_FILE
from .policy.model import WORKSPACE_ROOTS, Access, FsRule, Limits, Profile, ProxyPolicy
from .protect import Protected, protected_in
from .sshconfig import SshPath, ssh_config_paths

Kind = Literal["dir", "file", "missing", "scratch"]
RANK: dict[str, int] = {"read": 0, "write": 1, "deny": 2}  # equal specificity: deny > write > read
NARROW: dict[str, int] = {"deny": 0, "read": 1, "write": 2}  # for protection: pick the narrower
MINIMAL = hostdirs.POSIX_MINIMAL
SEP = os.sep


@dataclass(frozen=True)
class Context:
    """Where a command runs. Workspace roots are always explicit: empty means the cwd."""

    cwd: str
    roots: tuple[str, ...]
    home: str
    tmpdir: str | None
    env: Mapping[str, str]
    uid: int

    @classmethod
    def current(
        cls,
        cwd: str | None = None,
        roots: tuple[str, ...] | list[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Context:
        env = dict(os.environ if env is None else env)
        try:
            cwd = os.path.abspath(cwd or os.getcwd())
        except FileNotFoundError:
            raise ConfigError("the current directory no longer exists", key="cwd") from None
        return cls(
            cwd=cwd,
            roots=tuple(os.path.normpath(os.path.join(cwd, r)) for r in roots),
            home=home_dir(env),
            tmpdir=hostdirs.tmp_dir(env),
            env=env,
            uid=os.getuid() if hasattr(os, "getuid") else -1,  # Windows has no uid
        )

    @property
    def workspace_roots(self) -> tuple[str, ...]:
        return self.roots or (self.cwd,)


def home_dir(env: Mapping[str, str], os_name: str = os.name) -> str:
    """The user's home: USERPROFILE on Windows (HOME there is often a leftover of some POSIX
    toolchain), HOME elsewhere; the platform's own lookup when the environment has neither."""
    names = ("USERPROFILE", "HOME") if os_name == "nt" else ("HOME",)
    return next((env[n] for n in names if env.get(n)), None) or os.path.expanduser("~")


@dataclass(frozen=True)
class PathRule:
    path: str  # canonical: where the backend enforces it
    access: Access
    kind: Kind
    reason: str  # the rule that put it here, for explain
    lexical: str  # the path as the rule named it (differs when symlinks are involved)
    pinned: bool = False  # must be its own mount point (so it cannot be renamed or deleted)
    glob: bool = False  # put here by a glob match (an exact entry at the same path beats it)


@dataclass(frozen=True)
class Placeholder:
    """A protected or denied path that does not exist yet: created before launch, removed after."""

    path: str
    kind: Literal["dir", "file", "commondir"]


@dataclass(frozen=True)
class GlobEntry:
    """A glob as written (absolute), kept beside its matches: a backend that judges paths when
    they are used (Seatbelt) covers files created later too; mounts only cover the matches."""

    pattern: str
    access: Access
    reason: str
    depth: int  # `**` spans at most this many directories (glob_scan_max_depth)


@dataclass(frozen=True)
class Plan:
    profile: str
    unconfined: bool
    cwd: str
    roots: tuple[str, ...]
    rules: tuple[PathRule, ...]
    placeholders: tuple[Placeholder, ...]
    network: str
    tmpdir: str
    env: dict[str, str] = field(hash=False)
    withheld: dict[str, str] = field(hash=False)
    notes: tuple[str, ...] = ()
    backend: str = "auto"  # which backend the profile asked for (auto|bwrap|landlock|seatbelt|windows)
    proxy: ProxyPolicy | None = None  # network "proxy": the hosts the filtering proxy lets through
    limits: Limits = field(default_factory=Limits)  # resource limits on every process inside
    globs: tuple[GlobEntry, ...] = ()  # the patterns behind the `glob` entries above
    # Absolute paths (lexical and canonical) no grant may cover, not even by inheritance: what
    # `:home` withheld and what the SSH configuration names (ACL backends must keep off them).
    sensitive: tuple[str, ...] = ()

    def access(self, path: str) -> Access | None:
        """Effective access of a canonical path; None when it is not visible."""
        by_path = {r.path: r.access for r in self.rules}
        return nearest_access(by_path, path)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["placeholders"] = [asdict(p) for p in self.placeholders]
        return data


def nearest_access(by_path: Mapping[str, str], path: str) -> Access | None:
    """Access of the nearest entry at or above `path`; None when no entry covers it."""
    while True:
        if path in by_path:
            return by_path[path]  # type: ignore[return-value]
        up = os.path.dirname(path)
        if up == path:  # `/`, `C:\\`, or nothing left of a relative path
            return None
        path = up


def _kind(path: str) -> Kind:
    if os.path.isdir(path):
        return "dir"
    return "file" if os.path.exists(path) else "missing"


class Item(NamedTuple):
    """One concrete path (or absolute glob) a rule names; `reason` overrides the rule's source."""

    path: str
    required: bool = True  # a missing path is an error (unless the profile skips missing ones)
    reason: str | None = None
    pattern: bool = False  # `path` is a glob; its literal parts (a root, home) are escaped


def _user_name(ctx: Context) -> str:
    """The name `%u` stands for in the SSH config: the password database's, where there is one."""
    try:
        import pwd
    except ImportError:  # Windows
        return ctx.env.get("USERNAME") or ctx.env.get("USER", "")
    try:
        return pwd.getpwuid(ctx.uid).pw_name
    except (KeyError, OverflowError):
        return ctx.env.get("USER", "")


class _Builder:
    def __init__(self, profile: Profile, ctx: Context, roots: tuple[str, ...]) -> None:
        self.profile = profile
        self.ctx = ctx
        self.roots = roots
        self.entries: dict[str, PathRule] = {}
        self.placeholders: list[Placeholder] = []
        self.notes: list[str] = []
        self.home_grants: set[str] = set()  # canonical paths a `:home` grant expanded to
        self.sensitive: set[str] = set()  # what no grant may cover: Plan.sensitive
        self._ssh: tuple[SshPath, ...] | None = None

    def paths(self, rule: FsRule) -> list[Item]:
        """Concrete lexical paths (or absolute globs) for one rule."""
        home = self.ctx.home
        # What the user wrote may be a glob (`[[]` escapes a `[`); the roots and the home it is
        # joined to are always literal, whatever their names hold.
        pattern = globs.is_pattern(rule.path)
        fixed = globs.escape if pattern else str
        written = rule.path if pattern else globs.unescape(rule.path)
        if rule.anchor is None:
            path = fixed(home) + written[1:] if written.startswith("~") else written
            if not pattern:
                path = os.path.normpath(path)
            is_home = os.path.normpath(path) in (home, os.path.realpath(home))
            if is_home and not pattern and rule.access != "deny":
                return self._home(rule)
            # Built-in entries name paths a host may not have (~/.aws): optional, never an error.
            items = [Item(path, not _builtin(rule.source), pattern=pattern)]
            if pattern and rule.access == "deny":  # a deny errs towards hiding more: also the
                items += self._as_named(home + rule.path[1:] if written.startswith("~") else rule.path)
            return items
        if rule.anchor == WORKSPACE_ROOTS:
            if rule.path == ".":
                return [Item(root) for root in self.roots]
            items = [Item(os.path.join(fixed(root), written), pattern=pattern) for root in self.roots]
            if pattern and rule.access == "deny":
                items += [i for root in self.roots for i in self._as_named(os.path.join(root, rule.path))]
            return items
        if rule.anchor == ":root":
            # Windows has a root per drive: those of the cwd, roots, home, system and interpreter.
            used = (self.ctx.cwd, *self.roots, home, *hostdirs.minimal(self.ctx.env))
            return [Item(p) for p in hostdirs.fs_roots(used)]
        if rule.anchor == ":minimal":
            return [Item(p, False) for p in hostdirs.minimal(self.ctx.env)]
        if rule.anchor == ":tmpdir":
            if not self.ctx.tmpdir:
                names = "TEMP nor TMP is" if os.name == "nt" else "TMPDIR is not"
                self.notes.append(f"{rule.source}: {names} set, nothing to grant")
                return []
            return [Item(self.ctx.tmpdir, False)]
        if rule.anchor == ":slash_tmp":
            slash_tmp = hostdirs.slash_tmp()
            if slash_tmp is None and not _builtin(rule.source):
                self.notes.append(f"{rule.source}: this system has no /tmp, nothing to grant")
            return [Item(slash_tmp, False)] if slash_tmp else []
        if rule.anchor == ":home":
            return self._home(rule) if rule.access != "deny" else [Item(home)]
        if rule.anchor == ":ssh_keys":
            items = []
            for p in self.ssh_paths():
                if p.secret and p.pattern and globs.at_root(p.path):
                    raise ConfigError(  # fail closed: the key would otherwise stay readable
                        f"{p.keyword} {p.path} at {p.origin} can only be denied by walking the whole "
                        "filesystem; move it under a directory, or deny it yourself and set "
                        '":ssh_keys" = "read" in your profile',
                        key=rule.source,
                    )
                if p.secret:
                    items.append(Item(p.path, False, f"{rule.source} ({p.keyword} at {p.origin})", p.pattern))
            return items
        raise ConfigError(f"special path {rule.anchor} is not supported here", key=rule.source)

    @staticmethod
    def _as_named(path: str) -> list[Item]:
        """A denied pattern's text read as a plain path (a file really called `id[1]`), if it exists."""
        return [Item(path, False)] if os.path.lexists(path) else []

    def ssh_paths(self) -> tuple[SshPath, ...]:
        if self._ssh is None:
            self._ssh, notes = ssh_config_paths(
                self.ctx.home, self.ctx.env, user=_user_name(self.ctx), uid=self.ctx.uid
            )
            self.notes += notes
            self.sensitive |= _lexical_and_canonical(self._ssh_literal())
        return self._ssh

    def _ssh_literal(self) -> list[str]:
        """The SSH paths as literal paths: a pattern's fixed prefix holds everything it matches."""
        return [globs.split(p.path)[0] if p.pattern else p.path for p in self.ssh_paths()]

    def _home(self, rule: FsRule) -> list[Item]:
        sensitive = home.sensitive_paths(self.ctx.home, self._ssh_literal())
        grants, withheld, notes = home.home_grants(self.ctx.home, sensitive)
        self.notes += [f"{rule.source}: {n}" for n in notes]
        self.home_grants.update(os.path.realpath(g) for g in grants)
        self.sensitive |= _lexical_and_canonical(withheld)
        return [Item(g, False, f"{rule.source} (a child of home)") for g in grants]

    def sensitive_paths(self) -> tuple[str, ...]:
        """Plan.sensitive: the sensitive paths, and the canonical target of every entry found
        inside one (a key a glob matched through a symlink lives where the link points)."""
        out = set(self.sensitive)
        for rule in self.entries.values() if self.sensitive else ():
            if _inside(rule.lexical, self.sensitive):
                out.add(rule.path)
        return tuple(sorted(out))

    def add(self, lexical: str, access: Access, reason: str, required: bool, glob: bool = False) -> None:
        canonical = os.path.realpath(lexical)
        kind = _kind(canonical)
        if kind == "missing" and access != "deny":
            if required and not self.profile.skip_missing:
                raise ConfigError(
                    f"{lexical} does not exist (create it, or set skip_missing = true in the "
                    "profile to skip missing paths)",
                    key=reason,
                )
            if not _builtin(reason):
                self.notes.append(f"{reason}: {lexical} does not exist, skipped")
            return
        current = self.entries.get(canonical)
        # At one path an exact entry beats a glob match; then deny > write > read.
        if current is None or (not glob, RANK[access]) > (not current.glob, RANK[current.access]):
            self.entries[canonical] = PathRule(canonical, access, kind, reason, lexical, glob=glob)

    def effective(self, path: str) -> Access | None:
        while True:
            rule = self.entries.get(path)
            if rule is not None:
                return rule.access
            up = os.path.dirname(path)
            if up == path:
                return None
            path = up

    def protect(self, no_placeholders: set[str]) -> None:
        """Apply protected metadata in every writable directory. It only ever narrows access.

        Missing protected names are created only where a project lives (roots and directories
        the user named), never in tmp or in the children a `:home` grant expanded to.
        """
        writable = sorted(p for p, r in self.entries.items() if r.access == "write" and r.kind == "dir")
        found: list[Protected] = []
        for root in writable:
            for item in protected_in(root, self.profile.git):
                if item.placeholder and root in no_placeholders and not os.path.lexists(item.path):
                    continue  # nothing to guard in a scratch dir that is not a workspace
                found.append(item)
        read_only: list[str] = []
        for item in sorted(found, key=lambda p: p.path.count(SEP)):
            path = os.path.realpath(item.path)
            current = self.effective(path)
            if item.grant and current != "deny":
                current = "write"  # a verified linked worktree: git needs its gitdir writable
            if current is None or NARROW[current] < NARROW[item.access]:
                continue  # already narrower than the protection asks
            if item.access == "read" or current == "write":
                kind = _kind(path)
                if item.placeholder:
                    self.placeholders.append(Placeholder(item.path, item.placeholder))
                    if kind == "missing":
                        kind = "dir" if item.placeholder == "dir" else "file"
                pinned = item.access == "write"
                self.entries[path] = PathRule(path, item.access, kind, item.reason, item.path, pinned)
                if item.access == "read":
                    read_only.append(path)
        for ro in read_only:
            prefix = ro.rstrip(SEP) + SEP
            for p, r in list(self.entries.items()):
                if p.startswith(prefix) and r.access == "write":
                    del self.entries[p]
                    self.notes.append(f"{r.reason}: {p} stays read-only (inside protected {ro})")

    def protect_policy(self, paths: list[str]) -> None:
        """stockade's own config stays read-only: a command must not rewrite the next one's policy."""
        for path in paths:
            canonical = os.path.realpath(path)
            if self.effective(canonical) != "write":
                continue
            kind = _kind(canonical)
            if kind == "missing":
                if self.effective(os.path.dirname(canonical)) != "write":
                    continue
                self.placeholders.append(Placeholder(canonical, "dir"))
                kind = "dir"
            self.entries[canonical] = PathRule(canonical, "read", kind, "stockade's own config", path)

    def missing_denies(self) -> None:
        """A denied path that does not exist but could be created inside gets a placeholder."""
        for path, rule in list(self.entries.items()):
            if rule.kind == "missing" and rule.access == "deny":
                parent = self.effective(os.path.dirname(path))
                if parent == "write":
                    self.placeholders.append(Placeholder(path, "dir"))
                    self.entries[path] = PathRule(path, "deny", "dir", rule.reason, rule.lexical)
                else:
                    del self.entries[path]
                    if not _builtin(rule.reason):
                        self.notes.append(f"{rule.reason}: {path} does not exist and cannot be created")


def _lexical_and_canonical(paths: Iterable[str]) -> set[str]:
    return {q for p in paths for q in (os.path.normpath(p), os.path.realpath(p))}


def _inside(path: str, tops: set[str]) -> bool:
    """`path` is one of `tops` or lies below one."""
    while path not in tops:
        up = os.path.dirname(path)
        if up == path:
            return False
        path = up
    return True


def _policy_files(profile: Profile, ctx: Context) -> list[str]:
    xdg = ctx.env.get("XDG_CONFIG_HOME") or os.path.join(ctx.home, ".config")
    return [os.path.join(xdg, "stockade"), *profile.config_files]


def _builtin(source: str) -> bool:
    return source.startswith(BUILTIN_FILE)


def _roots(ctx: Context) -> tuple[str, ...]:
    out = []
    for root in ctx.workspace_roots:
        if not os.path.isdir(root):
            what = "does not exist" if not os.path.exists(root) else "is not a directory"
            raise ConfigError(f"workspace root {root} {what}", key="--root")
        out.append(os.path.realpath(root))
    return tuple(dict.fromkeys(out))


def _safe_directory(env: dict[str, str], roots: tuple[str, ...], uid: int) -> None:
    """git refuses repos owned by another user; trust the workspace roots through the env only."""
    if uid < 0:
        return  # no uids to compare (Windows): its backend adds safe.directory where it needs it
    extra = []
    for root in roots:
        try:
            owner = os.stat(os.path.join(root, ".git")).st_uid
        except OSError:
            continue
        if owner != uid:
            extra.append(root)
    if not extra:
        return
    count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    for root in extra:
        env[f"GIT_CONFIG_KEY_{count}"] = "safe.directory"
        env[f"GIT_CONFIG_VALUE_{count}"] = root
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)


def _scratch(b: _Builder, ctx: Context, roots: tuple[str, ...]) -> str:
    """No tmp is writable: a private one (`kind = "scratch"`). On Linux a tmpfs over /tmp, under
    which the roots and cwd that live there are bound again. On Windows nothing can be mounted:
    the entry names `stockade-tmp` below the host's tmp, and the backend makes a fresh directory
    there for each run (`mkdtemp`), writable, and removes it after."""
    if os.name == "nt":
        host_tmp = os.path.realpath(ctx.tmpdir or hostdirs.fallback_tmp(ctx.env))
        path = os.path.join(host_tmp, "stockade-tmp")
        reason = "no writable tmp granted: private, one per run"
        b.entries[path] = PathRule(path, "write", "scratch", reason, path)
        return path
    if "/tmp" not in b.entries:
        # Keep the roots and cwd that live under /tmp visible as they were, on top of it.
        for path in {*roots, os.path.realpath(ctx.cwd)}:
            access = b.effective(path)
            if path.startswith("/tmp/") and access and path not in b.entries:
                b.entries[path] = PathRule(path, access, "dir", "kept visible over private /tmp", path)
        reason = "no writable tmp granted: private tmpfs"
        b.entries["/tmp"] = PathRule("/tmp", "write", "scratch", reason, "/tmp")
    return "/tmp"


def materialize(profile: Profile, ctx: Context) -> Plan:
    roots = _roots(ctx)
    if profile.unconfined:
        return Plan(
            profile.name,
            True,
            ctx.cwd,
            roots,
            (),
            (),
            "on",
            ctx.tmpdir or hostdirs.fallback_tmp(ctx.env),
            dict(ctx.env),
            {},
            ("NO SANDBOX: full-access runs the command unconfined",),
        )
    b = _Builder(profile, ctx, roots)
    wanted = [(rule, b.paths(rule)) for rule in profile.filesystem]
    patterns = [item.path for _, items in wanted for item in items if item.pattern]
    # One walk per base directory for every pattern of the profile together.
    try:
        matches: dict[str, list[str]] = {}
        if patterns:
            # The store carries what earlier stockade processes learnt, revalidated entry by entry.
            matches = globs.expand_all(patterns, profile.glob_scan_max_depth or 0, globcache.store())
    except globs.TooBroad as exc:
        source = next(r.source for r, items in wanted for i in items if i.path == exc.pattern)
        raise ConfigError(
            f"{exc.pattern} lists more than {globs.MAX_WALKED_DIRS} directories before launch; lower "
            "glob_scan_max_depth, give the pattern a longer fixed prefix, or narrow the workspace roots",
            key=source,
        ) from None
    glob_entries: list[GlobEntry] = []
    for rule, items in wanted:
        for item in items:
            reason = item.reason or rule.source
            if not item.pattern:
                b.add(os.path.normpath(item.path), rule.access, reason, item.required)
                continue
            found = matches[item.path]
            glob_entries.append(
                GlobEntry(os.path.normpath(item.path), rule.access, reason, profile.glob_scan_max_depth or 0)
            )
            if not found and not _builtin(reason):
                b.notes.append(f"{reason}: {item.path} matches nothing now")
            for path in found:
                b.add(path, rule.access, reason, False, glob=True)
    tmps = [t for t in (ctx.tmpdir, hostdirs.slash_tmp()) if t]
    no_placeholders = {os.path.realpath(p) for p in tmps} | b.home_grants
    b.protect(no_placeholders)
    b.protect_policy(_policy_files(profile, ctx))
    b.missing_denies()

    tmpdir = next((t for t in tmps if b.effective(os.path.realpath(t)) == "write"), None)
    if tmpdir is None:
        tmpdir = _scratch(b, ctx, roots)
    cwd = os.path.realpath(ctx.cwd)
    if b.effective(cwd) in (None, "deny"):
        raise ConfigError(
            f"the working directory {ctx.cwd} is not readable under profile {profile.name!r}", key="cwd"
        )

    env, withheld = sandbox_env(ctx.env, profile.env)
    env.update(hostdirs.tmp_env(tmpdir))
    env["PWD"] = ctx.cwd
    _safe_directory(env, roots, ctx.uid)
    rules = tuple(sorted(b.entries.values(), key=lambda r: r.path))
    return Plan(
        profile.name,
        False,
        ctx.cwd,
        roots,
        rules,
        tuple({p.path: p for p in b.placeholders}.values()),  # one path may be protected twice
        profile.network,
        tmpdir,
        env,
        withheld,
        tuple(b.notes),
        profile.backend,
        profile.proxy if profile.network == "proxy" else None,
        profile.limits,
        tuple(glob_entries),
        b.sensitive_paths(),
    )
