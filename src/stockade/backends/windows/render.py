"""render(Plan) -> WindowsPlan: the Plan's entries as ACEs, SIDs, firewall rules and refusals.

Two backends. `restricted`: the command runs as the caller with a write-restricted token whose
restricting SIDs are the workspace SIDs and the generic SID, so a write needs an ACE for one of
them; reads are judged by the caller's own account, so read denials cannot be enforced (refused).
`elevated`: the command runs as a sandbox account of its own (the offline one unless the network
is on), with the same write-restricted token on top; reads then need grants to that account, and
deny ACEs for it hold.

ACEs are emitted shallow to deep and only where inheritance does not already give the answer,
each stating what the entry needs for each principal. Windows evaluates explicit ACEs, then
those inherited from the parent, then the grandparent's, so the nearest entry decides, as in the
Plan. Windows grants delete when the object allows DELETE *or* its parent allows DELETE_CHILD, so
a protected path is pinned by denying DELETE_CHILD on each directory between it and the writable
entry (object-only) and DELETE on the directories in between: files there keep their inherited
DELETE, so replace and cleanup still work, but protected names cannot be swapped out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...plan import Plan
from .firewall import LOOPBACK_NOTE, account_for, firewall_rules
from .model import (
    ALL_RIGHTS,
    READ_RIGHTS,
    SUBTREE,
    WRITE_RIGHTS,
    Ace,
    AceKind,
    Backend,
    CreateFirst,
    Inherit,
    Right,
    WindowsPlan,
)
from .paths import FsView, TooBroad, ancestors, depth, glob_matches, is_drive_root, join, parent, path_key, under
from .sids import SidStore

_SSH = re.compile(r"\((IdentityFile|CertificateFile|ControlPath|IdentityAgent) at ")
_WITHHELD = "not granted (sensitive): "
RESTRICTED_READS = (
    "the restricted-token backend cannot enforce read denials: its token is write-restricted (the "
    "workspace SIDs are consulted for writes only) and reads are judged by your own account, so "
)


@dataclass(frozen=True)
class _Target:
    path: str
    access: str  # read | write | deny
    reason: str
    pinned: bool = False
    owner: str = ""  # the entry's canonical path (which root's SID grants it)


def render(
    plan: Plan, *, backend: Backend, state: SidStore, fs: FsView, proxy_ports: tuple[int, ...] = ()
) -> WindowsPlan:
    """The Windows enforcement plan for `plan`; refusals say why it must not run."""
    if backend not in ("elevated", "restricted"):
        raise ValueError(f"unknown Windows backend {backend!r}")
    if plan.unconfined:
        return WindowsPlan(backend, None, {}, (), (), notes=("NO SANDBOX: full-access runs the command unconfined",))
    return _Renderer(plan, backend, state, fs, tuple(proxy_ports)).run()


def home_of(plan: Plan) -> str | None:
    """The home directory the Plan was materialized for (USERPROFILE on Windows)."""
    return plan.env.get("USERPROFILE") or plan.env.get("HOME") or None


class _Renderer:
    def __init__(self, plan: Plan, backend: Backend, state: SidStore, fs: FsView, ports: tuple[int, ...]) -> None:
        self.plan, self.backend, self.fs, self.ports = plan, backend, fs, ports
        self.elevated = backend == "elevated"
        self.home = home_of(plan)
        # An empty root list means the cwd: the cwd's SID must never go missing from the token.
        roots = plan.roots or (plan.cwd,)
        self.roots = list({path_key(r): r for r in roots}.values())
        self.root_sids = [(r, state.workspace_sid(r)) for r in self.roots]
        self.generic = state.generic_sid()
        self.sids = {f"workspace {r}": s for r, s in self.root_sids} | {"generic": self.generic}
        self.account = account_for(plan.network) if self.elevated else None
        self.account_sid = ""
        if self.account:
            self.account_sid = state.account_sid(self.account) or f"account:{self.account}"
            self.sids[f"account {self.account}"] = self.account_sid
        self.principals = [s for _, s in self.root_sids] + [self.generic] + ([self.account_sid] * self.elevated)
        self.at: dict[str, list[Ace]] = {}
        self.refusals: list[str] = []
        self.notes: list[str] = []
        self.create: dict[str, CreateFirst] = {path_key(p.path): CreateFirst(p.path, p.kind) for p in plan.placeholders}
        self.verify: dict[str, str] = {}
        self.entries = {path_key(r.path): r for r in plan.rules}
        self.never = self._never()
        self.holders = self.never | ({path_key(self.home)} if self.home else set())

    # -- what may never carry an ACE ------------------------------------------------------------
    def _never(self) -> set[str]:
        """Paths no ACE of ours may reach: ~/.ssh, what the SSH configuration names, and what the
        Plan's `:home` expansion withheld. OpenSSH rejects keys and configs that carry ACEs for
        other principals, and an inheritable ACE above them would land on them too."""
        out: set[str] = set()
        if self.home:
            out.add(path_key(join(self.home, ".ssh")))
        for rule in self.plan.rules:
            if _SSH.search(rule.reason):
                out |= {path_key(rule.path), path_key(rule.lexical)}
        for note in self.plan.notes:
            if _WITHHELD in note and self.home:
                out |= {path_key(join(self.home, n)) for n in note.split(_WITHHELD, 1)[1].split(", ") if n}
        return out

    def _inside_never(self, path: str) -> bool:
        key = path_key(path)
        return key in self.never or any(a in self.never for a in ancestors(key))

    def _holds(self, path: str) -> bool:
        """`path` is home, or an ancestor of home or of a never-target (inheritance would reach it)."""
        key = path_key(path)
        if self.home is not None and key == path_key(self.home):
            return True
        return any(h != key and under(h, path) for h in self.holders)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> WindowsPlan:
        self._refuse()
        targets = self._targets()
        for target in sorted(targets, key=lambda t: (depth(t.path), path_key(t.path))):
            self._emit(target)
        return self._result()

    def _refuse(self) -> None:
        plan = self.plan
        if any(r.kind == "scratch" for r in plan.rules):
            self.refusals.append(
                "the Plan's private tmp (no writable tmp directory granted) has no Windows equivalent; "
                "grant a tmp directory (':tmpdir' = 'write')"
            )
        if plan.limits.items():
            names = ", ".join(k for k, _ in plan.limits.items())
            self.refusals.append(f"limits ({names}): resource limits are not enforced by the Windows backend yet")
        if plan.network == "proxy" and not self.ports:
            self.refusals.append("network = proxy, but no proxy port was given")
        if self.elevated:
            return
        if plan.network != "on":
            self.refusals.append(
                f"network = {plan.network}: the restricted-token backend runs as your own account, and "
                "Windows Firewall selects traffic by account, so it cannot take the network away from this "
                "command alone; use the elevated backend (an offline sandbox account)"
            )
        denied = [r for r in plan.rules if r.access == "deny"] + [g for g in plan.globs if g.access == "deny"]
        if denied:
            first = denied[0]
            where = getattr(first, "lexical", None) or getattr(first, "pattern", "")
            self.refusals.append(
                RESTRICTED_READS + f"{len(denied)} deny entries (e.g. {where}, from {first.reason}) would stay "
                "readable; use the elevated backend"
            )
        if not any(is_drive_root(r.path) and r.access != "deny" for r in plan.rules):
            self.refusals.append(
                RESTRICTED_READS + "paths under no entry of this Plan (it grants no drive root) would stay "
                "readable; use the elevated backend"
            )

    def _targets(self) -> list[_Target]:
        out: list[_Target] = []
        rules = [(r.path, r.lexical, r.access, r.reason, r.pinned) for r in self.plan.rules if r.kind != "scratch"]
        for glob in self.plan.globs:
            try:
                found = glob_matches(self.fs, glob.pattern, glob.depth)
            except TooBroad:
                self.refusals.append(f"{glob.reason}: {glob.pattern} lists too many directories to expand")
                continue
            for match in found:
                canonical = self.fs.realpath(match)
                if path_key(canonical) not in self.entries:  # an exact entry beats a glob match
                    rules.append((canonical, match, glob.access, f"{glob.reason} (glob match)", False))
                    if _SSH.search(glob.reason):
                        self.never |= {path_key(canonical), path_key(match)}
                        self.holders |= {path_key(canonical), path_key(match)}
        for path, lexical, access, reason, pinned in rules:
            if access == "deny":
                if self.elevated:
                    for t in {path_key(p): p for p in (lexical, path, self.fs.realpath(lexical))}.values():
                        if self._inside_never(t) or self._holds(t):
                            self.verify[path_key(t)] = t  # nothing may reach it: check it is unreadable
                        else:
                            out.append(_Target(t, "deny", reason, owner=path))
                continue
            if not self.elevated and access == "read" and not self._under_write(path):
                continue  # reads are the caller's own: a read entry matters only as a carve-out
            if self._inside_never(path):
                self.notes.append(f"{reason}: {path} is not granted on Windows (an ACE there breaks OpenSSH)")
                continue
            elevated_read = self.elevated and access == "read"
            if self._holds(path) or (elevated_read and is_drive_root(path)):
                outside = elevated_read and not (self.home and under(self.home, path))
                out += self._expand(path, access, reason, only_home=elevated_read, skip_all=outside)
                continue
            out.append(_Target(path, access, reason, pinned, path))
        return out

    def _under_write(self, path: str) -> bool:
        return any(r.access == "write" and under(path, r.path) and path_key(r.path) != path_key(path)
                   for r in self.plan.rules)  # fmt: skip

    def _expand(self, top: str, access: str, reason: str, only_home: bool, skip_all: bool) -> list[_Target]:
        """Grant `top` through its children, never through itself: recursively along the paths it
        holds (home, never-targets), leaving those out. For an elevated read of a drive root,
        children outside home are left to the account's own rights (a standard local account)."""
        if skip_all:
            self.notes.append(f"{reason}: {top} = read: the sandbox account reads there what any local account can")
            return []
        names = self.fs.listdir(top)
        if names is None:
            self.notes.append(f"{reason}: cannot list {top}; nothing under it is granted")
            return []
        out: list[_Target] = []
        for name in names:
            child = join(top, name)
            real = self.fs.realpath(child)
            if self._inside_never(child) or (path_key(real) != path_key(child) and
                                             (self._inside_never(real) or self._holds(real))):  # fmt: skip
                continue
            if path_key(child) in self.entries:
                continue  # its own entry decides
            if self._holds(child):
                out += self._expand(child, access, reason, only_home, False)
            elif only_home and not (self.home and under(child, self.home)):
                continue
            else:
                out.append(_Target(child, access, f"{reason} (a child of {top})", owner=child))
        if only_home and self.home and not under(top, self.home):
            self.notes.append(f"{reason}: outside {self.home} the sandbox account reads what any local account can")
        return out

    # -- ACEs -----------------------------------------------------------------------------------
    def _sid_for(self, path: str) -> str:
        best = [(len(path_key(r)), s) for r, s in self.root_sids if under(path, r)]
        return max(best)[1] if best else self.generic

    def _effective(self, principal: str, key: str, object_aces: bool = True) -> dict[Right, AceKind]:
        """What Windows decides for `principal` at `key` from the ACEs emitted so far (first match
        per right: explicit deny, explicit allow, then each ancestor's inheritable ones)."""
        out: dict[Right, AceKind] = {}
        levels = [(key, True), *((a, False) for a in ancestors(key))]
        for level, own in levels:
            aces = [
                a for a in self.at.get(level, ())
                if a.principal == principal
                and ((Inherit.IO not in a.inherit and (object_aces or bool(a.inherit & SUBTREE))) if own
                     else bool(a.inherit & SUBTREE))
            ]  # fmt: skip
            for kind in ("deny", "allow"):
                for ace in aces:
                    if ace.kind == kind:
                        for right in Right:
                            if right in ace.rights:
                                out.setdefault(right, kind)
        return out

    def _add(self, principal: str, path: str, kind: AceKind, rights: Right, inherit: Inherit, reason: str) -> None:
        aces = self.at.setdefault(path_key(path), [])
        for i, ace in enumerate(aces):
            if (ace.principal, ace.kind, ace.inherit) == (principal, kind, inherit):
                aces[i] = Ace(principal, ace.path, kind, ace.rights | rights, inherit, ace.reason)
                return
        aces.append(Ace(principal, path, kind, rights, inherit, reason))

    def _ensure(self, principal: str, path: str, allow: Right, deny: Right, reason: str) -> None:
        eff = self._effective(principal, path_key(path))
        need_deny = [r for r in Right if r in deny and eff.get(r) != "deny"]
        need_allow = [r for r in Right if r in allow and eff.get(r) != "allow"]
        for kind, need in (("deny", need_deny), ("allow", need_allow)):
            if need:
                rights = Right(0)
                for right in need:
                    rights |= right
                self._add(principal, path, kind, rights, SUBTREE, reason)  # type: ignore[arg-type]

    def _emit(self, t: _Target) -> None:
        if self.fs.kind(t.path) == "missing" and path_key(t.path) not in self.create:
            if not any(self._effective(p, path_key(parent(t.path))).get(Right.WRITE) == "allow"
                       for p in self.principals):  # fmt: skip
                self.notes.append(f"{t.reason}: {t.path} does not exist and cannot be created inside")
                return
            self.create[path_key(t.path)] = CreateFirst(t.path, "dir")
        if t.access == "write":
            for p in [self._sid_for(t.owner or t.path)] + [self.account_sid] * self.elevated:
                self._ensure(p, t.path, ALL_RIGHTS, Right(0), t.reason)
            if t.pinned:  # it must not be renamed or removed (the `.git` directory)
                for p in self.principals:
                    if self._effective(p, path_key(t.path)).get(Right.DELETE) == "allow":
                        self._add(p, t.path, "deny", Right.DELETE, Inherit.NONE, t.reason + " (pinned)")
                self._pin(t)
            return
        if t.access == "deny":
            self._ensure(self.account_sid, t.path, Right(0), ALL_RIGHTS, t.reason)
            self._pin(t)
            return
        carve = False
        for p in self.principals:
            eff = self._effective(p, path_key(t.path))
            if any(eff.get(r) == "allow" for r in Right if r in WRITE_RIGHTS):
                self._ensure(p, t.path, Right(0), WRITE_RIGHTS, t.reason)
                carve = True
        if self.elevated:
            self._ensure(self.account_sid, t.path, READ_RIGHTS, Right(0), t.reason)
        if carve:
            self._pin(t)

    def _pin(self, t: _Target) -> None:
        """Deny DELETE_CHILD on each writable directory above `t` up to the writable entry, and
        DELETE on those in between: `t` can then be neither removed nor moved away."""
        for p in self.principals:
            x = t.path
            while True:
                up = parent(x)
                if path_key(up) == path_key(x):
                    break
                if self._effective(p, path_key(up), object_aces=False).get(Right.DELETE_CHILD) != "allow":
                    break
                self._add(p, up, "deny", Right.DELETE_CHILD, Inherit.NONE, f"{t.reason} (pins {t.path})")
                if x != t.path:
                    self._add(p, x, "deny", Right.DELETE, Inherit.NONE, f"{t.reason} (pins {t.path})")
                x = up

    def _result(self) -> WindowsPlan:
        plan = self.plan
        firewall = ()
        if self.elevated:
            firewall = tuple(firewall_rules(plan.network, self.account_sid, self.ports))
            self.notes.append(
                f"paths under no entry keep what {self.account} can read by default (a standard local account: "
                "system directories); ACEs add grants and denials, they cannot hide the rest of the disk"
            )
            if firewall:
                self.notes.append(LOOPBACK_NOTE)
        safe = ()
        if self.elevated:  # another account than the repository's owner: git wants safe.directory
            safe = tuple(r.replace("\\", "/") for r in self.roots if self.fs.kind(join(r, ".git")) != "missing")
        aces = tuple(a for key in sorted(self.at, key=lambda k: (k.count("\\"), k)) for a in self.at[key])
        return WindowsPlan(
            backend=self.backend,
            account=self.account,
            sids=self.sids,
            token_sids=tuple(dict.fromkeys([*(s for _, s in self.root_sids), self.generic])),
            aces=aces,
            firewall=firewall,
            safe_directory=safe,
            create_first=tuple(self.create.values()),
            verify_unreadable=tuple(self.verify.values()) if self.elevated else (),
            refusals=tuple(self.refusals),
            notes=tuple(dict.fromkeys(self.notes)),
        )
