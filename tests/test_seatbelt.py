"""The Seatbelt profile a Plan becomes (backends/seatbelt.py), checked on Linux where nothing can
enforce it: golden profiles; a parser that accepts only the operations and filters we mean to
emit and is applied to every profile generated here; a last-match evaluator that must give the
Plan's answer for every probed path; paths and globs that try to leave their string or regex.

STOCKADE_REGEN_GOLDEN=1 rewrites tests/golden/seatbelt/*.sb after a deliberate change.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import glob
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from test_proxy import servers as servers

from stockade.backends import sbpl, seatbelt
from stockade.backends.base import ProxyEndpoint
from stockade.backends.seatbelt import SeatbeltBackend, check, macos_rules, render
from stockade.errors import SandboxUnavailable, UnsupportedPolicy
from stockade.globs import expand_all
from stockade.plan import GlobEntry, Limits, PathRule, Plan
from stockade.policy.builtin import BUILTIN_FILE

GOLDEN = Path(__file__).with_name("golden") / "seatbelt"
HOME = "/Users/alice"
REPO = f"{HOME}/repo"
B = f"{BUILTIN_FILE}: profiles.workspace.filesystem."
OPERATIONS = {
    "file-read*", "file-read-metadata", "file-write*", "file-write-data", "file-write-unlink",
    "file-ioctl", "file-map-executable", "process-exec", "process-fork", "process-info*", "signal",
    "sysctl-read", "mach-lookup", "ipc-posix-sem", "dynamic-code-generation", "system-socket",
    "network-outbound", "network-inbound", "network-bind",
}  # fmt: skip
PATH_FILTERS = {"literal", "subpath"}
FILTERS = PATH_FILTERS | {"regex", "require-not", "require-all", "require-any", "remote", "local", "target"}
FILTERS |= {"global-name", "sysctl-name", "sysctl-name-prefix"}


# --- Plans with macOS paths -------------------------------------------------------------------


def rule(path: str, access: str, reason: str = "test", **kw: Any) -> PathRule:
    return PathRule(path, access, kw.pop("kind", "dir"), reason, kw.pop("lexical", path), **kw)  # type: ignore[arg-type]


def make_plan(
    rules: Iterable[PathRule],
    *,
    globs: Iterable[GlobEntry] = (),
    network: str = "off",
    roots: tuple[str, ...] = (REPO,),
    name: str = "workspace",
) -> Plan:
    ordered = tuple(sorted(rules, key=lambda r: r.path))
    plan = Plan(name, False, roots[0], roots, ordered, (), network, "/tmp", {}, {})
    return dataclasses.replace(plan, globs=tuple(globs))


def protected(root: str, gitdir: str | None = None) -> list[PathRule]:
    """What plan.py's protect() makes for a root with a `.git` directory (git = protect)."""
    gitdir = gitdir or f"{root}/.git"
    out = [rule(f"{root}/{n}", "read", f"protected {n}") for n in (".agents", ".codex", ".stockade")]
    out.append(rule(gitdir, "write", "git = protect", pinned=True))
    for name in ("config", "config.worktree", "hooks", "info", "commondir"):
        out.append(rule(f"{gitdir}/{name}", "read", "git = protect", kind="file"))
    return out


def env_globs(root: str, depth: int = 8) -> list[GlobEntry]:
    return [
        GlobEntry(f"{root}/**/.env", "deny", B + "'**/.env'", depth),
        GlobEntry(f"{root}/**/.env.*", "deny", B + "'**/.env.*'", depth),
    ]


def read_only_plan() -> Plan:
    rules = [rule("/", "read", B.replace("workspace", "read-only") + "':root'")]
    rules.append(rule("/tmp", "write", "no writable tmp granted: private tmpfs", kind="scratch"))
    return make_plan(rules, name="read-only")


def workspace_plan() -> Plan:
    rules = [
        rule("/", "read", B + "':root'"),
        rule(f"{HOME}/.ssh", "deny", B + "'~/.ssh'"),
        rule(f"{HOME}/.ssh/known_hosts", "read", B + "'~/.ssh/known_hosts*'", kind="file", glob=True),
        rule(f"{HOME}/.ssh/config", "read", B + "'~/.ssh/config'", kind="file"),
        rule(
            f"{HOME}/.keys/deploy", "deny", B + "':ssh_keys' (IdentityFile at ~/.ssh/config:3)", kind="file"
        ),
        rule(f"{HOME}/.gnupg", "deny", B + "'~/.gnupg'"),
        rule(f"{HOME}/.aws", "deny", B + "'~/.aws'"),
        rule(f"{HOME}/.config/gh", "deny", B + "'~/.config/gh'"),
        rule(f"{HOME}/.netrc", "deny", B + "'~/.netrc'", kind="file"),
        rule(f"{HOME}/.config/stockade", "read", "stockade's own config"),
        rule("/private/tmp", "write", B + "':slash_tmp'"),
        rule("/private/var/folders/zz/x1/T", "write", B + "':tmpdir'"),
        rule(REPO, "write", B + "':workspace_roots'"),
        rule(f"{REPO}/.env", "deny", B + "'**/.env'", kind="file", glob=True),
        *protected(REPO),
    ]
    ssh = GlobEntry(f"{HOME}/.ssh/known_hosts*", "read", B + "'~/.ssh/known_hosts*'", 8)
    return make_plan(rules, globs=[ssh, *env_globs(REPO)])


