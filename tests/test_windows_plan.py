"""The Windows enforcement plan a Plan becomes, checked on Linux (pure logic, Windows paths).

Each bug report that shaped issue 8 is a test here. Beyond looking at the ACEs, the tests
evaluate them the way Windows does (explicit deny, explicit allow, then each ancestor's
inheritable ACEs, nearest first; delete allowed by DELETE on the object *or* DELETE_CHILD on its
parent) with a small evaluator written independently of the renderer.
"""

from __future__ import annotations

import dataclasses
import json
import ntpath
import os
import sys
from pathlib import Path

import pytest

from stockade.backends.windows import (
    Ace,
    Inherit,
    Right,
    SidStore,
    WindowsBackend,
    WindowsPlan,
    derive_sid,
    path_key,
    reconcile,
    render,
)
from stockade.backends.windows.firewall import port_ranges_without
from stockade.backends.windows.model import FILE_READ_ATTRIBUTES, READ_CONTROL, SYNCHRONIZE, mask, rights_of
from stockade.backends.windows.paths import FsKind, glob_matches
from stockade.errors import SandboxUnavailable
from stockade.plan import GlobEntry, PathRule, Placeholder, Plan
from stockade.policy.model import Limits

HOME = "C:\\Users\\alice"
REPO = HOME + "\\repo"
OTHER = "D:\\src\\other"
TMP = HOME + "\\AppData\\Local\\Temp"
BUILD = "E:\\build"
BUILTIN = "<built-in profiles>: profiles.workspace.filesystem."
SUBTREE = Inherit.OI | Inherit.CI
USER_SID = "S-1-5-21-1-2-3-1001"  # alice herself: never ours to touch
ADMINS = "S-1-5-32-544"
ALL = Right.READ | Right.WRITE | Right.EXECUTE | Right.DELETE | Right.DELETE_CHILD


# -- a filesystem as a dict ---------------------------------------------------------------------
class FakeFs:
    """Files, directories and links by path (case-insensitive, as NTFS)."""

    def __init__(
        self,
        files: tuple[str, ...] | list[str] = (),
        dirs: tuple[str, ...] | list[str] = (),
        links: dict[str, str] | None = None,
    ) -> None:
        self.kinds: dict[str, FsKind] = {}
        self.names: dict[str, str] = {}
        self.links = {path_key(k): v for k, v in (links or {}).items()}
        for path, kind in [*((d, "dir") for d in dirs), *((f, "file") for f in files)]:
            self._add(path, kind)
        for link in links or {}:
            self._add(link, "link")

    def _add(self, path: str, kind: FsKind) -> None:
        self.kinds[path_key(path)] = kind
        self.names[path_key(path)] = path
        up = ntpath.dirname(path)
        if up != path and self.kinds.get(path_key(up)) in (None, "file"):
            self._add(up, "dir")

    def kind(self, path: str) -> FsKind:
        return self.kinds.get(path_key(path), "missing")

    def realpath(self, path: str) -> str:
        key = path_key(path)
        for link, target in self.links.items():
            if key == link or key.startswith(link + "\\"):
                return target + path[len(link) :]
        return path

    def listdir(self, path: str) -> list[str] | None:
        key = path_key(path)
        if self.kinds.get(key) != "dir":
            return None
        return sorted(
            ntpath.basename(self.names[k]) for k in self.kinds if ntpath.dirname(k) == key and k != key
        )


# -- Plans as materialize would make them, with Windows paths -----------------------------------
def rule(
    path: str,
    access: str,
    reason: str = "test",
    *,
    pinned: bool = False,
    lexical: str | None = None,
    kind: str = "dir",
    glob: bool = False,
) -> PathRule:
    return PathRule(path, access, kind, reason, lexical or path, pinned, glob)  # type: ignore[arg-type]


def protected(root: str) -> tuple[list[PathRule], list[Placeholder]]:
    """What `protected_in` puts in every writable root holding a `.git` directory (git = protect)."""
    rules = [rule(f"{root}\\{n}", "read", f"protected {n}") for n in (".agents", ".codex", ".stockade")]
    rules.append(rule(f"{root}\\.git", "write", "git = protect", pinned=True))
    for name in ("config", "config.worktree", "hooks", "info", "commondir"):
        rules.append(rule(f"{root}\\.git\\{name}", "read", "git = protect"))
    holders = [Placeholder(f"{root}\\{n}", "dir") for n in (".agents", ".codex", ".stockade")]
    holders += [
        Placeholder(f"{root}\\.git\\config.worktree", "file"),
        Placeholder(f"{root}\\.git\\commondir", "commondir"),
    ]
    return rules, holders


