"""Profiles, config files and the Plan: resolution rules, and bad input refused clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import stockade
from stockade import ConfigError
from stockade.plan import Context, materialize
from stockade.policy.load import Overrides, load_profile


def plan_for(
    tmp: Path,
    config: str | None = None,
    profile: str | None = None,
    roots: tuple[str, ...] = (),
    **flags: object,
) -> stockade.Plan:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    extra = None
    if config is not None:
        extra = str(tmp / "extra.toml")
        Path(extra).write_text(config)
    return stockade.explain(
        cwd=str(tmp / "repo"), profile=profile, roots=roots, config=extra, host_env=env, **flags
    )  # type: ignore[arg-type]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "repo" / "src").mkdir(parents=True)
    return tmp_path.resolve()


def by_path(plan: stockade.Plan) -> dict[str, str]:
    return {r.path: r.access for r in plan.rules}


def test_workspace_defaults(tmp: Path) -> None:
    plan = plan_for(tmp)
    repo = str(tmp / "repo")
    assert plan.profile == "workspace"
    assert plan.roots == (repo,)
    assert plan.access("/") == "read"
    assert plan.access(repo) == "write"
    assert plan.access(repo + "/src/x.py") == "write"
    assert plan.access("/etc/passwd") == "read"
    assert plan.access(repo + "/.stockade") == "read"
    assert plan.network == "off"


def test_no_roots_means_cwd_never_no_roots(tmp: Path) -> None:
    plan = plan_for(tmp, roots=())
    assert plan.roots == (str(tmp / "repo"),)
    assert plan.access(str(tmp / "repo")) == "write"


def test_most_specific_wins_and_deny_beats_write_at_equal_specificity(tmp: Path) -> None:
    (tmp / "repo" / "a" / "b").mkdir(parents=True)
    config = f"""
