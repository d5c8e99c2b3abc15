"""Protected metadata: what stays read-only inside every writable root, whatever the profile says.

A sandboxed command must never change what runs the next time the *user* runs git (config,
hooks, a planted `commondir`), nor the agent's or stockade's own configuration.
A protected name that does not exist yet gets a placeholder, so it cannot be created inside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

AGENT_DIRS = (".agents", ".codex", ".stockade")
MAX_MODULE_DEPTH = 3


@dataclass(frozen=True)
class Protected:
    """One path to enforce: read-only, or writable but pinned (a mount point cannot be renamed)."""

    path: str
    access: Literal["read", "write"]
    reason: str
    placeholder: Literal["dir", "file", "commondir"] | None = None  # what to create if missing
    grant: bool = False  # write is granted even where the profile only reads (linked worktrees)


def _read_only(path: str, reason: str, placeholder: Literal["dir", "file", "commondir"] | None) -> Protected:
    """Read-only; `placeholder` says what to create if the path is missing when the run starts.

    It is listed whether or not the path exists now: existence is decided at launch, under
    the placeholder lock, so a concurrent run's cleanup cannot remove it in between.
    """
    return Protected(path, "read", reason, placeholder)


def _gitdir_rules(gitdir: str, reason: str, depth: int = 0, grant: bool = False) -> list[Protected]:
    """Everything in a git directory that can make git run code or redirect it later."""
    rules = [
        Protected(gitdir, "write", reason, grant=grant),
        _read_only(os.path.join(gitdir, "config"), reason, "file"),
        _read_only(os.path.join(gitdir, "config.worktree"), reason, "file"),
        _read_only(os.path.join(gitdir, "hooks"), reason, "dir"),
        _read_only(os.path.join(gitdir, "info"), reason, "dir"),
    ]
    commondir = os.path.join(gitdir, "commondir")
    # A missing commondir is created as "." (git then resolves the common dir to this same
    # directory): a planted commondir would otherwise redirect git to a config we do not guard.
    rules.append(_read_only(commondir, reason, "commondir"))
    worktrees = os.path.join(gitdir, "worktrees")
    for name in _children(worktrees):
        wt = os.path.join(worktrees, name)
        rules += [
            _read_only(os.path.join(wt, "config.worktree"), reason, "file"),
            _read_only(os.path.join(wt, "commondir"), reason, None),
            _read_only(os.path.join(wt, "gitdir"), reason, None),
        ]
    if depth < MAX_MODULE_DEPTH:
        modules = os.path.join(gitdir, "modules")
        for name in _children(modules):
            sub = os.path.join(modules, name)
            rules += [r for r in _gitdir_rules(sub, reason, depth + 1) if r.path != sub]
    return rules


def _children(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def linked_gitdir(dotgit_file: str) -> str | None:
    """The gitdir a `.git` pointer file names, only if that gitdir points back to this file.

    The back-link is what `git worktree add` writes; without it a planted pointer file could
    make stockade grant write access to any directory it names.
    """
    try:
        with open(dotgit_file, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()
    except OSError:
        return None
    if not first.startswith("gitdir:"):
        return None
    target = first[len("gitdir:") :].strip()
    target = os.path.realpath(os.path.join(os.path.dirname(dotgit_file), target))
    try:
        with open(os.path.join(target, "gitdir"), encoding="utf-8", errors="replace") as fh:
            back = fh.readline().strip()
    except OSError:
        return None
    if os.path.realpath(back) != os.path.realpath(dotgit_file):
        return None
    return target


def common_dir(gitdir: str) -> str | None:
    try:
        with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as fh:
            rel = fh.readline().strip()
    except OSError:
        return None
    return os.path.realpath(os.path.join(gitdir, rel)) if rel else None


def protected_in(root: str, git: str) -> list[Protected]:
    """Protected entries for one writable root; `git` is the profile's protect|read-only|write.

    Entries with a `placeholder` may not exist; the caller creates them or drops the rule.
    """
    rules = [_read_only(os.path.join(root, n), f"protected {n}", "dir") for n in AGENT_DIRS]
    dotgit = os.path.join(root, ".git")
    if git == "write" or not os.path.lexists(dotgit):
        return rules
    if git == "read-only":
        rules.append(Protected(dotgit, "read", "git = read-only"))
        target = linked_gitdir(dotgit) if os.path.isfile(dotgit) else None
        if target:
            rules.append(Protected(target, "read", "git = read-only (linked worktree gitdir)"))
        return rules
    if os.path.isdir(dotgit) and not os.path.islink(dotgit):
        rules += _gitdir_rules(dotgit, "git = protect")
        return rules
    # A pointer file (linked worktree or submodule), or a symlink: the pointer itself is
    # read-only; a verified linked-worktree gitdir and its common dir get the same rules.
    rules.append(Protected(dotgit, "read", "git = protect (.git pointer)"))
    target = linked_gitdir(dotgit) if os.path.isfile(dotgit) else None
    if target:
        reason = "git = protect (linked worktree gitdir)"
        rules += [
            Protected(target, "write", reason, grant=True),
            _read_only(os.path.join(target, "config.worktree"), reason, "file"),
            _read_only(os.path.join(target, "commondir"), reason, None),
            _read_only(os.path.join(target, "gitdir"), reason, None),
        ]
        common = common_dir(target)
        if common and os.path.isdir(common):
            rules += _gitdir_rules(common, "git = protect (common dir of linked worktree)", grant=True)
    return rules