def make_plan(
    rules: list[PathRule],
    *,
    roots: tuple[str, ...] = (REPO,),
    cwd: str = REPO,
    network: str = "off",
    placeholders: tuple[Placeholder, ...] = (),
    notes: tuple[str, ...] = (),
    globs: tuple[GlobEntry, ...] = (),
    sensitive: tuple[str, ...] = (),
) -> Plan:
    plan = Plan(
        "workspace",
        False,
        cwd,
        roots,
        tuple(sorted(rules, key=lambda r: r.path)),
        placeholders,
        network,
        TMP,
        {"USERPROFILE": HOME},
        {},
        notes,
    )
    return dataclasses.replace(plan, globs=globs, sensitive=sensitive)


def workspace(
    roots: tuple[str, ...] = (REPO,), *, extra: list[PathRule] | tuple[()] = (), cwd: str = REPO, **kw: object
) -> Plan:
    rules = [rule("C:\\", "read", BUILTIN + "':root'"), rule(TMP, "write", BUILTIN + "':tmpdir'")]
    holders: list[Placeholder] = []
    for root in roots or (cwd,):
        rules.append(rule(root, "write", BUILTIN + "':workspace_roots'"))
        more, ph = protected(root)
        rules += more
        holders += ph
    return make_plan([*rules, *extra], roots=roots, cwd=cwd, placeholders=tuple(holders), **kw)  # type: ignore[arg-type]


def fs_for(*roots: str, extra_files: tuple[str, ...] = (), links: dict[str, str] | None = None) -> FakeFs:
    files = [
        f"{HOME}\\.ssh\\id_ed25519",
        f"{HOME}\\.ssh\\known_hosts",
        f"{HOME}\\.ssh\\config",
        f"{HOME}\\Documents\\notes.txt",
        f"{TMP}\\old.tmp",
        *extra_files,
    ]
    for root in roots:
        files += [
            f"{root}\\src\\main.py",
            f"{root}\\.git\\config",
            f"{root}\\.git\\HEAD",
            f"{root}\\.git\\hooks\\x",
        ]
    return FakeFs(
        files, dirs=[f"{r}\\.git\\info" for r in roots] + ["C:\\Windows\\System32", BUILD], links=links
    )


def go(
    plan: Plan,
    backend: str = "elevated",
    fs: FakeFs | None = None,
    state: SidStore | None = None,
    ports: tuple[int, ...] = (),
    rescan: bool = False,
) -> WindowsPlan:
    fs = fs or fs_for(*(plan.roots or (plan.cwd,)))
    state = state or SidStore()
    return render(plan, backend=backend, state=state, fs=fs, proxy_ports=ports, rescan_globs=rescan)  # type: ignore[arg-type]


# -- Windows' own evaluation, written independently of the renderer -----------------------------
def decide(aces: tuple[Ace, ...], principal: str, path: str) -> dict[Right, str]:
    key, out = path_key(path), {}
    levels = [key]
    while ntpath.dirname(levels[-1]) != levels[-1]:
        levels.append(ntpath.dirname(levels[-1]))
    for i, level in enumerate(levels):
        here = [
            a
            for a in aces
            if a.principal == principal
            and path_key(a.path) == level
            and ((Inherit.IO not in a.inherit) if i == 0 else bool(a.inherit & SUBTREE))
        ]
        for kind in ("deny", "allow"):
            for ace in (a for a in here if a.kind == kind):
                for right in Right:
                    if right in ace.rights:
                        out.setdefault(right, kind)
    return out


def can(wp: WindowsPlan, principal: str, path: str, right: Right) -> bool:
    return decide(wp.aces, principal, path).get(right) == "allow"


def can_delete(wp: WindowsPlan, principal: str, path: str) -> bool:
    """NTFS: DELETE on the object, or DELETE_CHILD on the directory holding it."""
    return can(wp, principal, path, Right.DELETE) or can(
        wp, principal, ntpath.dirname(path), Right.DELETE_CHILD
    )


