"""Secrets stay out: deny globs, SSH-config keys, `:home`, placeholders for missing denied paths.

The Plan-level tests say what is decided; the enforcement tests run real sandboxes as root and
as an unprivileged user and try to read each secret through its own path and through aliases.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Who, backend_who, failed

import stockade
from stockade import ConfigError
from stockade.cli import render_plan


@pytest.fixture
def who(who: Who, backend: str) -> Who:
    """Every test here runs on both Linux backends (and as root and as a user)."""
    return backend_who(who, backend)


def write(path: Path, text: str = "x", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def fake_home(home: Path) -> Path:
    """A home with a key in ~/.ssh, a key named by an included SSH config, and other credentials."""
    write(home / ".ssh/id_ed25519", "SECRET-SSH-KEY", 0o600)
    write(home / ".ssh/known_hosts", "github.com ssh-ed25519 AAAA")
    write(home / ".ssh/config", "Include conf.d/*\nHost *\n  IdentitiesOnly yes\n")
    write(
        home / ".ssh/conf.d/work",
        'Host work\n  IdentityFile "~/.keys/deploy key"\n  ControlPath /dev/shm/stockade-test-cm-%C\n',
    )
    write(home / ".keys/deploy key", "SECRET-INCLUDED-KEY", 0o600)
    write(home / ".keys/README", "public notes")
    write(home / ".config/gh/hosts.yml", "SECRET-GH-TOKEN")
    write(home / ".config/git/config", "[user]\n  name = me\n")
    write(home / "notes.txt", "my notes")
    return home


def plan(cwd: Path, home: Path, **kw: object) -> stockade.Plan:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    return stockade.explain(cwd=str(cwd), host_env=env, **kw)  # type: ignore[arg-type]


@pytest.fixture
def tmp() -> Iterator[Path]:
    """Under /var/tmp: the workspace profile makes /tmp writable, which would blur what is read."""
    path = Path(tempfile.mkdtemp(prefix="stockade-secrets-", dir="/var/tmp")).resolve()
    (path / "repo").mkdir()
    fake_home(path / "home")
    yield path
    shutil.rmtree(path)


# --- the Plan ------------------------------------------------------------------------------


def test_workspace_denies_env_files_and_ssh_config_keys(tmp: Path) -> None:
    repo, home = tmp / "repo", tmp / "home"
    for rel in (".env", "a/b/.env.local", "a/ok.txt", ".env.example"):
        write(repo / rel)
    p = plan(repo, home, read=[".env.example"])  # an exact entry beats the glob at that path
    assert p.access(str(repo / ".env")) == "deny"
    assert p.access(str(repo / "a/b/.env.local")) == "deny"
    assert p.access(str(repo / "a/ok.txt")) == "write"
    assert p.access(str(repo / ".env.example")) == "read"
    assert p.access(str(home / ".ssh/id_ed25519")) == "deny"
    assert p.access(str(home / ".ssh/known_hosts")) == "read"
    assert p.access(str(home / ".ssh/config")) == "read"
    assert p.access(str(home / ".keys/deploy key")) == "deny"
    assert p.access(str(home / ".keys/README")) == "read"
    text = render_plan(p, "test")
    assert "'**/.env.*'" in text and "IdentityFile at" in text and "conf.d/work:2" in text


def test_a_key_the_ssh_config_names_is_never_reopened_by_known_hosts(tmp: Path) -> None:
    home = tmp / "home"
    write(home / ".ssh/config", "IdentityFile ~/.ssh/known_hosts_deploy\n")
    write(home / ".ssh/known_hosts_deploy", "SECRET")
    assert plan(tmp / "repo", home).access(str(home / ".ssh/known_hosts_deploy")) == "deny"


def test_names_that_look_like_globs_stay_literal_in_roots_home_and_ssh_config(tmp: Path) -> None:
    """A root `r[1]`, a home `h[*]` and a key `id[1]` are those paths; a `%h` token is the only
    wildcard an SSH config makes, and the rest of its path stays literal."""
    home = fake_home(tmp / "h[x]")
    repo = tmp / "r[1]"
    for d in (repo, tmp / "r1", tmp / "hx"):
        d.mkdir()
        write(d / ".env")
    write(home / ".ssh/config", "Include conf.d/*\nIdentityFile ~/.keys/id[1]\nIdentityFile ~/.ssh/%h-key\n")
    for key in (".keys/id[1]", ".keys/id1", ".ssh/work-key"):
        write(home / key, "SECRET")
    write(tmp / "hx/.ssh/work-key", "elsewhere")
    p = plan(repo, home)
    assert p.access(str(repo)) == "write" and p.access(str(repo / ".env")) == "deny"
    assert p.access(str(tmp / "r1")) == "read" and p.access(str(tmp / "r1/.env")) == "read"  # like `/`
    assert p.access(str(home / ".keys/id[1]")) == "deny" and p.access(str(home / ".keys/id1")) == "read"
    for key in (".ssh/work-key", ".ssh/id_ed25519", ".keys/deploy key"):  # the last from an Include
        assert p.access(str(home / key)) == "deny", key
    assert p.access(str(tmp / "hx/.ssh/work-key")) == "read"
    assert not any(r.path.startswith(str(tmp / "hx")) for r in p.rules)
    # A profile key is a glob as written: `[[]` is how a literal `[` is named there.
    p = plan(repo, home, deny=[str(tmp / "r[[]1]/notes")], read=[str(tmp / "r1")])
    assert p.access(str(repo / "notes")) == "deny" and p.access(str(tmp / "r1/notes")) == "read"


def test_home_grant_is_its_children_minus_the_sensitive_ones(tmp: Path) -> None:
    home = tmp / "home"
    (home / "link-to-ssh").symlink_to(home / ".ssh")
    config = tmp / "p.toml"
    config.write_text(
        '[profiles.p]\n[profiles.p.filesystem]\n":minimal" = "read"\n":workspace_roots" = "write"\n'
        '":home" = "write"\n'
    )
    p = plan(tmp / "repo", home, config=str(config), profile="p")
    assert p.access(str(home)) is None  # never the home directory itself
    assert p.access(str(home / "notes.txt")) == "write"
    assert p.access(str(home / ".config/git/config")) == "write"
    for hidden in (".ssh/id_ed25519", ".config/gh/hosts.yml", ".keys/deploy key"):
        assert p.access(str(home / hidden)) is None, hidden
    assert p.access(str(home / ".keys/README")) == "write"  # the key's siblings are granted
    assert str(home / "link-to-ssh") not in {r.lexical for r in p.rules}
    assert any("not granted (sensitive): " in n and ".config/gh" in n and "link-to-ssh" in n for n in p.notes)
    # `~` written out, and --writable ~, mean the same.
    for kw in ({"writable": ["~"]}, {"writable": [str(home)]}):
        q = plan(tmp / "repo", home, profile="read-only", **kw)
        assert q.access(str(home / "notes.txt")) == "write"
        assert q.access(str(home / ".ssh/id_ed25519")) == "read"  # read-only reads all; no grant
        assert not any(r.path == str(home) for r in q.rules)


def test_the_plan_carries_what_home_withheld_and_what_the_ssh_config_names(tmp: Path) -> None:
    """Plan.sensitive is data for backends that must keep off these paths (ACLs on Windows)."""
    home = tmp / "home"
    (home / "link-to-ssh").symlink_to(home / ".ssh")
    write(tmp / "vault/work-key", "SECRET")
    (home / ".ssh/work-key").symlink_to(tmp / "vault/work-key")  # a key a pattern matches, via a link
    write(home / ".ssh/config", "Include conf.d/*\nIdentityFile ~/.ssh/%h-key\n")
    config = tmp / "p.toml"
    config.write_text(
        '[profiles.p]\n[profiles.p.filesystem]\n":minimal" = "read"\n":workspace_roots" = "write"\n'
        '":home" = "write"\n'
    )
    p = plan(tmp / "repo", home, config=str(config), profile="p")
    sensitive = set(p.sensitive)
    for rel in (".ssh", ".config/gh", "link-to-ssh", ".keys/deploy key"):  # withheld children of home
        assert str(home / rel) in sensitive, rel
    assert "/dev/shm" in sensitive  # ControlPath /dev/shm/stockade-test-cm-%C: the pattern's fixed prefix
    assert not any(s == g or s.startswith(g + "/") for s in sensitive for g in _home_grants(p))
    w = plan(tmp / "repo", home)  # the workspace profile: `:ssh_keys`, no `:home`
    assert {str(home / ".keys/deploy key"), str(home / ".ssh"), "/dev/shm"} <= set(w.sensitive)
    assert str(tmp / "vault/work-key") in w.sensitive  # the canonical target of the matched key
    assert w.access(str(tmp / "vault/work-key")) == "deny"
    assert "sensitive" in w.to_json() and list(w.sensitive) == sorted(w.sensitive)


def _home_grants(p: stockade.Plan) -> list[str]:
    return [r.lexical for r in p.rules if r.reason.endswith("(a child of home)")]


def test_a_plan_that_names_neither_home_nor_ssh_keys_never_reads_the_ssh_config(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stockade.plan

    def refuse(*args: object, **kw: object) -> object:
        raise AssertionError("the SSH configuration was parsed")

    monkeypatch.setattr(stockade.plan, "ssh_config_paths", refuse)
    p = plan(tmp / "repo", tmp / "home", profile="read-only")
    assert p.sensitive == ()
    with pytest.raises(AssertionError, match="SSH configuration was parsed"):
        plan(tmp / "repo", tmp / "home")  # the workspace profile does: `:ssh_keys`


def test_unlistable_home_grants_nothing_and_says_so(tmp: Path) -> None:
    p = plan(tmp / "repo", tmp / "no-such-home", profile="read-only", read=["~"])
    assert not any(r.path.startswith(str(tmp / "no-such-home")) for r in p.rules)
    assert any("cannot list the home directory" in n for n in p.notes)


def test_stockade_config_stays_read_only_under_a_writable_home(tmp: Path) -> None:
    home = tmp / "home"
    extra = write(tmp / "repo/policy.toml", "")
    p = plan(tmp / "repo", home, writable=["~/.config"], config=str(extra))
    assert p.access(str(home / ".config/git")) == "write"
    assert p.access(str(home / ".config/stockade")) == "read"
    assert p.access(str(extra)) == "read"
    assert any(ph.path == str(home / ".config/stockade") for ph in p.placeholders)


def test_missing_exact_deny_gets_a_placeholder_and_a_glob_does_not(tmp: Path) -> None:
    p = plan(tmp / "repo", tmp / "home", deny=["secret.key", "**/*.pem"])
    assert any(ph.path == str(tmp / "repo/secret.key") for ph in p.placeholders)
    assert any("matches nothing now" in n for n in p.notes)  # a user's glob never fails silently


def test_too_broad_a_walk_is_a_clear_error(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade import globs

    for i in range(12):
        (tmp / "repo" / f"d{i}").mkdir()
    monkeypatch.setattr(globs, "MAX_WALKED_DIRS", 5)
    globs._cache.clear()
    with pytest.raises(ConfigError, match="glob_scan_max_depth") as err:
        plan(tmp / "repo", tmp / "home")
    assert "**/.env" in str(err.value) and "<built-in profiles>" in str(err.value)


def test_unbounded_and_root_globs_exit_2_and_run_nothing(tmp: Path) -> None:
    marker = tmp / "ran"
    config = write(tmp / "p.toml", '[profiles.p.filesystem]\n":root" = "read"\n"**/.env" = "deny"\n')
    for flags in (["--deny", "/**/id_rsa"], ["--config", str(config), "--profile", "p"]):
        done = subprocess.run(
            ["python3", "-m", "stockade", "run", *flags, "--", "touch", str(marker)],
            cwd=tmp / "repo",
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "whole filesystem" in done.stderr or "glob_scan_max_depth = N" in done.stderr
        assert not marker.exists()


# --- enforcement ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["home-", "home[1]-"])  # a home named like a glob is no glob
def test_secrets_are_unreadable_through_their_paths_and_aliases(who: Who, workspace: Path, name: str) -> None:
    home = fake_home(who.mkdtemp(name))
    for rel in (".env", "a/b/.env.local"):
        write(workspace / rel, "SECRET-DOTENV")
    write(workspace / "a/ok.txt", "fine")
    secrets = [
        home / ".ssh/id_ed25519",
        home / ".keys/deploy key",
        workspace / ".env",
        workspace / "a/b/.env.local",
    ]
    for i, target in enumerate(secrets):
        (workspace / f"alias{i}").symlink_to(target)
    master = write(Path(f"/dev/shm/stockade-test-cm-{who.name}"), "SECRET-MASTER-SOCKET")
    who.own(home)
    who.own(workspace)
    attempts = [*(f'cat "{s}"' for s in secrets), *(f"cat alias{i}" for i in range(len(secrets)))]
    attempts.append(f"cat {master}")  # a denied glob inside the sandbox's fresh /dev: not there
    attempts += [f'ln "{home}/.keys/deploy key" hard', "ls ~/.ssh", "cat ~/.config/gh/hosts.yml"]
    script = "".join(f"{a}; echo rc=$?; " for a in attempts)
    script += "cat a/ok.txt; echo; cat ~/.ssh/known_hosts ~/.ssh/config >/dev/null && echo ssh-ok"
    try:
        done = who.sandbox(script, workspace, env={"HOME": str(home)})
    finally:
        master.unlink()
    assert "SECRET" not in done.stdout, done.stdout
    assert failed(done, len(attempts), then=["fine", "ssh-ok"]), done.stdout + done.stderr
    assert who.run(["cat", str(home / ".keys/deploy key")], workspace).stdout == "SECRET-INCLUDED-KEY"


def test_home_grant_enforced(who: Who, workspace: Path) -> None:
    home = fake_home(who.mkdtemp("home-"))
    who.own(home)
    config = write(
        who.mkdtemp("cfg-") / "p.toml",
        '[profiles.p]\nglob_scan_max_depth = 4\n[profiles.p.filesystem]\n":minimal" = "read"\n'
        '":workspace_roots" = "write"\n":home" = "write"\n',
    )
    attempts = ["cat ~/.ssh/id_ed25519", 'cat ~/".keys/deploy key"', "cat ~/.config/gh/hosts.yml"]
    attempts.append("touch ~/new")
    script = "".join(f"{a}; echo rc=$?; " for a in attempts)
    script += "echo more >> ~/notes.txt && cat ~/.config/git/config >/dev/null && echo home-ok"
    done = who.sandbox(script, workspace, "--config", str(config), "--profile", "p", env={"HOME": str(home)})
    assert "SECRET" not in done.stdout
    assert failed(done, len(attempts), then=["home-ok"]), done.stdout + done.stderr
    assert (home / "notes.txt").read_text() == "my notesmore\n"
    assert not (home / "new").exists()


def test_a_missing_denied_path_cannot_be_created_and_leaves_nothing_behind(who: Who, repo: Path) -> None:
    attempts = ["echo leaked > secret.key", "cat secret.key", "mkdir secret.key/x"]
    script = "".join(f"{a}; echo rc=$?; " for a in attempts)
    done = who.sandbox(script, repo, "--deny", "secret.key")
    assert failed(done, 3), done.stdout + done.stderr
    assert not (repo / "secret.key").exists()
    assert who.run(["git", "status", "--porcelain"], repo).stdout == ""
    # Killed with SIGKILL mid-run: the placeholder stays until the next run sweeps it.
    argv = [who.python, "-m", "stockade", "run", "--deny", "secret.key", "--", "sleep", "60"]
    killed = subprocess.Popen(argv, cwd=repo, env=who.env(), **who._popen_kw())  # type: ignore[call-overload]
    for _ in range(200):
        if (repo / "secret.key").exists():
            break
        time.sleep(0.05)
    assert (repo / "secret.key").is_dir()
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    time.sleep(0.5)  # its sandbox dies with it (--die-with-parent)
    assert who.sandbox("true", repo).returncode == 0
    assert not (repo / "secret.key").exists()
    assert who.run(["git", "status", "--porcelain"], repo).stdout == ""
    assert sorted(os.listdir(repo)) == [".git", "README.md"]


def test_a_writable_config_dir_cannot_take_a_stockade_policy(who: Who, workspace: Path) -> None:
    home = fake_home(who.mkdtemp("home-"))
    who.own(home)
    policy = "echo 'profile = \"full-access\"' > ~/.config/stockade/config.toml"
    attempts = ["mkdir -p ~/.config/stockade/x", policy]
    script = "".join(f"{a}; echo rc=$?; " for a in attempts) + "touch ~/.config/git/ok && echo config-ok"
    done = who.sandbox(script, workspace, "--writable", "~/.config", env={"HOME": str(home)})
    assert failed(done, len(attempts), then=["config-ok"]), done.stdout + done.stderr
    assert not (home / ".config/stockade").exists()  # the placeholder is gone again
    assert (home / ".config/git/ok").exists()


def test_an_ssh_key_that_cannot_be_denied_exactly_stops_the_run(tmp: Path) -> None:
    home = tmp / "home"
    write(home / ".ssh/config", "Host *\n  IdentityFile /%h\n")
    with pytest.raises(ConfigError, match="whole filesystem") as err:
        plan(tmp / "repo", home)
    assert "config:2" in str(err.value) and ":ssh_keys" in str(err.value)
