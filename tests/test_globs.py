"""Glob expansion: one walk for all patterns, pruned, bounded, never following symlinks, cached
and revalidated by directory stat. These run on the real filesystem; the only thing patched is
a counter around the listing calls, to prove how many directories were read."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade import globs


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts how often each directory is read (scandir or listdir), with no racy window."""
    counts: Counter[str] = Counter()
    real_scandir, real_listdir = os.scandir, os.listdir

    def scandir(path: str) -> object:
        counts[str(path)] += 1
        return real_scandir(path)

    def listdir(path: str) -> list[str]:
        counts[str(path)] += 1
        return real_listdir(path)

    monkeypatch.setattr(globs.os, "scandir", scandir)
    monkeypatch.setattr(globs.os, "listdir", listdir)
    monkeypatch.setattr(globs, "RACY_NS", 0)
    globs._cache.clear()
    yield counts
    globs._cache.clear()


def tree(base: Path, files: list[str]) -> Path:
    for rel in files:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return base


def rel(base: Path, found: list[str]) -> list[str]:
    return sorted(os.path.relpath(p, base) for p in found)


def settle() -> None:
    """Let the clock move past the tree's last change, so its directories may be cached."""
    time.sleep(0.02)


def test_patterns_match_what_a_shell_glob_would_and_dotfiles_too(tmp_path: Path) -> None:
    base = tree(
        tmp_path,
        [".env", "a/.env.local", "a/b/c/.env", "a/key.pem", ".hidden/x.pem", "a/ok.txt", "a/k1", "a/k22"],
    )
    pats = {p: str(base / p) for p in ("**/.env", "**/.env.*", "**/*.pem", "a/*.txt", "a/k?", "a/k[0-9]*")}
    found = globs.expand_all(pats.values(), 8)
    assert rel(base, found[pats["**/.env"]]) == [".env", "a/b/c/.env"]
    assert rel(base, found[pats["**/.env.*"]]) == ["a/.env.local"]
    assert rel(base, found[pats["**/*.pem"]]) == [".hidden/x.pem", "a/key.pem"]
    assert rel(base, found[pats["a/*.txt"]]) == ["a/ok.txt"]
    assert rel(base, found[pats["a/k?"]]) == ["a/k1"]
    assert rel(base, found[pats["a/k[0-9]*"]]) == ["a/k1", "a/k22"]


def test_one_walk_for_all_patterns_and_pruned_by_fixed_prefix(tmp_path: Path, listed: Counter[str]) -> None:
    base = tree(tmp_path, [f"d{i}/e{j}/f.txt" for i in range(5) for j in range(5)] + ["d0/e0/.env"])
    patterns = [str(base / p) for p in ("**/.env", "**/.env.*", "**/*.pem", "**/id_rsa*", "d1/*/x")]
    globs.expand_all(patterns, 8)
    assert listed and max(listed.values()) == 1  # every directory read once for five patterns
    listed.clear()
    globs._cache.clear()
    globs.expand_all([str(base / "d3/e1/**/.env")], 8)
    assert set(listed) == {str(base / "d3/e1")}  # nothing outside the fixed prefix is read


def test_depth_bound_counts_components_below_the_prefix(tmp_path: Path) -> None:
    base = tree(tmp_path, ["a/.env", "a/b/.env", "a/b/c/.env"])
    pattern = str(base / "**/.env")
    assert rel(base, globs.expand(pattern, 2)) == ["a/.env"]
    assert rel(base, globs.expand(pattern, 3)) == ["a/.env", "a/b/.env"]
    assert rel(base, globs.expand(str(base / "a/**/.env"), 1)) == ["a/.env"]


def test_symlinks_are_matched_but_never_followed(tmp_path: Path) -> None:
    outside = tree(tmp_path / "outside", ["secret/.env"])
    base = tree(tmp_path / "repo", ["a/.env"])
    (base / "a" / "loop").symlink_to("..")
    (base / "to-outside").symlink_to(outside / "secret")
    (base / "alias.pem").symlink_to(outside / "secret" / ".env")
    found = globs.expand_all([str(base / "**/.env"), str(base / "**/*.pem")], 8)
    assert rel(base, found[str(base / "**/.env")]) == ["a/.env"]  # not through the loop or outside
    assert rel(base, found[str(base / "**/*.pem")]) == ["alias.pem"]  # the link itself matches