def can_replace(wp: WindowsPlan, principal: str, src: str, dst: str) -> bool:
    """MoveFileEx(REPLACE_EXISTING): delete the source name, add to the target dir, delete the target."""
    return (
        can_delete(wp, principal, src)
        and can(wp, principal, ntpath.dirname(dst), Right.WRITE)
        and can_delete(wp, principal, dst)
    )


def sid_of(wp: WindowsPlan, root: str) -> str:
    return wp.sids[f"workspace {root}"]


def aces_at(wp: WindowsPlan, path: str) -> list[Ace]:
    return [a for a in wp.aces if path_key(a.path) == path_key(path)]


# == the seed bugs ===============================================================================
@pytest.mark.parametrize("backend", ["elevated", "restricted"])
def test_empty_root_list_still_grants_the_cwds_sid(backend: str) -> None:
    state = SidStore()
    wp = go(workspace(roots=(), cwd=REPO), backend, state=state)
    cwd_sid = state.workspace_sid(REPO)
    assert cwd_sid in wp.token_sids
    assert any(
        a.principal == cwd_sid and a.kind == "allow" and Right.WRITE in a.rights for a in aces_at(wp, REPO)
    )
    assert can(wp, cwd_sid, REPO + "\\src\\main.py", Right.WRITE)


@pytest.mark.parametrize("backend", ["elevated", "restricted"])
def test_writable_roots_get_the_generic_sids_ace_not_just_a_policy_entry(backend: str) -> None:
    wp = go(workspace(extra=[rule(BUILD, "write", "--writable")]), backend)
    generic = wp.sids["generic"]
    assert generic in wp.token_sids
    grants = [a for a in aces_at(wp, BUILD) if a.principal == generic and a.kind == "allow"]
    assert grants and Right.WRITE in grants[0].rights
    assert can(wp, generic, BUILD + "\\out\\x.o", Right.WRITE)
    assert can(wp, generic, TMP + "\\new.tmp", Right.WRITE)  # tmp: the same generic SID
    assert not can(wp, sid_of(wp, REPO), BUILD + "\\x", Right.WRITE)


@pytest.mark.parametrize("backend", ["elevated", "restricted"])
def test_every_writable_roots_ace_includes_delete_child_so_replace_works(backend: str) -> None:
    wp = go(workspace(roots=(REPO, OTHER), extra=[rule(BUILD, "write", "--writable")]), backend)
    for path, sid in [
        (REPO, sid_of(wp, REPO)),
        (OTHER, sid_of(wp, OTHER)),
        (BUILD, wp.sids["generic"]),
        (TMP, wp.sids["generic"]),
    ]:
        allow = [a for a in aces_at(wp, path) if a.principal == sid and a.kind == "allow"]
        assert len(allow) == 1, path
        assert {Right.WRITE, Right.DELETE, Right.DELETE_CHILD} <= set(allow[0].rights), path
        assert allow[0].inherit == SUBTREE, path
        # What the bug broke: os.replace within and across directories, temp cleanup.
        assert can_replace(wp, sid, f"{path}\\a\\f.tmp", f"{path}\\b\\f"), path
        assert can_replace(wp, sid, f"{path}\\f.tmp", f"{path}\\f"), path
        assert can_delete(wp, sid, f"{path}\\tmpdir\\deep\\x") and can_delete(wp, sid, f"{path}\\tmpdir"), (
            path
        )


