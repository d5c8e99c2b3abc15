"""The Seatbelt profile a Plan becomes, checked on Linux: a golden profile, a structural parse of
every profile (balanced, known operations and filters only, every string a Plan path), the
Plan's most-specific-wins rule under Seatbelt's last-match-wins evaluation, and paths that try
to break out of their string.

Set STOCKADE_REGEN_GOLDEN=1 to rewrite the golden files after a deliberate change.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from pathlib import Path

import pytest

from stockade.backends.macos import DEVICES, MACH_SERVICES, MINIMAL, _interpreter, glob_regex, quote, render
from stockade.errors import UnsupportedPolicy
from stockade.plan import GlobEntry, PathRule, Plan

GOLDEN = Path(__file__).with_name("golden") / "seatbelt"
OPERATIONS = {
    "version", "deny", "allow", "default", "process-fork", "signal", "sysctl-read", "mach-lookup",
    "file-read-metadata", "file-read*", "file-write*", "file-write-data", "file-write-unlink",
    "process-exec", "network*", "network-outbound",
}  # fmt: skip
FILTERS = {"subpath", "literal", "regex", "global-name", "target", "remote"}
BUILTIN = "<built-in profiles>: profiles.workspace.filesystem."


def rule(path: str, access: str, reason: str = "test", *, pinned: bool = False) -> PathRule:
    return PathRule(path, access, "dir", reason, path, pinned)  # type: ignore[arg-type]


def plan(
    rules: list[PathRule],
    network: str = "off",
    roots: tuple[str, ...] = ("/Users/a/repo",),
    globs: tuple[GlobEntry, ...] = (),
) -> Plan:
    p = Plan("workspace", False, roots[0], roots, tuple(rules), (), network, "/tmp", {}, {})
    return dataclasses.replace(p, globs=globs)


def workspace_plan() -> Plan:
    repo = "/Users/a/repo"
    return plan(
        [
            rule("/", "read", BUILTIN + "':root'"),
            rule("/Users/a/.ssh", "deny", BUILTIN + "'~/.ssh'"),
            rule("/Users/a/.ssh/known_hosts", "read", BUILTIN + "'~/.ssh/known_hosts*'"),
            rule("/private/tmp", "write", BUILTIN + "':slash_tmp'"),
            rule(repo, "write", BUILTIN + "':workspace_roots'"),
            rule(f"{repo}/.git", "write", "git = protect", pinned=True),
            rule(f"{repo}/.git/config", "read", "git = protect"),
            rule(f"{repo}/.git/hooks", "read", "git = protect"),
            dataclasses.replace(rule(f"{repo}/.env", "deny", BUILTIN + "'**/.env'"), glob=True),
            rule(f"{repo}/.env.example", "read", "test: '.env.example'"),
            rule(f"{repo}/.stockade", "read", "protected .stockade"),
            rule(f"{repo}/sub", "write", "test: a deeper writable entry"),
        ],
        globs=(
            GlobEntry("/Users/a/.ssh/known_hosts*", "read", BUILTIN + "'~/.ssh/known_hosts*'", 8),
            GlobEntry(f"{repo}/**/.env", "deny", BUILTIN + "'**/.env'", 8),
            GlobEntry(f"{repo}/**/.env.*", "deny", BUILTIN + "'**/.env.*'", 8),
        ),
    )


def multi_root_plan() -> Plan:
    roots = ("/Users/a/api", "/Users/a/web")
    rules = [rule("/", "read"), *(rule(r, "write") for r in roots)]
    rules += [rule(f"{r}/.git/config", "read", "git = protect") for r in roots]
    return plan(rules, roots=roots)


PLANS = {
    "workspace": workspace_plan,
    "multi-root": multi_root_plan,
    "nested": lambda: plan(
        [rule("/", "read"), rule("/r", "write"), rule("/r/a", "deny"), rule("/r/a/b", "write")]
    ),
    "read-only": lambda: plan([rule("/", "read")]),
    "proxy": lambda: plan([rule("/", "read"), rule("/Users/a/repo", "write")], network="proxy"),
}


def profile_of(name: str) -> str:
    p = PLANS[name]()
    return render(p, proxy_port=3128 if p.network == "proxy" else None)


# ---- a small SBPL reader ----

TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|;[^\n]*|([^\s()";]+))', re.S)


def parse(text: str) -> list[object]:
    """S-expressions; strings come back as ("str", value). Raises on anything unbalanced."""
    stack: list[list[object]] = [[]]
    pos = 0
    while text[pos:].strip():
        m = TOKEN.match(text, pos)
        assert m and m.end() > pos, f"cannot read at {pos}: {text[pos : pos + 40]!r}"
        pos = m.end()
        if m.group(1):
            stack.append([])
        elif m.group(2):
            assert len(stack) > 1, "unbalanced ')'"
            done = stack.pop()
            stack[-1].append(done)
        elif m.group(3) is not None:
            stack[-1].append(("str", re.sub(r"\\(.)", r"\1", m.group(3), flags=re.S)))
        elif m.group(4):
            stack[-1].append(m.group(4))
    assert len(stack) == 1, "unbalanced '('"
    return stack[0]


def strings(form: object) -> list[str]:
    if isinstance(form, tuple):
        return [form[1]]  # type: ignore[list-item]
    if isinstance(form, list):
        return [s for item in form for s in strings(item)]
    return []


def check_structure(text: str, p: Plan) -> list[list[object]]:
    forms = parse(text)
    assert all(isinstance(f, list) for f in forms)
    for form in forms:
        head = form[0]  # type: ignore[index]
        assert head in ("version", "allow", "deny"), form
        for item in form[1:]:  # type: ignore[index]
            if isinstance(item, str):
                assert item in OPERATIONS or item.isdigit(), item
            elif isinstance(item, list):
                assert item[0] in FILTERS, item
    known = {r.path for r in p.rules} | set(MINIMAL) | set(DEVICES) | set(MACH_SERVICES) | set(_interpreter())
    known |= {glob_regex(g.pattern, g.depth) for g in p.globs}
    known |= {"/", "localhost:3128"}
    stray = [text for text in strings(forms) if text not in known]
    assert not stray, f"strings that are no path of the Plan: {stray}"
    return forms  # type: ignore[return-value]


def decide(forms: list[list[object]], op: str, path: str) -> str:
    """Seatbelt's evaluation for file operations: the last matching rule wins."""
    verdict = "deny"
    for form in forms:
        if form[0] not in ("allow", "deny"):
            continue
        ops = [x for x in form[1:] if isinstance(x, str)]
        if "default" in ops:
            verdict = str(form[0])
            continue
        if not any(o == op or (o.endswith("*") and op.startswith(o[:-1])) for o in ops):
            continue
        for f in (x for x in form[1:] if isinstance(x, list)):
            target = strings(f)[0] if strings(f) else ""
            hit = (
                (f[0] == "subpath" and (path == target or path.startswith(target.rstrip("/") + "/")))
                or (f[0] == "literal" and path == target)
                or (f[0] == "regex" and re.search(target, path) is not None)
            )
            if hit:
                verdict = str(form[0])
    return verdict