def multi_root_plan() -> Plan:
    app, lib, scratch = f"{HOME}/src/app", f"{HOME}/src/lib", "/private/tmp/experiment"
    rules = [rule("/", "read", B + "':root'"), rule(f"{HOME}/.ssh", "deny", B + "'~/.ssh'")]
    for root in (app, lib, scratch):
        rules += [rule(root, "write", B + "':workspace_roots'"), *protected(root)]
    rules.append(rule(f"{lib}/build/.env.local", "deny", B + "'**/.env.*'", kind="file", glob=True))
    globs = [g for root in (app, lib, scratch) for g in env_globs(root)]
    return make_plan(rules, globs=globs, roots=(app, lib, scratch))


def carve_out_plan() -> Plan:
    """A linked worktree: the worktree's gitdir lives in the main repo, protected the same way."""
    wt, common = f"{HOME}/wt", f"{REPO}/.git"
    gitdir = f"{common}/worktrees/wt"
    rules = [rule("/", "read", B + "':root'"), rule(wt, "write", B + "':workspace_roots'")]
    rules += [rule(f"{wt}/{n}", "read", f"protected {n}") for n in (".agents", ".codex", ".stockade")]
    rules += [rule(f"{wt}/.git", "read", "git = protect (gitdir: pointer)", kind="file")]
    rules += [r for r in protected(REPO, common) if r.path != common] + [
        rule(common, "write", "git = protect")
    ]
    rules += [rule(gitdir, "write", "git = protect (linked worktree)", pinned=True)]
    rules += [rule(f"{gitdir}/{n}", "read", "git = protect", kind="file") for n in ("commondir", "gitdir")]
    rules += [rule(f"{common}/modules/sub/{n}", "read", "git = protect") for n in ("config", "hooks", "info")]
    return make_plan(rules, roots=(wt,))


def deny_glob_plan() -> Plan:
    rules = [
        rule("/", "read", B + "':root'"),
        rule(REPO, "write", B + "':workspace_roots'"),
        rule(f"{REPO}/.env", "deny", B + "'**/.env'", kind="file", glob=True),
        rule(f"{REPO}/api/.env.production", "deny", B + "'**/.env.*'", kind="file", glob=True),
        rule(f"{REPO}/.env.example", "read", "config: '.env.example'", kind="file"),
        # a match that is a symlink: denied by its canonical target too
        rule(
            f"{HOME}/secrets/web.env",
            "deny",
            B + "'**/.env'",
            kind="file",
            glob=True,
            lexical=f"{REPO}/web/.env",
        ),
        rule(f"{REPO}/fixtures", "read", "config: 'fixtures'"),
        rule(f"{REPO}/fixtures/.env", "read", "config: 'fixtures/.env'"),  # a directory, reopened
        rule(f"{REPO}/fixtures/.env/keys", "write", "config: 'fixtures/.env/keys'"),
    ]
    globs = [*env_globs(REPO), GlobEntry(f"{REPO}/**/*.pem", "deny", "config: '**/*.pem'", 3)]
    globs.append(GlobEntry(f"{REPO}/certs/[abc]*.crt", "read", "config: 'certs/[abc]*.crt'", 0))
    return make_plan(rules, globs=globs)


def proxy_plan(network: str = "proxy") -> Plan:
    return dataclasses.replace(workspace_plan(), network=network)


def most_specific_plan() -> Plan:
    rules = [
        rule("/", "read", "r"),
        rule("/r", "write", "w"),
        rule("/r/a", "deny", "d"),
        rule("/r/a/b", "write", "w"),
    ]
    rules += [rule("/r/a/b/c", "read", "r"), rule("/r/a/bc", "read", "r")]
    return make_plan(rules, roots=("/r",))


def minimal_plan() -> Plan:
    m = f"{HOME}/.config/stockade/config.toml: profiles.mini.filesystem.':minimal'"
    rules = [
        rule(p, "read", m, lexical=lex)
        for p, lex in (("/usr", "/usr"), ("/usr/bin", "/bin"), ("/private/etc", "/etc"))
    ]
    rules += [rule(p, "read", m) for p in ("/opt/homebrew/Cellar/python@3.12/3.12.4", "/opt/homebrew/bin")]
    rules += [rule(REPO, "write", "mini: ':workspace_roots'"), *protected(REPO)]
    rules.append(rule("/tmp", "write", "no writable tmp granted: private tmpfs", kind="scratch"))
    return make_plan(rules, name="mini")


PLANS = {
    "builtin-read-only": read_only_plan,
    "builtin-workspace": workspace_plan,
    "workspace-multi-root": multi_root_plan,
    "git-carve-outs": carve_out_plan,
    "deny-globs": deny_glob_plan,
    "proxy-mode": proxy_plan,
    "network-on": lambda: proxy_plan("on"),
    "most-specific": most_specific_plan,
    "minimal": minimal_plan,
}


def profile_of(plan: Plan, **kw: Any) -> str:
    """Render, and check the structure of every profile this file generates."""
    if plan.network == "proxy":
        kw.setdefault("proxy_port", 3128)
    text = render(plan, **kw)
    validate(parse(text))
    return text


# --- a small SBPL reader ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sym:
    name: str


