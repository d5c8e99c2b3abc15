"""render(Plan) -> WindowsPlan: the Plan's entries as ACEs, SIDs, firewall rules and refusals.

Two backends. `restricted`: the command runs as the caller with a write-restricted token whose
restricting SIDs are the workspace SIDs and the generic SID, so a write needs an ACE for one of
them; reads are judged by the caller's own account, so read denials cannot be enforced (refused).
`elevated`: the command runs as a sandbox account of its own (the offline one unless the network
is on), with the same write-restricted token on top; reads then need grants to that account, and
deny ACEs for it hold.

Each entry becomes what it needs per principal (`acl.AclBuilder`): write, an allow of every right
for its SID (the nearest workspace root's, else the generic one) and, elevated, the account;
read, a deny of the write rights for every principal that could write there (a carve-out,
pinned in place) and, elevated, an allow of reading for the account; deny (elevated), a deny of
everything for the account on the lexical path and the canonical target. No ACE ever lands on
the home directory, on ~/.ssh or on what the SSH configuration names: a grant that would cover
them is made through the children instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...plan import Plan
from .acl import ALL, DELETE, READS, WRITE, WRITES, AclBuilder
from .firewall import LOOPBACK_NOTE, account_for, firewall_rules
from .model import RESTRICTED_CODE, Backend, CreateFirst, WindowsPlan
from .paths import (
    FsView,
    TooBroad,
    ancestors,
    depth,
    glob_matches,
    is_drive_root,
    join,
    parent,
    path_key,
    under,
)
from .refusals import refusals
from .sids import SidStore


@dataclass(frozen=True)
class _Target:
    path: str
    access: str  # read | write | deny
    reason: str
    pinned: bool = False
    owner: str = ""  # the entry's canonical path (which root's SID grants it)


def render(
    plan: Plan,
    *,
    backend: Backend,
    state: SidStore,
    fs: FsView,
    proxy_ports: tuple[int, ...] = (),
    rescan_globs: bool = False,
) -> WindowsPlan:
    """The Windows enforcement plan for `plan`; refusals say why it must not run.

    Glob matches come from the Plan (materialize expanded them, bounded by glob_scan_max_depth,
    with its cache). `rescan_globs` also walks each pattern through `fs` with the same bound, for a
    Plan materialized elsewhere than the disk it is applied to (slow on a large tree)."""
    if backend not in ("elevated", "restricted"):
        raise ValueError(f"unknown Windows backend {backend!r}")
    if plan.unconfined:
        return WindowsPlan(
            backend, None, {}, (), (), notes=("NO SANDBOX: full-access runs the command unconfined",)
        )
    return _Renderer(plan, backend, state, fs, tuple(proxy_ports), rescan_globs).run()


def home_of(plan: Plan) -> str | None:
    """The home directory the Plan was materialized for (USERPROFILE on Windows)."""
    return plan.env.get("USERPROFILE") or plan.env.get("HOME") or None


class _Renderer:
    def __init__(
        self, plan: Plan, backend: Backend, state: SidStore, fs: FsView, ports: tuple[int, ...], rescan: bool
    ) -> None:
        self.plan, self.backend, self.fs, self.ports, self.rescan = plan, backend, fs, ports, rescan
        self.elevated = backend == "elevated"
        self.home = home_of(plan)
        # An empty root list means the cwd: the cwd's SID must never go missing from the token.
        roots = plan.roots or (plan.cwd,)
        self.roots = list({path_key(r): r for r in roots}.values())
        self.root_sids = [(r, state.workspace_sid(r)) for r in self.roots]
        self.generic = state.generic_sid()
        self.sids = {f"workspace {r}": s for r, s in self.root_sids} | {"generic": self.generic}
        self.sids["restricted code (the NUL device and the like grant it)"] = RESTRICTED_CODE
        self.account = account_for(plan.network) if self.elevated else None
        self.account_sid = ""
        if self.account:
            self.account_sid = state.account_sid(self.account) or f"account:{self.account}"
            self.sids[f"account {self.account}"] = self.account_sid
        self.principals = (
            [s for _, s in self.root_sids] + [self.generic] + ([self.account_sid] * self.elevated)
        )
        self.acl = AclBuilder()
        self.written: set[str] = set()  # keys of the write targets emitted so far (shallow first)
        self.refusals: list[str] = []
        self.notes: list[str] = []
        self.create: dict[str, CreateFirst] = {
            path_key(p.path): CreateFirst(p.path, p.kind) for p in plan.placeholders
        }
        self.verify: dict[str, str] = {}
        self.entries = {path_key(r.path): r for r in plan.rules}
        self.never = self._never()
        self.home_key = path_key(self.home) if self.home else None
        self._hold(self.never | ({self.home_key} if self.home_key else set()))

    def _hold(self, keys: set[str]) -> None:
        """Record paths nothing may cover: `_holds()` is then a set lookup of their ancestors."""
        self.holders: set[str] = getattr(self, "holders", set()) | keys
        self.above_holders = {a for h in self.holders for a in ancestors(h)}

    # -- what may never carry an ACE ------------------------------------------------------------
    def _never(self) -> set[str]:
        """Paths no ACE of ours may reach: ~/.ssh and the Plan's `sensitive` paths (what the SSH
        configuration names, what `:home` withheld). OpenSSH rejects keys and configs that carry
        ACEs for other principals, and an inheritable ACE above them would land on them too."""
        out = {path_key(p) for p in self.plan.sensitive}
        if self.home:
            out.add(path_key(join(self.home, ".ssh")))
        return out

    def _inside_never(self, path: str) -> bool:
        key = path_key(path)
        return key in self.never or any(a in self.never for a in ancestors(key))

    def _holds(self, path: str) -> bool:
        """`path` is home, or an ancestor of home or of a never-target (inheritance would reach it)."""
        key = path_key(path)
        return key == self.home_key or key in self.above_holders

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> WindowsPlan:
        self.refusals += refusals(self.plan, self.backend, self.ports)
        targets = self._targets()
        for target in sorted(targets, key=lambda t: (depth(t.path), path_key(t.path))):
            self._emit(target)
        return self._result()

    def _targets(self) -> list[_Target]:
        out: list[_Target] = []
        rules = [
            (r.path, r.lexical, r.access, r.reason, r.pinned) for r in self.plan.rules if r.kind != "scratch"
        ]
        for glob in self.plan.globs if self.rescan else ():
            if glob.access == "deny" and not self.elevated:
                continue  # refused above: nothing to expand
            try:
                found = glob_matches(self.fs, glob.pattern, glob.depth)
            except TooBroad:
                self.refusals.append(f"{glob.reason}: {glob.pattern} lists too many directories to expand")
                continue
            for match in found:
                canonical = self.fs.realpath(match)
                if path_key(canonical) not in self.entries:  # an exact entry beats a glob match
                    rules.append((canonical, match, glob.access, f"{glob.reason} (glob match)", False))
                    if self._inside_never(match):  # a key reached through a link: its target too
                        self.never.add(path_key(canonical))
                        self._hold({path_key(canonical)})
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
        return any(
            r.access == "write" and under(path, r.path) and path_key(r.path) != path_key(path)
            for r in self.plan.rules
        )

    def _expand(self, top: str, access: str, reason: str, only_home: bool, skip_all: bool) -> list[_Target]:
        """Grant `top` through its children, never through itself: recursively along the paths it
        holds (home, never-targets), leaving those out. For an elevated read of a drive root,
        children outside home are left to the account's own rights (a standard local account)."""
        if skip_all:
            self.notes.append(
                f"{reason}: {top} = read: the sandbox account reads there what any local account can"
            )
            return []
        names = self.fs.listdir(top)
        if names is None:
            self.notes.append(f"{reason}: cannot list {top}; nothing under it is granted")
            return []
        out: list[_Target] = []
        for name in names:
            child = join(top, name)
            real = self.fs.realpath(child)
            if self._inside_never(child) or (
                path_key(real) != path_key(child) and (self._inside_never(real) or self._holds(real))
            ):
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
            self.notes.append(
                f"{reason}: outside {self.home} the sandbox account reads what any local account can"
            )
        return out

    # -- ACEs -----------------------------------------------------------------------------------
    def _sid_for(self, path: str) -> str:
        best = [(len(path_key(r)), s) for r, s in self.root_sids if under(path, r)]
        return max(best)[1] if best else self.generic

    def _emit(self, t: _Target) -> None:
        key = path_key(t.path)
        if key not in self.create and self.fs.kind(t.path) == "missing":
            up = path_key(parent(t.path))
            if not any(self.acl.effective(p, up)[0] & WRITE for p in self.principals):
                self.notes.append(f"{t.reason}: {t.path} does not exist and cannot be created inside")
                return
            self.create[key] = CreateFirst(t.path, "dir")
        if t.access == "write":
            self.written.add(key)
            for p in [self._sid_for(t.owner or t.path)] + [self.account_sid] * self.elevated:
                self.acl.ensure(p, t.path, ALL, 0, t.reason)
            if t.pinned:  # it must not be renamed or removed (the `.git` directory)
                for p in self.principals:
                    if self.acl.effective(p, key)[0] & DELETE:
                        self.acl.add(p, t.path, "deny", DELETE, 0, t.reason + " (pinned)")
                self.acl.pin(t.path, t.reason, self.principals)
            return
        if t.access == "deny":
            self.acl.ensure(self.account_sid, t.path, 0, ALL, t.reason)
            self.acl.pin(t.path, t.reason, self.principals)
            return
        carve = False
        below_write = any(a in self.written for a in ancestors(key))  # else nothing can write here
        for p in self.principals if below_write else ():
            if self.acl.effective(p, key)[0] & WRITES:
                self.acl.ensure(p, t.path, 0, WRITES, t.reason)
                carve = True
        if self.elevated:
            self.acl.ensure(self.account_sid, t.path, READS, 0, t.reason)
        if carve:
            self.acl.pin(t.path, t.reason, self.principals)

    def _result(self) -> WindowsPlan:
        plan = self.plan
        firewall = ()
        if self.elevated:
            firewall = tuple(firewall_rules(plan.network, self.account_sid, self.ports))
            self.notes.append(
                f"paths under no entry keep what {self.account} can read by default (a standard local "
                "account: system directories); ACEs add grants and denials, they cannot hide the rest "
                "of the disk"
            )
            if firewall:
                self.notes.append(LOOPBACK_NOTE)
        safe = ()
        if self.elevated:  # another account than the repository's owner: git wants safe.directory
            safe = tuple(
                r.replace("\\", "/") for r in self.roots if self.fs.kind(join(r, ".git")) != "missing"
            )
        aces = self.acl.aces()
        return WindowsPlan(
            backend=self.backend,
            account=self.account,
            sids=self.sids,
            token_sids=tuple(dict.fromkeys([*(s for _, s in self.root_sids), self.generic, RESTRICTED_CODE])),
            aces=aces,
            firewall=firewall,
            safe_directory=safe,
            create_first=tuple(self.create.values()),
            verify_unreadable=tuple(self.verify.values()) if self.elevated else (),
            refusals=tuple(self.refusals),
            notes=tuple(dict.fromkeys(self.notes)),
        )