@pytest.mark.parametrize("backend", ["elevated", "restricted"])
def test_two_roots_two_sids_and_each_roots_protected_metadata_is_denied_write(backend: str) -> None:
    wp = go(workspace(roots=(REPO, OTHER)), backend)
    a, b = sid_of(wp, REPO), sid_of(wp, OTHER)
    assert a != b and {a, b} <= set(wp.token_sids)
    for root, sid in ((REPO, a), (OTHER, b)):
        for name in (
            ".agents",
            ".codex",
            ".stockade",
            ".git\\config",
            ".git\\hooks",
            ".git\\info",
            ".git\\config.worktree",
            ".git\\commondir",
        ):
            path = f"{root}\\{name}"
            deny = [x for x in aces_at(wp, path) if x.principal == sid and x.kind == "deny"]
            assert deny and {Right.WRITE, Right.DELETE} <= set(deny[0].rights), path
            assert not can(wp, sid, path, Right.WRITE) and not can_delete(wp, sid, path), path
        assert not can(wp, sid, f"{root}\\.git\\hooks\\pre-commit", Right.WRITE)
        assert not can_delete(wp, sid, f"{root}\\.git"), "the .git directory is pinned"
        assert can_replace(wp, sid, f"{root}\\.git\\index.lock", f"{root}\\.git\\index")  # git still commits
        assert can(wp, sid, f"{root}\\.git\\objects\\ab\\cdef", Right.WRITE)
    # Workspaces are isolated from each other: neither SID writes into the other root.
    assert not can(wp, a, OTHER + "\\src\\main.py", Right.WRITE)
    assert not can(wp, b, REPO + "\\src\\main.py", Right.WRITE)
    # A protected name that does not exist yet is created before its ACE, so it cannot be made inside.
    assert {c.path for c in wp.create_first} >= {f"{REPO}\\.agents", f"{OTHER}\\.git\\commondir"}


def test_a_protected_path_deeper_down_cannot_be_moved_away_with_its_directory() -> None:
    cfg = f"{REPO}\\.git\\modules\\sub\\config"
    wp = go(
        dataclasses.replace(workspace(extra=[rule(cfg, "read", "git = protect")]), network="on"), "restricted"
    )
    sid = sid_of(wp, REPO)
    for path in (cfg, f"{REPO}\\.git\\modules\\sub", f"{REPO}\\.git\\modules", f"{REPO}\\.git"):
        assert not can_delete(wp, sid, path), path
    assert can_replace(
        wp, sid, f"{REPO}\\.git\\modules\\sub\\index.lock", f"{REPO}\\.git\\modules\\sub\\index"
    )


def test_deny_read_on_the_restricted_backend_is_refused_with_the_reason() -> None:
    plan = workspace(extra=[rule(f"{REPO}\\.env", "deny", BUILTIN + "'**/.env'", kind="file", glob=True)])
    wp = go(dataclasses.replace(plan, network="on"), "restricted")
    assert len(wp.refusals) == 1
    assert "cannot enforce read denials" in wp.refusals[0] and f"{REPO}\\.env" in wp.refusals[0]
    assert "write-restricted" in wp.refusals[0]
    # Without a deny entry (and with the network on) the same backend holds it.
    assert go(dataclasses.replace(workspace(), network="on"), "restricted").refusals == ()


def test_restricted_refuses_what_it_cannot_hide_or_take_away() -> None:
    no_root = make_plan([rule(REPO, "write"), rule(TMP, "write")], network="on")
    assert any("grants no drive root" in r for r in go(no_root, "restricted").refusals)
    assert any("network = off" in r for r in go(workspace(), "restricted").refusals)


def test_deny_read_on_elevated_becomes_deny_aces_on_lexical_and_canonical_targets() -> None:
    link, vault = f"{REPO}\\secrets", "D:\\vault\\secrets"
    env_link = f"{REPO}\\sub\\.env"
    fs = fs_for(
        REPO,
        extra_files=(f"{REPO}\\.env", f"{vault}\\k", "D:\\elsewhere\\.env"),
        links={link: vault, env_link: "D:\\elsewhere\\.env"},
    )
    plan = workspace(
        extra=[
            rule(vault, "deny", "test: secrets", lexical=link),
            rule(f"{REPO}\\gone", "deny", "test: gone"),
            rule(f"{REPO}\\.env", "deny", BUILTIN + "'**/.env'", kind="file", glob=True),
        ],
        globs=(GlobEntry(f"{REPO}\\**\\.env", "deny", BUILTIN + "'**/.env'", 8),),
    )
    wp = go(plan, "elevated", fs, rescan=True)
    account = wp.sids["account stockade-offline"]
    denied = {
        path_key(a.path) for a in wp.aces if a.principal == account and a.kind == "deny" and a.rights == ALL
    }
    # Without the rescan only the Plan's own matches are denied (materialize walked the same tree).
    plain = go(plan, "elevated", fs)
    assert path_key(env_link) not in {path_key(a.path) for a in plain.aces}
    assert path_key(f"{REPO}\\.env") in {path_key(a.path) for a in plain.aces}
    # The exact entry (both names), the Plan's glob match, and a match the walk finds through a link.
    for path in (link, vault, f"{REPO}\\.env", env_link, "D:\\elsewhere\\.env", f"{REPO}\\gone"):
        assert path_key(path) in denied, path
        assert not can(wp, account, path, Right.READ), path
    assert can(wp, account, f"{REPO}\\src\\main.py", Right.READ)
    assert f"{REPO}\\gone" in {c.path for c in wp.create_first}  # a missing exact path: created first
    assert wp.refusals == ()