[profiles.p]
extends = "workspace"
[profiles.p.filesystem]
"{tmp}/repo/a" = "deny"
"{tmp}/repo/a/b" = "write"
[profiles.p.filesystem.":workspace_roots"]
"src" = "read"
"""
    plan = plan_for(tmp, config, profile="p", deny=[str(tmp / "repo" / "src")])
    repo = str(tmp / "repo")
    assert plan.access(repo + "/a") == "deny"
    assert plan.access(repo + "/a/b/c") == "write"
    assert plan.access(repo + "/src") == "deny"  # --deny and the table's read, same path


def test_symlink_alias_is_resolved_to_its_target(tmp: Path) -> None:
    (tmp / "secret").write_text("s")
    os.symlink(tmp / "secret", tmp / "repo" / "alias")
    plan = plan_for(tmp, deny=[str(tmp / "repo" / "alias")])
    rule = next(r for r in plan.rules if r.access == "deny" and r.reason.startswith("--deny"))
    assert rule.path == str(tmp / "secret")
    assert rule.lexical == str(tmp / "repo" / "alias")


def test_git_protect_rules(tmp: Path) -> None:
    repo = tmp / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    plan = plan_for(tmp)
    git = str(repo / ".git")
    assert plan.access(git) == "write"
    assert next(r for r in plan.rules if r.path == git).pinned
    for name in ("config", "hooks", "info", "config.worktree", "commondir"):
        assert plan.access(f"{git}/{name}") == "read", name
    assert plan.access(f"{git}/objects/ab") == "write"
    kinds = {p.path: p.kind for p in plan.placeholders}
    assert kinds[f"{git}/commondir"] == "commondir"
    assert kinds[str(repo / ".agents")] == "dir"


@pytest.mark.parametrize(
    ("mode", "git_access", "config_access"),
    [("read-only", "read", "read"), ("write", "write", "write")],
)
def test_git_modes(tmp: Path, mode: str, git_access: str, config_access: str) -> None:
    subprocess.run(["git", "init", "-q", str(tmp / "repo")], check=True)
    plan = plan_for(tmp, f'[profiles.p]\nextends = "workspace"\ngit = "{mode}"\n', profile="p")
    assert plan.access(str(tmp / "repo/.git")) == git_access
    assert plan.access(str(tmp / "repo/.git/config")) == config_access


def test_user_rule_cannot_reopen_protected_metadata(tmp: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp / "repo")], check=True)
    plan = plan_for(tmp, writable=[str(tmp / "repo/.git/hooks")])
    assert plan.access(str(tmp / "repo/.git/hooks")) == "read"
    assert (
        any("stays read-only" in n for n in plan.notes)
        or plan.access(str(tmp / "repo/.git/hooks/x")) == "read"
    )


def test_two_roots_each_protected(tmp: Path) -> None:
    (tmp / "other").mkdir()
    plan = plan_for(tmp, roots=(str(tmp / "repo"), str(tmp / "other")))
    for root in ("repo", "other"):
        assert plan.access(str(tmp / root)) == "write"
        assert plan.access(str(tmp / root / ".stockade")) == "read"


def test_read_only_profile_gets_private_tmp(tmp: Path) -> None:
    plan = plan_for(tmp, profile="read-only")
    assert plan.access(str(tmp / "repo")) == "read"
    scratch = [r for r in plan.rules if r.kind == "scratch"]
    assert [r.path for r in scratch] == ["/tmp"]
    assert plan.env["TMPDIR"] == "/tmp"


def test_layers_later_wins(tmp: Path) -> None:
    home = tmp / "home"
    (home / ".config" / "stockade").mkdir(parents=True)
    (home / ".config" / "stockade" / "config.toml").write_text('profile = "read-only"\n')
    assert plan_for(tmp).profile == "read-only"
    (tmp / "repo" / ".stockade").mkdir()
    (tmp / "repo" / ".stockade" / "config.toml").write_text('profile = "workspace"\n')
    assert plan_for(tmp).profile == "workspace"
    assert plan_for(tmp, 'profile = "read-only"\n').profile == "read-only"
    assert plan_for(tmp, 'profile = "read-only"\n', profile="workspace").profile == "workspace"


def test_secrets_withheld_from_env(tmp: Path) -> None:
    ctx = Context.current(
        str(tmp / "repo"),
        (),
        {
            "HOME": str(tmp),
            "PATH": "/bin",
            "OPENAI_API_KEY": "sk-1",
            "GITHUB_TOKEN": "t",
            "AWS_PROFILE": "x",
            "DATABASE_URL": "postgres://u:pw@h/db",
            "EDITOR": "vi",
            "GIT_AUTHOR_NAME": "A",
        },
    )
    prof = load_profile(
        None,
        roots=[ctx.cwd],
        home=ctx.home,
        cwd=ctx.cwd,
        overrides=Overrides(env=("GITHUB_TOKEN", "FOO=bar")),
    )
    plan = materialize(prof, ctx)
    assert set(plan.withheld) == {"OPENAI_API_KEY", "AWS_PROFILE", "DATABASE_URL"}
    assert plan.env["GITHUB_TOKEN"] == "t"
    assert plan.env["FOO"] == "bar"
    assert plan.env["EDITOR"] == "vi"
    assert plan.env["GIT_AUTHOR_NAME"] == "A"


BAD_CONFIGS = [
    ('[profiles.p]\nextnds = "workspace"\n', "profiles.p.extnds", "did you mean 'extends'"),
    (
        '[profiles.p.filesystem]\n":workspace_root" = "write"\n',
        "':workspace_root'",
        "did you mean ':workspace_roots'",
    ),
    ('[profiles.p.filesystem]\n"/x" = "writable"\n', "'/x'", "valid: read, write, deny, none"),
    ('[profiles.p.network]\nmode = "proxy"\nallow = ["a b"]\n', "profiles.p.network.allow", "spaces"),
    ('[profiles.p.network]\nmode = "on"\ndeny = ["x.com"]\n', "profiles.p.network.deny", "only to mode"),
    (
        '[profiles.p.network]\nmode = "proxy"\nallow_local_binding = 1\n',
        "allow_local_binding",
        "true or false",
    ),
    ('[profiles.p.network]\nmode = "of"\n', "profiles.p.network.mode", "did you mean 'off'"),
    ('[profiles.p]\ngit = "protected"\n', "profiles.p.git", "did you mean 'protect'"),
    ('[profiles.p]\nextends = "workspce"\n', "profiles.p.extends", "did you mean 'workspace'"),
    ('[profiles.p]\nextends = "q"\n[profiles.q]\nextends = "p"\n', "extends", "cycle"),
    ('[profiles.p.filesystem]\n"/x/*" = "write"\n', "'/x/*'", "never grant write"),
    ('[profiles.p.filesystem]\n":ssh_keys" = "write"\n', "':ssh_keys'", '"deny" or "read"'),
    ('[profiles.p.filesystem]\n":hom" = "read"\n', "':hom'", "did you mean ':home'"),
    ('[profiles.p.filesystem]\n"**/.env" = "deny"\n', "'**/.env'", "glob_scan_max_depth = N"),
    ('[profiles.p.filesystem]\n"/*/**/.env" = "deny"\n', "'/*/**/.env'", "whole filesystem"),
    ('[profiles.p.filesystem]\n"../up" = "read"\n', "'../up'", "stay inside the root"),
    ('profle = "p"\n', "profle", "did you mean 'profile'"),
    ("[profiles.p\n", "extra.toml", "invalid TOML"),
    ("[profiles.p]\nglob_scan_max_depth = 0\n", "glob_scan_max_depth", "1 to 64"),
    ('[profiles.p]\nbackend = "landlok"\n', "profiles.p.backend", "did you mean 'landlock'"),
]


@pytest.mark.parametrize(("text", "key", "hint"), BAD_CONFIGS)
def test_bad_config_is_a_clear_error(tmp: Path, text: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan_for(tmp, text, profile="p")
    message = str(err.value)
    assert "extra.toml" in message or "--profile" in message
    assert key in message
    assert hint in message


def test_missing_writable_is_an_error_unless_skipped(tmp: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        plan_for(tmp, writable=[str(tmp / "nope")])
    plan = plan_for(
        tmp,
        '[profiles.p]\nextends = "workspace"\nskip_missing = true\n'
        '[profiles.p.filesystem]\n"/nope/x" = "write"\n',
        profile="p",
    )
    assert any("does not exist, skipped" in n for n in plan.notes)


def test_root_anchored_double_star_is_refused(tmp: Path) -> None:
    with pytest.raises(ConfigError, match="whole filesystem"):
        plan_for(tmp, deny=["/**/id_rsa"])


def test_deny_glob_expands_to_matches(tmp: Path) -> None:
    (tmp / "repo" / "a").mkdir()
    (tmp / "repo" / "a" / "x.secret").write_text("X=1")
    (tmp / "repo" / "y.secret").write_text("X=1")
    plan = plan_for(tmp, deny=[str(tmp / "repo") + "/**/*.secret"])
    denied = {r.path for r in plan.rules if r.access == "deny" and r.reason.startswith("--deny")}
    assert denied == {str(tmp / "repo/a/x.secret"), str(tmp / "repo/y.secret")}


CLI_BAD = [
    (["run", "--network", "maybe", "--", "true"], "invalid choice"),
    (["run", "--profile", "nope", "--", "true"], "unknown profile 'nope'"),
    (["run", "--writable", "/does/not/exist", "--", "true"], "does not exist"),
    (["run", "--root", "/does/not/exist", "--", "true"], "workspace root"),
    (["run", "--timeout", "-1", "--", "true"], "--timeout"),
    (["run"], "no command given"),
    (["run", "--config", "/does/not/exist.toml", "--", "true"], "config file does not exist"),
    (["run", "--env", "1BAD", "--", "true"], "--env"),
]


@pytest.mark.parametrize(("argv", "hint"), CLI_BAD)
def test_bad_flags_exit_2_and_run_nothing(tmp: Path, argv: list[str], hint: str) -> None:
    marker = tmp / "ran"
    argv = [a if a != "true" else "touch" for a in argv]
    if argv[-1] == "touch":
        argv.append(str(marker))
    done = subprocess.run(
        [sys.executable, "-m", "stockade", *argv],
        cwd=tmp / "repo",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done
    assert hint in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_project_config_cannot_turn_the_sandbox_off(tmp: Path) -> None:
    (tmp / "repo" / ".stockade").mkdir()
    (tmp / "repo" / ".stockade" / "config.toml").write_text('profile = "full-access"\n')
    with pytest.raises(ConfigError, match="project config cannot select 'full-access'") as err:
        plan_for(tmp)
    assert ".stockade/config.toml" in str(err.value)
    assert plan_for(tmp, profile="full-access").unconfined  # the user may, explicitly


def test_deleted_cwd_is_a_clear_error(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    script = f'cd "{gone}" && rmdir "{gone}" && exec "{sys.executable}" -m stockade run -- true'
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "current directory no longer exists" in done.stderr and "Traceback" not in done.stderr