# ---- tests ----


@pytest.mark.parametrize("name", sorted(PLANS))
def test_golden_profiles(name: str) -> None:
    text = profile_of(name)
    for prefix in _interpreter():  # the machine's Python, whatever it is
        text = text.replace(quote(prefix), '"<python prefix>"')
    golden = GOLDEN / f"{name}.sb"
    if os.environ.get("STOCKADE_REGEN_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{name}: rerun with STOCKADE_REGEN_GOLDEN=1 if this is deliberate"


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_profile_is_well_formed(name: str) -> None:
    p = PLANS[name]()
    check_structure(profile_of(name), p)


@pytest.mark.parametrize(
    ("path", "read", "write"),
    [
        ("/Users/a/repo/src/main.py", "allow", "allow"),
        ("/Users/a/repo/.git/HEAD", "allow", "allow"),
        ("/Users/a/repo/.git/config", "allow", "deny"),
        ("/Users/a/repo/.git/hooks/pre-commit", "allow", "deny"),
        ("/Users/a/repo/.git/hooks-not", "allow", "allow"),
        ("/Users/a/repo/.env", "deny", "deny"),
        ("/Users/a/repo/.stockade/config.toml", "allow", "deny"),
        ("/Users/a/.ssh/id_ed25519", "deny", "deny"),
        ("/Users/a/.ssh/known_hosts", "allow", "deny"),
        ("/Users/a/notes.txt", "allow", "deny"),
        ("/etc/passwd", "allow", "deny"),
        ("/private/tmp/x", "allow", "allow"),
        ("/dev/null", "allow", "allow"),
        ("/Users/a/repo/later/made/.env", "deny", "deny"),  # created after launch: the regex holds it
        ("/Users/a/repo/sub/.env", "deny", "deny"),  # under a deeper writable entry
        ("/Users/a/repo/sub/.env.local", "deny", "deny"),
        ("/Users/a/repo/.env.example", "allow", "deny"),  # an exact entry beats the glob
        ("/Users/a/repo/.envrc", "allow", "allow"),
        ("/Users/a/.ssh/known_hosts.old", "allow", "deny"),  # a read glob reopens inside a deny
    ],
)
def test_seatbelt_decides_like_the_plan(path: str, read: str, write: str) -> None:
    forms = check_structure(profile_of("workspace"), workspace_plan())
    assert (decide(forms, "file-read-data", path), decide(forms, "file-write-data", path)) == (read, write)


def test_most_specific_entry_wins_through_nesting() -> None:
    forms = parse(profile_of("nested"))
    assert decide(forms, "file-write-create", "/r/x") == "allow"
    assert decide(forms, "file-read-data", "/r/a/x") == "deny"
    assert decide(forms, "file-write-create", "/r/a/b/c") == "allow"
    assert decide(forms, "file-write-create", "/elsewhere") == "deny"


def test_network_off_proxy_and_pinned_git() -> None:
    workspace = profile_of("workspace")
    assert "network" not in workspace
    assert '(deny file-write-unlink (literal "/Users/a/repo/.git"))' in workspace
    proxy = profile_of("proxy")
    assert '(allow network-outbound (remote ip "localhost:3128"))' in proxy and "network*" not in proxy


@pytest.mark.parametrize(
    "name",
    ['quote"d', "back\\slash", "paren(s)", "semi;colon", "ends-with-backslash\\", "ünïcödé ✓", "$^.*+?[]{}|"],
)
def test_adversarial_paths_stay_inside_their_string(name: str) -> None:
    path = f"/Users/a/repo/{name}"
    p = plan([rule("/", "read"), rule("/Users/a/repo", "write"), rule(path, "deny")])
    forms = check_structure(render(p), p)
    assert path in strings(forms)
    assert decide(forms, "file-read-data", path + "/x") == "deny"
    assert decide(forms, "file-read-data", "/Users/a/repo/other") == "allow"


@pytest.mark.parametrize("name", ["new\nline", "tab\there", "nul\x00", "esc\x1b"])
def test_control_characters_are_refused(name: str) -> None:
    p = plan([rule("/", "read"), rule(f"/Users/a/{name}", "deny")])
    with pytest.raises(UnsupportedPolicy, match="control characters"):
        render(p)


def test_cli_explain_prints_the_profile_and_seatbelt_refuses_to_run_on_linux(tmp_path: Path) -> None:
    import subprocess
    import sys

    explain = subprocess.run(
        [sys.executable, "-m", "stockade", "explain", "--platform", "macos"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert explain.returncode == 0, explain.stderr
    forms = parse(explain.stdout)
    assert ["version", "1"] in forms and ["deny", "default"] in forms
    marker = tmp_path / "ran"
    run = subprocess.run(
        [sys.executable, "-m", "stockade", "run", "--backend", "seatbelt", "--", "touch", str(marker)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "macOS only" in run.stderr and not marker.exists(), run.stderr


def fnmatch_path(pattern: str, path: str, depth: int) -> bool:
    """The Plan's glob semantics, per component (fnmatch), `**` spanning 0..depth directories."""
    pats, parts = pattern.strip("/").split("/"), path.strip("/").split("/")

    def match(i: int, j: int) -> bool:
        if i == len(pats):
            return True  # the match, or something below it
        if pats[i] == "**":
            return any(match(i + 1, j + k) for k in range(depth + 1) if j + k <= len(parts))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pats[i]) and match(i + 1, j + 1)

    return match(0, 0)


@pytest.mark.parametrize(
    "pattern",
    [
        "/r/**/.env",
        "/r/**/.env.*",
        "/r/build/**/*.key",
        "/h/.ssh/known_hosts*",
        "/r/[!a]?.(x)",
        "/r/a+b/*.[ch]",
    ],
)
def test_glob_regexes_match_what_the_plan_matches(pattern: str) -> None:
    paths = [
        "/r/.env", "/r/a/b/.env", "/r/.env/inner", "/r/.envx", "/r/a.env", "/r/.env.local", "/r/x/.env.",
        "/r/build/k.key", "/r/build/a/b/c.key", "/r/build/a.keys", "/h/.ssh/known_hosts",
        "/h/.ssh/known_hosts2", "/r/^x", "/r/yy", "/r/xx",
        "/h/.ssh/id", "/r/b1.(x)", "/r/a1.(x)", "/r/b1.x", "/r/a+b/m.c", "/r/aab/m.c", "/r/a+b/m.o",
        "/r/1/2/3/.env", "/r/1/2/3/4/.env",
    ]  # fmt: skip
    rx = re.compile(glob_regex(pattern, 3))
    for path in paths:
        assert bool(rx.match(path)) == fnmatch_path(pattern, path, 3), (pattern, path, rx.pattern)