Form = Any  # Sym | str | int | list[Form]
TOKEN = re.compile(r"[^\s()\";]+")


def parse(text: str) -> list[Form]:
    """Top-level forms. Strings take only the escapes the renderer writes (\\\\ and \\")."""
    stack: list[list[Form]] = [[]]
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\n":
            i += 1
        elif ch == ";":
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif ch == "(":
            stack.append([])
            i += 1
        elif ch == ")":
            assert len(stack) > 1, f"unbalanced ) at {i}"
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        elif ch == '"':
            out, i = [], i + 1
            while text[i] != '"':
                if text[i] == "\\":
                    assert text[i + 1] in '\\"', f"unexpected escape \\{text[i + 1]} at {i}"
                    i += 1
                out.append(text[i])
                i += 1
            stack[-1].append("".join(out))
            i += 1
        else:
            m = TOKEN.match(text, i)
            assert m, f"bad token at {i}"
            tok = m.group()
            stack[-1].append(int(tok) if tok.isdigit() else Sym(tok))
            i = m.end()
    assert len(stack) == 1, "unbalanced ("
    return stack[0]


@functools.cache
def posix_to_python(ere: str) -> re.Pattern[str]:
    """A POSIX extended regex for Python's `re`: `$` is the end of the string; inside brackets
    `\\` and `[` are literal. Intervals are refused (the renderer never writes them)."""
    out, i = [], 0
    while i < len(ere):
        ch = ere[i]
        if ch == "\\":
            out.append(ere[i : i + 2])
            i += 2
            continue
        if ch == "[":
            j = i + 1 + (ere[i + 1] == "^")
            j += ere[j] == "]"
            end = ere.index("]", j)
            body = ere[i + 1 : end].replace("\\", "\\\\").replace("[", "\\[")
            out.append("[" + body + "]")
            i = end + 1
            continue
        assert ch != "{", "interval in a regex"
        out.append("\\Z" if ch == "$" else ch)
        i += 1
    return re.compile("".join(out))


def validate(forms: list[Form]) -> None:
    """Only the operations and filters we mean to write, each with well-formed arguments."""
    assert forms[:2] == [[Sym("version"), 1], [Sym("deny"), Sym("default")]]
    for form in forms[2:]:
        assert isinstance(form, list) and form[0] in (Sym("allow"), Sym("deny")), form
        ops = [x for x in form[1:] if isinstance(x, Sym)]
        filters = [x for x in form[1:] if isinstance(x, list)]
        assert ops and len(ops) + len(filters) == len(form) - 1, form
        assert {o.name for o in ops} <= OPERATIONS, ops
        for f in filters:
            check_filter(f)


def check_filter(f: Form) -> None:
    assert isinstance(f, list) and isinstance(f[0], Sym) and f[0].name in FILTERS, f
    name, args = f[0].name, f[1:]
    if name in PATH_FILTERS:
        assert len(args) == 1 and isinstance(args[0], str) and args[0].startswith("/"), f
        assert args[0] == "/" or not args[0].endswith("/"), f
    elif name == "regex":
        assert len(args) == 1 and isinstance(args[0], str) and args[0].startswith("^"), f
        posix_to_python(args[0])
    elif name == "require-not":
        assert len(args) == 1, f
        check_filter(args[0])
    elif name in ("require-all", "require-any"):
        assert args, f
        for a in args:
            check_filter(a)
    elif name == "target":
        assert args == [Sym("same-sandbox")], f
    elif name in ("remote", "local"):
        if args[0] == Sym("ip"):
            assert len(args) == 2 and re.fullmatch(r"(\*|localhost):(\*|\d+)", args[1]), f
        else:
            assert args[0] == Sym("unix-socket") and args[1][0] == Sym("path-literal"), f
    else:
        assert len(args) == 1 and isinstance(args[0], str) and re.fullmatch(r"[a-zA-Z0-9._]+", args[0]), f


def strings(forms: list[Form], filters: set[str]) -> list[str]:
    """The string argument of every filter named in `filters`, anywhere."""
    out: list[str] = []
    for f in forms:
        if isinstance(f, list):
            if f and f[0] in {Sym(x) for x in filters} and isinstance(f[1], str):
                out.append(f[1])
            out += strings(f, filters)
    return out


def skeleton(forms: list[Form]) -> list[Form]:
    """The profile's shape with every string blanked out."""
    return [skeleton(f) if isinstance(f, list) else ("S" if isinstance(f, str) else f) for f in forms]


# --- a last-match evaluator, and the Plan's own answer ----------------------------------------


def matches(f: Form, path: str) -> bool | None:
    """Does a filter match `path`? None for filters about something other than files."""
    name, args = f[0].name, f[1:]
    if name == "literal":
        return path == args[0]
    if name == "subpath":
        return args[0] == "/" or path == args[0] or path.startswith(args[0] + "/")
    if name == "regex":
        return posix_to_python(args[0]).search(path) is not None
    if name == "require-not":
        return not matches(args[0], path)
    if name == "require-all":
        return all(matches(a, path) for a in args)
    if name == "require-any":
        return any(matches(a, path) for a in args)
    return None