def test_glob_expansion_is_bounded_by_glob_scan_max_depth_and_case_insensitive() -> None:
    fs = FakeFs(
        [f"{REPO}\\.ENV", f"{REPO}\\a\\.env", f"{REPO}\\a\\b\\c\\.env"], links={f"{REPO}\\l": "D:\\x"}
    )
    assert glob_matches(fs, f"{REPO}\\**\\.env", 2) == [f"{REPO}\\.ENV", f"{REPO}\\a\\.env"]
    assert glob_matches(fs, f"{REPO}\\**\\.env", 8)[-1] == f"{REPO}\\a\\b\\c\\.env"
    assert glob_matches(fs, f"{REPO}\\a\\**", 8) == [f"{REPO}\\a"]  # `dir/**` means `dir`


def _not_a_target(wp: WindowsPlan, path: str) -> None:
    """No ACE on `path`, nor above it with inheritance (which would land on it)."""
    for ace in wp.aces:
        key, top = path_key(ace.path), path_key(path)
        assert key != top, (path, ace)
        assert not (top.startswith(key + "\\") and ace.inherit & SUBTREE), (path, ace)


def _never_reached(wp: WindowsPlan, path: str) -> None:
    """Not a target, and nothing inside it is either."""
    _not_a_target(wp, path)
    assert not [a for a in wp.aces if path_key(a.path).startswith(path_key(path) + "\\")], path


@pytest.mark.parametrize("backend", ["elevated", "restricted"])
def test_home_is_never_a_target_nor_ssh_nor_an_identity_file_directory(backend: str) -> None:
    key_dir = f"{HOME}\\keys"
    fs = fs_for(REPO, extra_files=(f"{key_dir}\\deploy", f"{key_dir}\\notes.txt"))
    ssh = BUILTIN + "':ssh_keys' (IdentityFile at C:\\Users\\alice\\.ssh\\config:3)"
    extra = [
        rule(f"{HOME}\\.ssh", "deny", BUILTIN + "'~/.ssh'"),
        rule(f"{HOME}\\.ssh\\known_hosts", "read", BUILTIN + "'~/.ssh/known_hosts*'", kind="file"),
        rule(f"{HOME}\\.ssh\\config", "read", BUILTIN + "'~/.ssh/config'", kind="file"),
        rule(f"{key_dir}\\deploy", "deny", ssh, kind="file"),
        rule(HOME + "\\projects", "write", "--writable"),  # a root-like grant next to the keys
    ]
    plan = workspace(extra=extra, sensitive=(f"{key_dir}\\deploy",))  # materialize: the IdentityFile
    if backend == "restricted":
        plan = dataclasses.replace(
            plan, rules=tuple(r for r in plan.rules if r.access != "deny"), network="on"
        )
    wp = go(plan, backend, fs)
    assert not aces_at(wp, "C:\\Users") and not aces_at(wp, "C:\\")
    _not_a_target(wp, HOME)
    _not_a_target(wp, key_dir)  # the IdentityFile's directory: its other children may be granted
    _never_reached(wp, f"{HOME}\\.ssh")
    _never_reached(wp, f"{key_dir}\\deploy")
    if backend == "elevated":
        account = wp.sids["account stockade-offline"]
        assert can(wp, account, f"{key_dir}\\notes.txt", Right.READ)  # the key's siblings stay readable
        assert can(wp, account, f"{HOME}\\Documents\\notes.txt", Right.READ)
        assert not can(wp, account, f"{HOME}\\.ssh\\id_ed25519", Right.READ)
        assert {path_key(p) for p in wp.verify_unreadable} >= {
            path_key(f"{HOME}\\.ssh"),
            path_key(f"{key_dir}\\deploy"),
        }
        assert any("OpenSSH" in n for n in wp.notes)  # known_hosts / config: said, not silently dropped