def test_trailing_double_star_means_the_directory_itself(tmp_path: Path) -> None:
    base = tree(tmp_path, ["secrets/a/b.txt"])
    assert globs.expand(str(base / "secrets/**"), 8) == [str(base / "secrets")]


def test_repeated_expansion_reads_no_directory_of_an_unchanged_tree(
    tmp_path: Path, listed: Counter[str]
) -> None:
    base = tree(tmp_path, [f"d{i}/e{j}/f.txt" for i in range(4) for j in range(4)] + ["d2/e3/.env"])
    pattern = str(base / "**/.env")
    settle()
    first = globs.expand(pattern, 8)
    assert listed
    listed.clear()
    assert globs.expand(pattern, 8) == first
    assert not listed


def test_changes_anywhere_are_seen_by_the_next_expansion(tmp_path: Path, listed: Counter[str]) -> None:
    base = tree(tmp_path, ["a/b/c/f.txt", "x/y.txt"])
    pattern = str(base / "**/.env")
    settle()
    assert globs.expand(pattern, 8) == []
    (base / "a/b/c/.env").write_text("new")  # deep: only that directory changed
    listed.clear()
    assert rel(base, globs.expand(pattern, 8)) == ["a/b/c/.env"]
    assert set(listed) == {str(base / "a/b/c")}  # only the changed directory is read again
    (base / "x/y.txt").unlink()
    (base / "x/y.txt").mkdir()  # a file replaced by a directory, holding a match
    (base / "x/y.txt/.env").write_text("s")
    os.rename(base / "a/b", base / "a/renamed")
    assert rel(base, globs.expand(pattern, 8)) == ["a/renamed/c/.env", "x/y.txt/.env"]


def test_a_directory_whose_mtime_is_forged_back_is_still_reread(tmp_path: Path) -> None:
    base = tree(tmp_path, ["a/f.txt"])
    pattern = str(base / "**/.env")
    old = (base / "a").stat()
    settle()
    globs._cache.clear()
    assert globs.expand(pattern, 8) == []
    (base / "a/.env").write_text("s")
    os.utime(base / "a", ns=(old.st_atime_ns, old.st_mtime_ns))  # mtime back; ctime moves anyway
    assert (base / "a").stat().st_mtime_ns == old.st_mtime_ns
    assert rel(base, globs.expand(pattern, 8)) == ["a/.env"]


def test_racy_directories_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(globs, "RACY_NS", 3600 * 10**9)  # everything counts as just changed
    globs._cache.clear()
    base = tree(tmp_path, ["a/f.txt"])
    globs.expand(str(base / "**/.env"), 8)
    assert not any(k.startswith(str(base)) for k in globs._cache)