def allowed(forms: list[Form], op: str, path: str) -> bool:
    """Seatbelt's evaluation: (deny default), then the last rule that matches decides. A rule's
    filters are alternatives; a rule without one matches everything."""
    verdict = False
    for form in forms[2:]:
        ops = [x.name for x in form[1:] if isinstance(x, Sym)]
        if not any(o == op or (o.endswith("*") and op.startswith(o[:-1])) for o in ops):
            continue
        filters = [f for f in form[1:] if isinstance(f, list)]
        if not filters or any(matches(f, path) for f in filters):
            verdict = form[0] == Sym("allow")
    return verdict


ONE_NAME = re.compile(r"(?:[^*?[]|\[[*?[]\])*\Z")


def glob_matches(g: GlobEntry, path: str) -> bool:
    """Independently of sbpl: the Plan's glob semantics, component by component (fnmatch)."""
    parts = [p for p in g.pattern.split("/") if p]
    while parts and parts[-1] == "**":
        parts.pop()
    # A component whose every wildcard is escaped (`p[[]1]`) names one thing: part of the prefix.
    first = next((i for i, p in enumerate(parts) if not ONE_NAME.match(p)), len(parts))
    names = [p for p in path.split("/") if p]
    if len(names) < first or not all(map(fnmatch.fnmatchcase, names[:first], parts[:first])):
        return False
    segs, rest = [p if p == "**" else p.replace("**", "*") for p in parts[first:]], names[first:]
    if len(rest) > (g.depth if "**" in segs else len(segs)):
        return False

    def walk(s: list[str], r: list[str]) -> bool:
        if not s:
            return not r
        if s[0] == "**":
            return any(walk(s[1:], r[k:]) for k in range(len(r) + 1))
        return bool(r) and fnmatch.fnmatchcase(r[0], s[0]) and walk(s[1:], r[1:])

    return walk(segs, rest)


def depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def ancestors_or_self(path: str) -> list[str]:
    out = [path]
    while path != "/":
        path = os.path.dirname(path)
        out.append(path)
    return out


def reference(plan: Plan, rules: list[PathRule], path: str) -> str | None:
    """What the profile must answer, computed from the Plan with fnmatch: the nearest entry E,
    unless a glob matches deeper than E (deny if any such glob denies: between glob matches
    deny wins). A read glob's deeper match also stays denied when E lies in a deny glob's
    match and E itself does not read (exact entries reopen only what they say)."""
    by_path = {r.path: r for r in rules}
    chain = ancestors_or_self(path)
    e0 = next((a for a in chain if a in by_path), None)
    d0 = -1 if e0 is None else depth(e0)
    a0 = None if e0 is None else by_path[e0].access
    deeper = {g.access for g in plan.globs for a in chain if depth(a) > d0 and glob_matches(g, a)}
    if not deeper:
        return a0
    if "deny" in deeper:
        return "deny"
    held = e0 is not None and any(
        g.access == "deny" and glob_matches(g, a) for g in plan.globs for a in ancestors_or_self(e0)
    )
    return "deny" if held and a0 != "read" else "read"


def probes(plan: Plan, rules: list[PathRule]) -> set[str]:
    """Entries, what lies below and beside them, and names each glob matches or almost does."""
    out = {"/", "/nowhere", "/nowhere/x"}
    pool = ["x", ".env", ".env.local", ".envrc", "a.pem", "id_x", "known_hosts", "known_hosts.1", "b1.crt"]
    for r in rules:
        top = r.path.rstrip("/")  # "/" is ""
        out |= {r.path, f"{top}/x", f"{top}/x/y", os.path.join(os.path.dirname(r.path), "zz")}
        out |= {f"{top}x"} if top else set()  # a sibling that shares its prefix
        out |= {f"{top}/{n}" for n in pool} | {f"{top}/sub/{n}/x" for n in pool[:5]}
    for g in plan.globs:
        paths = [""]
        for part in (p for p in g.pattern.split("/") if p):
            if part == "**":
                paths = [p + "/d" * k for p in paths for k in (0, 1, 2, g.depth - 1, g.depth, g.depth + 1)]
            elif any(c in part for c in "*?["):
                names = [*[n for n in pool if fnmatch.fnmatchcase(n, part)][:2], "nomatch"]
                paths = [p + "/" + n for p in paths for n in names]
            else:
                paths = [p + "/" + part for p in paths]
        out |= set(paths) | {p + "/child" for p in paths}
    assert all(p.startswith("/") and "//" not in p for p in out if p)
    return {p for p in out if p}


def nearest(access: dict[str, str], path: str) -> str | None:
    return next((access[a] for a in ancestors_or_self(path) if a in access), None)


def check_against_plan(plan: Plan, text: str) -> None:
    """Every probed path gets the Plan's answer from the profile: read, write, exec, unlink."""
    forms = parse(text)
    rules = macos_rules(plan)
    effective = {r.path: r.access for r in rules}
    pins = {r.path for r in rules if r.pinned}
    pins |= {a for r in rules for a in ancestors_or_self(r.path)[1:] if nearest(effective, a) == "write"}
    for path in sorted(probes(plan, rules)):
        want = reference(plan, rules, path)
        got = {op: allowed(forms, op, path) for op in ("file-read-data", "file-write-data", "process-exec")}
        assert got == {
            "file-read-data": want in ("read", "write"),
            "file-write-data": want == "write",
            "process-exec": want in ("read", "write"),
        }, (path, want, got)
        assert allowed(forms, "file-write-unlink", path) == (want == "write" and path not in pins), path