def test_a_workspace_root_that_is_home_is_granted_through_its_children() -> None:
    fs = fs_for(REPO, extra_files=(f"{HOME}\\keys\\deploy", f"{HOME}\\keys\\readme"))
    withheld = (f"{HOME}\\.ssh", f"{HOME}\\keys\\deploy")  # what `:home` withheld, as the Plan says it
    wp = go(workspace(roots=(HOME,), cwd=HOME, sensitive=withheld), "elevated", fs)
    sid = sid_of(wp, HOME)
    _not_a_target(wp, HOME)
    _never_reached(wp, f"{HOME}\\.ssh")
    _never_reached(wp, f"{HOME}\\keys\\deploy")
    assert can(wp, sid, f"{HOME}\\Documents\\notes.txt", Right.WRITE)
    assert can(wp, sid, f"{HOME}\\keys\\readme", Right.WRITE)
    assert not can(wp, sid, f"{HOME}\\keys\\deploy", Right.WRITE)


def test_what_may_never_carry_an_ace_comes_from_plan_sensitive_not_from_notes_or_reasons() -> None:
    key = f"{HOME}\\keys\\deploy"
    fs = fs_for(REPO, extra_files=(key, f"{HOME}\\keys\\readme"))
    # The old note format naming Documents, and a key's deny reason that names no SSH keyword.
    notes = (BUILTIN + "':home': not granted (sensitive): Documents", "withheld, worded anyhow: keys")
    extra = [rule(key, "deny", "a key, said any way", kind="file")]
    plan = workspace(roots=(HOME,), cwd=HOME, extra=extra, notes=notes, sensitive=(key,))
    wp = go(plan, "elevated", fs)
    sid, account = sid_of(wp, HOME), wp.sids["account stockade-offline"]
    _never_reached(wp, key)
    assert path_key(key) in {path_key(p) for p in wp.verify_unreadable}  # checked, not stamped
    assert can(wp, sid, f"{HOME}\\Documents\\notes.txt", Right.WRITE)  # a note withholds nothing
    assert can(wp, sid, f"{HOME}\\keys\\readme", Right.WRITE)
    # The field is what decides: without it the key's deny is an ACE on the key itself.
    bare = go(dataclasses.replace(plan, sensitive=()), "elevated", fs)
    assert any(a.principal == account and a.kind == "deny" for a in aces_at(bare, key))


def test_a_rescanned_match_inside_a_sensitive_path_keeps_its_link_target_free_of_aces() -> None:
    link, target = f"{HOME}\\keys\\id_work", "D:\\vault\\id_work"
    fs = fs_for(REPO, extra_files=(target, "D:\\vault\\notes.txt"), links={link: target})
    ssh = "':ssh_keys' (an IdentityFile pattern)"
    plan = workspace(
        extra=[rule("D:\\vault", "write", "--writable")],
        globs=(GlobEntry(f"{HOME}\\keys\\id_*", "deny", ssh, 8),),
        sensitive=(f"{HOME}\\keys",),  # materialize: a pattern's fixed prefix
    )
    wp = go(plan, "elevated", fs, rescan=True)
    _never_reached(wp, target)
    assert path_key(target) in {path_key(p) for p in wp.verify_unreadable}
    assert can(wp, wp.sids["account stockade-offline"], "D:\\vault\\notes.txt", Right.WRITE)
    without = go(dataclasses.replace(plan, sensitive=()), "elevated", fs, rescan=True)
    assert aces_at(without, target)  # otherwise denied by an ACE on the key (OpenSSH rejects it)