def test_a_walk_that_lists_too_much_stops_with_the_pattern(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tree(tmp_path, [f"d{i}/f" for i in range(20)])
    monkeypatch.setattr(globs, "MAX_WALKED_DIRS", 5)
    with pytest.raises(globs.TooBroad) as err:
        globs.expand(str(base / "**/.env"), 8)
    assert err.value.pattern == str(base / "**/.env")


def test_leaf_directories_are_read_without_typing_each_entry(tmp_path: Path) -> None:
    """The link-count shortcut must agree with a full scan, on this filesystem and on tmpfs."""
    for where in (tmp_path, Path("/dev/shm")):
        if not where.is_dir():
            continue
        base = Path(os.path.join(where, f"stockade-leaf-{os.getpid()}"))
        try:
            tree(base, ["a/.env", "a/b/.env", "c/.env", "c/f"])
            expected = sorted(str(p) for p in base.rglob(".env"))
            globs._cache.clear()
            assert globs.expand(str(base / "**/.env"), 8) == expected
        finally:
            for root, dirs, files in os.walk(base, topdown=False):
                for f in files:
                    os.unlink(os.path.join(root, f))
                for d in dirs:
                    os.rmdir(os.path.join(root, d))
            os.rmdir(base)


def test_a_new_process_reuses_the_saved_cache_and_still_sees_changes(
    tmp_path: Path, listed: Counter[str]
) -> None:
    from stockade.globcache import DiskStore

    state = tmp_path / "state"
    state.mkdir()
    base = tree(tmp_path / "repo", [f"d{i}/e{j}/f.txt" for i in range(3) for j in range(3)] + ["d1/e2/.env"])
    pattern = str(base / "**/.env")
    settle()
    first = globs.expand_all([pattern], 8, DiskStore(str(state)))[pattern]
    assert first == [str(base / "d1/e2/.env")] and listed
    assert len(list(state.glob("globs-*.cache"))) == 1
    globs._cache.clear()  # as if this were a new process
    listed.clear()
    assert globs.expand_all([pattern], 8, DiskStore(str(state)))[pattern] == first
    assert not set(listed) - {str(state)}  # nothing re-read: each directory revalidated by its stat
    (base / "d0/e0/.env").write_text("new")
    globs._cache.clear()
    found = globs.expand_all([pattern], 8, DiskStore(str(state)))[pattern]
    assert found == sorted([*first, str(base / "d0/e0/.env")])
    assert set(listed) - {str(state)} == {str(base / "d0/e0")}  # (the store lists its own files)


def test_a_damaged_or_foreign_cache_file_is_ignored(tmp_path: Path) -> None:
    from stockade.globcache import DiskStore

    state = tmp_path / "state"
    state.mkdir()
    base = tree(tmp_path / "repo", ["a/.env"])
    pattern = str(base / "**/.env")
    store = DiskStore(str(state))
    store.save(str(base))  # an empty save, then damage it
    for damage in (b"", b"\x00garbage", b"\xff" * 64):
        (next(state.glob("globs-*.cache"))).write_bytes(damage)
        globs._cache.clear()
        assert globs.expand_all([pattern], 8, DiskStore(str(state)))[pattern] == [str(base / "a/.env")]


def test_the_store_keeps_only_the_most_recently_used_bases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stockade import globcache

    monkeypatch.setattr(globcache, "MAX_FILES", 2)
    monkeypatch.setattr(globs, "RACY_NS", 0)
    state = tmp_path / "state"
    state.mkdir()
    for i in range(4):
        base = tree(tmp_path / f"repo{i}", ["a/f"])
        settle()
        globs.expand_all([str(base / "**/.env")], 8, globcache.DiskStore(str(state)))
    assert len(list(state.glob("globs-*.cache"))) == 2


def test_escaped_names_are_literal_and_walks_start_below_them(tmp_path: Path, listed: Counter[str]) -> None:
    base = tree(tmp_path / "p[1]", ["a.py", "sub/b.py"])
    tree(tmp_path / "p1", ["a.py"])
    assert globs.literal("p[[]1]") == "p[1]" and globs.literal("[*][?]") == "*?"
    assert globs.literal("p[12]") is None and globs.literal("*") is None
    assert not globs.is_pattern(globs.escape(str(base))) and globs.is_pattern(str(base))
    pattern = globs.escape(str(base)) + "/**/*.py"
    assert globs.split(pattern) == (str(base), "**/*.py")
    found = globs.expand(pattern, 4)
    assert rel(tmp_path, found) == ["p[1]/a.py", "p[1]/sub/b.py"]
    assert str(tmp_path) not in listed  # the walk started at the root itself, not its parent
    # The same root folded into a wider walk keeps its name literal.
    both = globs.expand_all([pattern, str(tmp_path) + "/*/a.py"], 4)
    assert rel(tmp_path, both[pattern]) == ["p[1]/a.py", "p[1]/sub/b.py"]
    assert rel(tmp_path, both[str(tmp_path) + "/*/a.py"]) == ["p1/a.py", "p[1]/a.py"]
    # A path whose every name is escaped matches itself, and only if it exists.
    assert globs.expand(globs.escape(str(base / "a.py")), 0) == [str(base / "a.py")]
    assert globs.expand(globs.escape(str(base / "zz")), 0) == []