# --- golden profiles, and the Plan's answers --------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLANS))
def test_golden_profiles(name: str) -> None:
    text = profile_of(PLANS[name]())
    golden = GOLDEN / f"{name}.sb"
    if os.environ.get("STOCKADE_REGEN_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{name}: rerun with STOCKADE_REGEN_GOLDEN=1 if this is deliberate"


@pytest.mark.parametrize("name", sorted(set(PLANS) - {"builtin-read-only", "minimal"}))
def test_every_path_gets_the_plans_answer(name: str) -> None:
    plan = PLANS[name]()
    check_against_plan(plan, profile_of(plan))


def test_most_specific_entry_wins_whatever_the_order_of_entries() -> None:
    """Regions are disjoint, so even shuffled entry rules give the same answers."""
    plan = most_specific_plan()
    lines = profile_of(plan).splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(";; entries"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(";;"))
    for seed in range(3):
        body = lines[start + 1 : end]
        random.Random(seed).shuffle(body)
        check_against_plan(plan, "\n".join(lines[: start + 1] + body + lines[end:]) + "\n")
    forms = parse("\n".join(lines))
    assert allowed(forms, "file-write-data", "/r/a/b/new") and not allowed(forms, "file-read-data", "/r/a/x")
    assert not allowed(forms, "file-write-data", "/r/a/b/c/x") and allowed(forms, "file-read-data", "/r/a/bc")


def test_read_only_profile_hides_host_tmp_and_grants_a_private_tmpdir() -> None:
    scratch = "/private/var/folders/zz/x1/T/stockade-tmp-1"
    forms = parse(profile_of(read_only_plan(), scratch_dir=scratch))
    assert allowed(forms, "file-write-data", f"{scratch}/f")
    assert not allowed(forms, "file-read-data", "/private/tmp/host-file")
    assert not allowed(forms, "file-write-data", "/private/var/folders/zz/x1/T/other")
    assert allowed(forms, "file-read-data", "/etc/hosts")
    assert not allowed(forms, "file-write-data", f"{REPO}/f")
    assert allowed(forms, "file-write-data", "/dev/null")
    assert not allowed(forms, "file-read-data", "/dev/disk0")  # /dev: the usual devices only
    assert allowed(forms, "file-read-metadata", "/tmp")  # the symlink to the hidden /private/tmp


def test_scratch_keeps_roots_and_cwd_under_tmp_visible() -> None:
    plan = dataclasses.replace(read_only_plan(), roots=("/private/tmp/ws",), cwd="/private/tmp/ws/sub")
    got = {r.path: r.access for r in macos_rules(plan, "/private/var/folders/T/s")}
    assert got["/private/tmp"] == "deny" and got["/private/tmp/ws"] == got["/private/tmp/ws/sub"] == "read"
    assert got["/private/var/folders/T/s"] == "write"


def test_minimal_becomes_the_macos_start_up_set() -> None:
    plan = minimal_plan()
    rules = {r.path: r for r in macos_rules(plan)}
    for path in seatbelt.MACOS_MINIMAL:
        assert rules[path].access == "read", path
    assert "/opt/homebrew/Cellar/python@3.12/3.12.4" in rules and "/opt/homebrew/bin" in rules  # interpreter
    assert "/usr/bin" not in rules  # a Linux path of :minimal, gone (macOS's /usr covers it)
    forms = parse(profile_of(plan))
    assert allowed(forms, "process-exec", "/usr/bin/git") and allowed(
        forms, "file-read-data", "/System/Library/x"
    )
    assert not allowed(forms, "file-read-data", f"{HOME}/notes.txt")
    assert not allowed(forms, "process-exec", "/opt/other/bin/tool")
    assert allowed(forms, "file-read-metadata", HOME) and not allowed(forms, "file-read-data", HOME)
    assert allowed(forms, "file-write-data", f"{REPO}/src/x.py")


def test_a_plan_entry_at_a_minimal_path_wins() -> None:
    plan = minimal_plan()
    plan = dataclasses.replace(plan, rules=(*plan.rules, rule("/private/var/select", "deny", "me")))
    assert {r.path: r.access for r in macos_rules(plan)}["/private/var/select"] == "deny"


def test_pins_keep_entries_from_being_moved_away() -> None:
    forms = parse(profile_of(workspace_plan()))
    for path in ("/", REPO, f"{REPO}/.git"):
        assert not allowed(forms, "file-write-unlink", path), path
    assert allowed(forms, "file-write-unlink", f"{REPO}/src")  # nothing below it to detach
    assert allowed(forms, "file-write-unlink", "/private/var/folders/zz/x1/T")  # a leaf entry
    assert not allowed(forms, "file-write-unlink", f"{REPO}/.git/config")  # read-only anyway


def test_globs_cover_files_made_later_and_exact_entries_beat_them() -> None:
    forms = parse(profile_of(deny_glob_plan()))
    for path in (f"{REPO}/new/.env", f"{REPO}/a/b/.env.test", f"{REPO}/.env/inside", f"{REPO}/x/k.pem"):
        assert not allowed(forms, "file-read-data", path), path
    assert allowed(forms, "file-read-data", f"{REPO}/.env.example")
    assert allowed(forms, "file-read-data", f"{REPO}/fixtures/.env/a")  # exact read beats the deny glob
    assert not allowed(forms, "file-read-data", f"{REPO}/fixtures/.env/a/.env")  # a deeper match again
    assert allowed(forms, "file-write-data", f"{REPO}/fixtures/.env/keys/k")
    assert not allowed(forms, "file-read-data", f"{HOME}/secrets/web.env")  # canonical target of a match
    assert allowed(forms, "file-read-data", REPO + "/d" * 8 + "/.env")  # beyond the depth, as on Linux
    assert allowed(forms, "file-read-data", f"{REPO}/certs/b1.crt")
    assert not allowed(forms, "file-write-data", f"{REPO}/certs/b1.crt")


def test_exec_only_under_readable_entries() -> None:
    forms = parse(profile_of(workspace_plan()))
    assert allowed(forms, "process-exec", f"{REPO}/run.sh") and allowed(forms, "process-exec", "/usr/bin/env")
    assert not allowed(forms, "process-exec", f"{HOME}/.ssh/evil")
    assert not allowed(forms, "process-exec", f"{REPO}/.env")


def test_network_modes() -> None:
    def net(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if "network" in ln or "system-socket" in ln]

    assert net(profile_of(workspace_plan())) == [";; network: off"]
    assert net(profile_of(proxy_plan(), proxy_port=41234)) == [
        ";; network: only stockade's proxy, on loopback",
        "(allow system-socket)",
        '(allow network-outbound (remote ip "localhost:41234"))',
    ]
    assert '(allow network-outbound (remote ip "*:*"))' in net(profile_of(proxy_plan("on")))
    with pytest.raises(UnsupportedPolicy, match="port"):
        render(proxy_plan())
    with pytest.raises(UnsupportedPolicy, match="port"):
        render(proxy_plan(), proxy_port=70000)


def test_tty_mode_reaches_only_terminals() -> None:
    plain, tty = profile_of(workspace_plan()), profile_of(workspace_plan(), tty=True)
    assert "ttys" not in plain and allowed(parse(tty), "file-ioctl", "/dev/ttys004")
    assert not allowed(parse(tty), "file-read-data", "/dev/disk0")


# --- escaping ---------------------------------------------------------------------------------

ADVERSARIAL = [
    'we"ird', "back\\slash", "paren(s)", "semi;colon", "new\nline", "cr\rtab\t", "meta$^.*+?[]{}|",
    "ünïcødé-日本語", "trailing\\", '\\"', "))(deny default)(", '"))\n(allow default)\n;', "sp ace", "#x",
]  # fmt: skip


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_strings_round_trip(text: str) -> None:
    assert parse(f"(x {sbpl.string(text)})") == [[Sym("x"), text]]
    rx = posix_to_python(sbpl.literal(text))
    assert rx.fullmatch(text) and not rx.fullmatch(text + "x") and not rx.fullmatch(text[:-1])


def adversarial_plan(name: str) -> Plan:
    """A root named `name` with entries and globs under it (in a glob, as a glob would name it)."""
    root = f"{HOME}/{name}"
    rules = [rule("/", "read"), rule(root, "write"), rule(f"{root}/sec{name}ret", "deny")]
    rules += [rule(f"{root}/.git", "write", pinned=True), rule(f"{root}/.git/config", "read")]
    g = f"{HOME}/{glob.escape(name)}"
    globs = [GlobEntry(f"{g}/**/.env", "deny", "g", 4), GlobEntry(f"{g}/*.k[e]y", "deny", "g", 4)]
    globs.append(GlobEntry(f"{g}/pub/?{glob.escape(name)}*", "read", "g", 4))
    return make_plan(rules, globs=globs, roots=(root,))


def glob_order(g: GlobEntry) -> tuple[bool, str]:
    return (g.access == "deny", g.pattern)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_paths_stay_in_their_strings(name: str) -> None:
    plan = adversarial_plan(name)
    text = profile_of(plan)
    forms = parse(text)
    assert skeleton(forms) == skeleton(parse(profile_of(adversarial_plan("plain"))))
    root = f"{HOME}/{name}"
    expected = {r.path for r in macos_rules(plan)} | set(seatbelt.DEVICES) | set(seatbelt.TERMINALS)
    expected |= {a for r in plan.rules for a in ancestors_or_self(r.path)} | set(seatbelt.ALIASES)
    assert set(strings(forms, PATH_FILTERS)) <= expected
    assert {root, f"{root}/sec{name}ret"} <= set(strings(forms, PATH_FILTERS))
    found = dict.fromkeys(r for r in strings(forms, {"regex"}) if not r.startswith("^/dev/"))
    assert list(found) == [sbpl.glob_regex(g.pattern, g.depth) for g in sorted(plan.globs, key=glob_order)]
    pub, env, key = (posix_to_python(r) for r in found)
    for rx, g, yes, no in (
        (env, plan.globs[0], [".env", "a/.env", "a/b/.env/x"], [".envx", "a.env", "d/d/d/d/.env"]),
        (key, plan.globs[1], ["id.key", "id.key/x"], ["id.kxy", "d/i.key", "id.keys"]),
        (pub, plan.globs[2], [f"pub/q{name}", f"pub/q{name}x/y"], [f"pub/{name}", f"pub/qq/{name}"]),
    ):
        for rel in yes + no:
            path = f"{root}/{rel}"
            want = any(glob_matches(g, a) for a in ancestors_or_self(path))
            assert want == (rel in yes) and (rx.search(path) is not None) == want, (rel, rx.pattern)
        for other in (f"{root}x/{yes[0]}", f"{HOME}/other/{yes[0]}", f"{root[:-1]}/{yes[0]}"):
            assert not rx.search(other), other
    check_against_plan(plan, text)


def test_glob_regexes_match_exactly_what_the_plans_walk_finds(tmp_path: Path) -> None:
    names = [
        ".env",
        ".env.local",
        "x.env",
        "a",
        "b",
        "ab",
        "x?y",
        "xzy",
        "q]",
        'we"ird',
        "new\nline",
        "é.env",
    ]
    names += ["back\\slash", "[ab]", "c", "id_rsa", "id_rsa.pub", "-", "^"]
    for first in names:
        for second in ["", *names[:8]]:
            for third in ["", ".env", "c"]:
                (tmp_path / first / second / third).mkdir(parents=True, exist_ok=True)
    paths = [os.path.join(d, n) for d, dirs, _ in os.walk(tmp_path) for n in dirs]
    patterns = ["**/.env", "**/.env.*", "*/x?y", "a/**/c", "**/a/**/c", "**/[ab]*", "[!a]*/c", "**/id_*"]
    patterns += ["q[]]", "*/[!]]*", "[a-c]", "**/*.env", "*/**/.env", "[^a]*", "[[]ab]", "-", "*[-^]"]
    for depth_ in (1, 2, 3):
        for pat in patterns:
            pattern = f"{tmp_path}/{pat}"
            want = set(expand_all([pattern], depth_)[pattern])
            ere = sbpl.glob_regex(pattern, depth_, below=False)
            got = set() if ere is None else {p for p in paths if posix_to_python(ere).search(p)}
            assert got == want, (pat, depth_, sorted(got ^ want))
            ere = sbpl.glob_regex(pattern, depth_)
            under = set() if ere is None else {p for p in paths if posix_to_python(ere).search(p)}
            assert under == {p for p in paths if any(p == m or p.startswith(m + "/") for m in want)}, pat
            entry = GlobEntry(pattern, "read", "t", depth_)
            assert {p for p in paths if glob_matches(entry, p)} == want, pat  # the reference agrees


def test_below_regex_is_what_lies_under_a_deeper_match() -> None:
    glob = GlobEntry(f"{REPO}/**/.env", "deny", "g", 3)
    for top in ("/", REPO, f"{REPO}/a", f"{REPO}/a/.env", f"{REPO}/a/b/c", "/elsewhere"):
        rx = sbpl.below_regex(glob.pattern, glob.depth, top)
        for p in probes(make_plan([], globs=[glob]), [rule(top, "read")]):
            want = any(glob_matches(glob, a) and depth(a) > depth(top) for a in ancestors_or_self(p))
            want = want and (top == "/" or p.startswith(top + "/"))
            assert (rx is not None and posix_to_python(rx).search(p) is not None) == want, (top, p)


# --- what Seatbelt cannot express, and the backend on Linux -----------------------------------


def test_check_refuses_with_reasons() -> None:
    plan = workspace_plan()
    assert check(plan) == []

    def with_glob(pattern: str, access: str = "deny") -> Plan:
        return dataclasses.replace(
            plan, globs=(GlobEntry(f"{REPO}/{pattern}", access, f"cfg: {pattern!r}", 8),)
        )

    assert any("multi-byte" in p and "cfg: '**/secret?'" in p for p in check(with_glob("**/secret?")))
    assert any("multi-byte" in p for p in check(with_glob("[!a]*")))
    assert check(with_glob("[!a]*", "read")) == []
    assert any("non-ASCII" in p for p in check(with_glob("[é]x")))
    assert any("POSIX and Python" in p for p in check(with_glob("[!\\]x", "read")))
    bad = dataclasses.replace(plan, rules=(*plan.rules, rule(f"{HOME}/x/", "read", "cfg")))
    assert any("normalized" in p for p in check(bad))
    with pytest.raises(UnsupportedPolicy, match="normalized"):
        render(bad)
    limited = dataclasses.replace(plan, limits=Limits(processes=10, memory=1 << 30, cpu_seconds=5))
    assert [p.split(":")[0] for p in check(limited)] == ["limits.processes", "limits.memory"]
    assert render(limited)  # limits are not the profile's business
    assert check(dataclasses.replace(plan, unconfined=True))


def test_backend_is_macos_only() -> None:
    backend = SeatbeltBackend()
    assert not backend.available()
    with pytest.raises(SandboxUnavailable, match="macOS only"):
        backend.check(workspace_plan())


def test_launch_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(seatbelt, "unavailable", lambda: None)
    monkeypatch.setattr(seatbelt.tempfile, "tempdir", str(tmp_path))
    backend = SeatbeltBackend()
    spec = backend.launch(read_only_plan(), ["-x", "arg"])
    assert spec.argv[:2] == [seatbelt.SANDBOX_EXEC, "-p"] and spec.argv[3:] == ["--", "-x", "arg"]
    scratch = spec.remove_after[0]
    assert spec.env["TMPDIR"] == scratch and scratch.startswith(str(tmp_path)) and os.path.isdir(scratch)
    forms = parse(spec.argv[2])
    validate(forms)
    assert allowed(forms, "file-write-data", scratch + "/f") and spec.preexec is not None
    backend.cleanup(spec, 2**22 + 12345)  # no such process group: nothing to kill
    assert not os.path.exists(scratch)
    assert backend.finish(spec, -9) == 137 and backend.finish(spec, 3) == 3
    # Proxy mode: only with a proxy on a loopback port, which the profile and the env both name.
    backend.check(proxy_plan())
    with pytest.raises(UnsupportedPolicy, match="no proxy listens on a loopback port"):
        backend.launch(proxy_plan(), ["x"])
    endpoint = ProxyEndpoint(str(tmp_path), str(tmp_path / "proxy.sock"), str(tmp_path / "h.sock"), 41234)
    spec = backend.launch(proxy_plan(), ["x"], endpoint)
    assert '(allow network-outbound (remote ip "localhost:41234"))' in spec.argv[2]
    assert spec.env["HTTPS_PROXY"] == "http://127.0.0.1:41234" and spec.env["ALL_PROXY"].endswith(":41234")
    assert spec.env["GIT_SSH_COMMAND"] == "ssh -o ProxyCommand='nc -X connect -x 127.0.0.1:41234 %h %p'"


def test_cli_explain_prints_this_hosts_profile_and_seatbelt_refuses_to_run_here(tmp_path: Path) -> None:
    root = tmp_path / "p[1] (x)"
    root.mkdir()
    explain = subprocess.run(
        [sys.executable, "-m", "stockade", "explain", "--platform", "macos", "--root", str(root)],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert explain.returncode == 0, explain.stderr
    forms = parse(explain.stdout)
    validate(forms)
    assert str(root) in strings(forms, PATH_FILTERS)
    marker = tmp_path / "ran"
    run = subprocess.run(
        [sys.executable, "-m", "stockade", "run", "--backend", "seatbelt", "--", "touch", str(marker)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "macOS only" in run.stderr and not marker.exists(), run.stderr


INSIDE_PROXY = r"""
import json, os, socket, sys, urllib.request
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode().strip()}"
web, echo = sys.argv[1:3]
out = {"ok": get(f"http://ok.test:{web}/x"), "bad": get(f"http://bad.test:{web}/x")}
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
tunnel = socket.create_connection(("127.0.0.1", port), timeout=10)  # CONNECT, as HTTPS does
tunnel.sendall(f"CONNECT ok.test:{echo} HTTP/1.1\r\n\r\n".encode())
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += tunnel.recv(1)
tunnel.sendall(b"tunnel" * 50000)
tunnel.shutdown(socket.SHUT_WR)
back = b""
while data := tunnel.recv(65536):
    back += data
out |= {"tunnel": [head.split()[1].decode(), len(back)], "proxy": os.environ["HTTP_PROXY"]}
print(json.dumps(out))
"""


def test_proxy_mode_wiring_through_a_stand_in_for_sandbox_exec(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, servers: dict[str, int]
) -> None:
    """The one spawn path with the Seatbelt backend in proxy mode: the proxy is started on a
    loopback port, the profile allows exactly that port, and the command's HTTP_PROXY reaches it
    (allowed host through, denied host refused). sandbox-exec is a stand-in that records the
    profile and runs the command: this proves the wiring, not Seatbelt's enforcement, which is
    scripts/smoke-macos.sh's on a Mac."""
    import stockade
    from stockade.exec.process import Sandboxed

    web = servers["web"]
    recorded = tmp_path / "profile.sb"
    stand_in = tmp_path / "sandbox-exec"
    script = f'[ "$1" = -p ] || exit 64\nprintf %s "$2" > {recorded}\nshift 3\nexec "$@"\n'
    stand_in.write_text("#!/bin/sh\n" + script)
    stand_in.chmod(0o755)
    monkeypatch.setattr(seatbelt, "SANDBOX_EXEC", str(stand_in))
    monkeypatch.setattr(seatbelt, "unavailable", lambda: None)
    monkeypatch.delattr(os, "splice")  # as on macOS: the proxy's tunnels copy instead
    monkeypatch.delattr(os, "pipe2")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 ok.test bad.test\n")
    monkeypatch.setenv("STOCKADE_PROXY_HOSTS", str(hosts))
    ws = tmp_path / "ws"
    ws.mkdir()
    allow = ("ok.test", f"127.0.0.1:{web}", f"127.0.0.1:{servers['echo']}")
    plan = stockade.explain(cwd=str(ws), network="proxy", allow_domains=allow, deny_domains=("bad.test",))
    argv = [sys.executable, "-c", INSIDE_PROXY, str(web), str(servers["echo"])]
    with Sandboxed(plan, argv, stdout=subprocess.PIPE, backend=SeatbeltBackend()) as run:
        port = run._proxy.endpoint.tcp_port
        stdout = run.proc.stdout.read()
        code = run.finish()
    assert code == 0
    got = __import__("json").loads(stdout)
    assert got["proxy"] == f"http://127.0.0.1:{port}" and port not in (None, 3128)
    assert got["ok"] == f"200 hello from ok.test:{web} /x", got
    assert got["bad"].startswith("403 stockade: blocked bad.test"), got
    assert got["tunnel"] == ["200", 300000], got
    net = [line for line in recorded.read_text().splitlines() if line.startswith("(allow network")]
    assert net == [f'(allow network-outbound (remote ip "localhost:{port}"))'], net