def test_reconciling_plan_a_then_plan_b_removes_exactly_a_leftovers_of_the_same_principal() -> None:
    state = SidStore()
    fs = fs_for(REPO, OTHER)
    plan_a = go(workspace(roots=(REPO,), extra=[rule(BUILD, "write", "--writable")]), state=state, fs=fs)
    plan_b = go(workspace(roots=(OTHER,)), state=state, fs=fs)
    foreign = [
        Ace(USER_SID, REPO, "allow", Right.READ | Right.WRITE | Right.DELETE),
        Ace(ADMINS, BUILD, "allow", ALL),
        Ace(derive_sid("someone else's capability"), TMP, "allow", Right.WRITE),
    ]
    on_disk = [*plan_a.aces, *foreign]
    add, remove = reconcile(on_disk, plan_b)
    shared = plan_b.principals()  # the generic SID and the offline account
    assert sid_of(plan_a, REPO) not in shared
    wanted = {b.identity() for b in plan_b.aces}
    expected = [a for a in plan_a.aces if a.principal in shared and a.identity() not in wanted]
    assert sorted(map(Ace.identity, remove)) == sorted(map(Ace.identity, expected))
    assert any(path_key(a.path) == path_key(BUILD) for a in remove)  # A's --writable grant goes
    assert not any(a.principal in {USER_SID, ADMINS} or a in foreign for a in remove)
    assert not any(a.principal == sid_of(plan_a, REPO) for a in remove)  # another workspace's SID
    after = [a for a in on_disk if a not in remove] + add
    assert reconcile(after, plan_b) == ([], [])  # applying B twice changes nothing
    assert all(f in after for f in foreign)
    assert reconcile(plan_a.aces, plan_a) == ([], [])


def test_workspace_sids_are_stable_across_runs_through_the_state_file(tmp_path: Path) -> None:
    path = os.path.join(str(tmp_path), "state", "windows-sids.json")
    first = SidStore(path)
    sid = first.workspace_sid(REPO)
    assert sid.startswith("S-1-15-3-") and len(sid.split("-")) == 12
    with open(path, encoding="utf-8") as fh:
        assert json.load(fh)["cap_sid"] == {path_key(REPO): sid}
    assert SidStore(path).workspace_sid("c:/users/ALICE/repo/") == sid  # one NTFS path, one SID
    assert SidStore(path).workspace_sid(OTHER) != sid
    assert os.listdir(os.path.dirname(path)) == ["windows-sids.json"]  # atomic: no temp file left
    # A stored SID wins over the derivation (ACEs on disk carry it); a planted non-capability SID is ignored.
    kept = "S-1-15-3-1-2-3-4-5-6-7-8"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"version": 1, "cap_sid": {path_key(REPO): kept, path_key(OTHER): "S-1-1-0"}}, fh)
    store = SidStore(path)
    assert store.workspace_sid(REPO) == kept
    assert store.workspace_sid(OTHER) == derive_sid("stockade workspace: " + path_key(OTHER))
    assert go(workspace(), state=SidStore(path)).sids[f"workspace {REPO}"] == kept


def test_deny_masks_never_take_away_opening_or_stat_and_masks_round_trip() -> None:
    for rights in (ALL, Right.READ, Right.WRITE | Right.DELETE, Right.DELETE_CHILD):
        for kind in ("allow", "deny"):
            assert rights_of(mask(rights, kind), kind) == rights  # type: ignore[arg-type]
    assert not mask(ALL, "deny") & (SYNCHRONIZE | READ_CONTROL | FILE_READ_ATTRIBUTES)
    assert mask(Right.READ, "allow") & SYNCHRONIZE and not mask(ALL, "allow") & 0x40000  # never WRITE_DAC
    assert rights_of(0x1F01FF, "allow") is None  # full control is not something stockade writes


def test_the_windows_plan_round_trips_through_json() -> None:
    plan = workspace(roots=(REPO, OTHER), extra=[rule(f"{REPO}\\.env", "deny", "test", kind="file")])
    for wp in (
        go(plan),
        go(dataclasses.replace(plan, network="proxy"), ports=(3128,)),
        go(plan, "restricted"),
    ):
        text = json.dumps(wp.to_json())
        back = WindowsPlan.from_json(json.loads(text))
        assert back == wp and json.dumps(back.to_json()) == text
        assert "windows plan" in wp.describe() and all(f"refused: {r}" in wp.describe() for r in wp.refusals)


