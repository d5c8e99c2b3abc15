"""git inside the sandbox: agents commit, but cannot plant what runs code for the user later."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Who, backend_who, failed

COMMIT = "echo change >> README.md && git add -A && git commit -qm agent && git log --oneline | wc -l"


@pytest.fixture
def who(who: Who, backend: str) -> Who:
    """Every test here runs on both Linux backends (and as root and as a user)."""
    return backend_who(who, backend)


def test_commit_branch_stash_in_the_repo(who: Who, repo: Path) -> None:
    script = (
        f"{COMMIT} && git checkout -qb feature && echo wip > wip.txt && git add wip.txt "
        "&& git stash -q && git stash pop -q && git status --porcelain"
    )
    done = who.sandbox(script, repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "A", "wip.txt"]
    log = who.run(["git", "log", "--oneline"], repo).stdout
    assert "agent" in log


def test_commit_in_a_linked_worktree(who: Who, repo: Path) -> None:
    wt = who.mkdtemp("wt-")
    wt.rmdir()
    done = who.run(["git", "worktree", "add", "-q", "-b", "wt", str(wt)], repo)
    assert done.returncode == 0, done.stderr
    done = who.sandbox(COMMIT, wt)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    # The main repository's config and hooks stay protected from the worktree too.
    script = (
        f"echo evil >> {repo}/.git/config; echo rc=$?; echo evil > {repo}/.git/hooks/post-commit; echo rc=$?"
    )
    done = who.sandbox(script, wt)
    assert failed(done, 2), done.stdout + done.stderr
    assert "evil" not in (repo / ".git" / "config").read_text()


def test_planted_gitdir_pointer_grants_nothing(who: Who, workspace: Path) -> None:
    """A `.git` file naming some other directory must not make that directory writable."""
    victim = who.mkdtemp("victim-")
    (workspace / ".git").write_text(f"gitdir: {victim}\n")
    who.own(workspace)
    done = who.sandbox(f"echo x > {victim}/f; echo rc=$?", workspace)
    assert failed(done, 1), done.stdout + done.stderr
    assert not (victim / "f").exists()


def test_git_cannot_be_moved_away_or_replaced(who: Who, repo: Path) -> None:
    """Moving or deleting .git, then planting a new one whose config runs code, must fail."""
    config = (repo / ".git" / "config").read_text()
    script = (
        "mv .git .git-old; echo rc=$?;"
        "rm -rf .git; echo rc=$?;"  # deletes what is writable inside, never the guarded parts
        "printf '[core]\\n\\tfsmonitor = touch /tmp/pwned\\n' > .git/config; echo rc=$?;"
        "mkdir .git/hooks/x; echo rc=$?"
    )
    done = who.sandbox(script, repo)
    assert failed(done, 4), done.stdout + done.stderr
    assert (repo / ".git" / "config").read_text() == config
    assert (repo / ".git" / "hooks").is_dir()
    assert not (repo / ".git-old").exists()


def test_repo_owned_by_another_user_gets_safe_directory(identities: dict[str, Who]) -> None:
    """Root running in a user's repo: git would refuse ("dubious ownership") without it."""
    if "root" not in identities:
        pytest.skip("needs root acting on another user's repository")
    root, user = identities["root"], identities["user"]
    repo = user.mkdtemp("owned-")
    for argv in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "x"]):
        assert user.run(argv, repo).returncode == 0
    outside = root.run(["git", "status", "--porcelain"], repo)
    assert "dubious ownership" in outside.stderr  # the failure the sandbox must avoid
    done = root.sandbox("git status --porcelain && git log --oneline | wc -l", repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert "safe.directory" not in (repo / ".git" / "config").read_text()