def test_network_is_an_offline_account_with_only_the_proxys_loopback_ports() -> None:
    off = go(workspace())
    assert off.account == "stockade-offline"
    assert [(r.protocol, r.remote_addresses) for r in off.firewall] == [("any", ("any",))]
    proxy = go(dataclasses.replace(workspace(), network="proxy"), ports=(3128,))
    account = proxy.sids["account stockade-offline"]
    assert all(r.principal == account and r.action == "block" for r in proxy.firewall)
    assert proxy.firewall[0].remote_addresses[:2] == ("0.0.0.0-127.0.0.0", "127.0.0.2-255.255.255.255")
    assert proxy.firewall[0].remote_addresses[2:] == ("::-::", "::2-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    assert proxy.firewall[1].remote_addresses == ("127.0.0.1", "::1")
    assert proxy.firewall[1].remote_ports == ("1-3127", "3129-65535")
    assert port_ranges_without([1, 80, 65535]) == ["2-79", "81-65534"]
    online = go(dataclasses.replace(workspace(), network="on"))
    assert online.account == "stockade-online" and online.firewall == ()
    assert any("no proxy port" in r for r in go(dataclasses.replace(workspace(), network="proxy")).refusals)


def test_safe_directory_names_the_worktree_root_on_the_elevated_backend() -> None:
    wp = go(workspace(roots=(REPO, OTHER)), fs=fs_for(REPO))  # OTHER has no .git
    assert wp.safe_directory == ("C:/Users/alice/repo",)
    assert go(dataclasses.replace(workspace(), network="on"), "restricted").safe_directory == ()


def test_every_granted_sid_is_in_the_token_and_the_nearest_entry_wins() -> None:
    carve = [
        rule(f"{REPO}\\a", "deny", "t"),
        rule(f"{REPO}\\a\\b", "write", "t"),
        rule(f"{REPO}\\ro", "read", "t"),
    ]
    wp = go(workspace(extra=carve))
    account = wp.sids["account stockade-offline"]
    assert {a.principal for a in wp.aces} <= {*wp.token_sids, account}
    sid = sid_of(wp, REPO)
    assert not can(wp, account, f"{REPO}\\a\\x", Right.READ)
    assert can(wp, account, f"{REPO}\\a\\b\\x", Right.WRITE) and can(wp, sid, f"{REPO}\\a\\b\\x", Right.WRITE)
    assert can(wp, account, f"{REPO}\\ro\\x", Right.READ) and not can(wp, sid, f"{REPO}\\ro\\x", Right.WRITE)


def test_refusals_for_what_windows_cannot_hold_and_full_access() -> None:
    limited = dataclasses.replace(workspace(), limits=Limits(processes=10))
    assert any("limits (processes)" in r for r in go(limited).refusals)
    scratch = make_plan([rule("C:\\", "read"), rule("C:\\tmp", "write", kind="scratch")])
    assert any("private tmp" in r for r in go(scratch).refusals)
    open_plan = dataclasses.replace(workspace(), unconfined=True)
    assert go(open_plan).aces == () and "NO SANDBOX" in go(open_plan).notes[0]


@pytest.mark.skipif(sys.platform == "win32", reason="checks the refusal off Windows")
def test_the_backend_and_applier_refuse_off_windows() -> None:
    with pytest.raises(SandboxUnavailable, match="Windows only"):
        WindowsBackend().check(workspace())
    from stockade.backends.windows import apply

    with pytest.raises(SandboxUnavailable, match="Windows"):
        apply.apply_plan(go(workspace()), SidStore())


def test_auto_is_the_windows_backend_on_windows_and_windows_can_be_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stockade.backends import select_backend

    asked = select_backend(dataclasses.replace(workspace(), backend="windows"))
    assert isinstance(asked, WindowsBackend) and "experimental" in asked.describe()
    monkeypatch.setattr(sys, "platform", "win32")  # only for the choice: nothing runs
    assert isinstance(select_backend(workspace()), WindowsBackend)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the refusal off Windows")
def test_cli_run_with_the_windows_backend_refuses_here_and_runs_nothing(tmp_path: Path) -> None:
    import subprocess

    marker = tmp_path / "ran"
    stockade = [sys.executable, "-m", "stockade"]
    done = subprocess.run(
        [*stockade, "run", "--backend", "windows", "--", "touch", str(marker)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and not marker.exists(), done.stderr
    assert f"Windows only (this is {sys.platform})" in done.stderr and "nothing was run" in done.stderr
    explain = subprocess.run(
        [*stockade, "explain", "--backend", "windows"], cwd=tmp_path, capture_output=True, text=True
    )
    assert explain.returncode == 0 and "REFUSED: the Windows backend runs on Windows only" in explain.stdout


def test_cli_explain_prints_the_windows_plan(tmp_path: Path) -> None:
    import subprocess

    for extra in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "stockade", "explain", "--platform", "windows", *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0 and "elevated" in done.stdout, done.stderr
