"""Paths named by the user's OpenSSH client configuration: keys, certificates, sockets, known hosts.

Private keys can live anywhere `~/.ssh/config` says, so deny lists and `:home` learn them from the
configuration itself. Parsing is conservative: every Host/Match block counts whatever its
condition, a runtime token becomes a `*` glob, and nothing in a config file can make this raise.
"""

from __future__ import annotations

import errno
import glob
import ntpath
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import globs

_NAMES = "IdentityFile CertificateFile UserKnownHostsFile GlobalKnownHostsFile RevokedHostKeys ControlPath"
KEYWORDS = {k.lower(): k for k in [*_NAMES.split(), "IdentityAgent"]}
SECRET_KEYWORDS = frozenset({"IdentityFile", "CertificateFile", "ControlPath", "IdentityAgent"})
MULTI_KEYWORDS = frozenset({"UserKnownHostsFile", "GlobalKnownHostsFile"})
MAX_DEPTH = 16  # OpenSSH's own Include depth limit
_TOKEN = re.compile(r"%(.?)|\$\{([^}]*)\}", re.DOTALL)
_PIECE = re.compile(r"""\\([\\"' ])|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(\s+)|(["'])|(.)""", re.DOTALL)
_UNESCAPE = re.compile(r"""\\([\\"'])""")
_LINE = re.compile(r"([^\s=]+)\s*(?:=\s*)?(.*)", re.DOTALL)

Stamp = tuple[int, int, int] | None
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)  # Windows has neither


@dataclass(frozen=True)
class SshPath:
    path: str  # absolute and normalized; `*` where a runtime token stood
    keyword: str  # canonical spelling, e.g. "IdentityFile"
    origin: str  # "<config file>:<line>", for explain
    pattern: bool = False  # `path` is a glob (with everything but the `*` escaped)

    @property
    def secret(self) -> bool:
        """Keys and live agent/master sockets are secret; known-hosts and revoked-keys lists are not."""
        return self.keyword in SECRET_KEYWORDS


def _stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _words(text: str) -> list[str] | None:
    """Split arguments as OpenSSH does (quotes group, backslash escapes, a word starting `#` ends
    the line); None for an unterminated quote."""
    words: list[str] = []
    word: str | None = None
    for m in _PIECE.finditer(text):
        escaped, double, single, space, stray, char = m.groups()
        if stray:
            return None
        if char == "#" and word is None:
            return words
        if space:
            if word is not None:
                words.append(word)
            word = None
        else:
            word = (word or "") + (escaped or _UNESCAPE.sub(r"\1", double or single or "") or char or "")
    return words if word is None else [*words, word]


class _Walk:
    """One parse of the configuration, recording what it read so the result can be revalidated."""

    def __init__(self, home: str, env: Mapping[str, str], user: str, uid: int) -> None:
        self.home, self.env, self.user, self.uid = home, env, user, uid
        self.paths: dict[tuple[str, str], SshPath] = {}
        self.notes: list[str] = []
        self.stamps: dict[str, Stamp] = {}
        self.globs: dict[str, tuple[str, ...]] = {}
        self.env_used: dict[str, str | None] = {}
        self.visiting: set[str] = set()
        self.done: set[tuple[str, str]] = set()

    def getenv(self, name: str) -> str | None:
        self.env_used[name] = value = self.env.get(name)
        return value

    def parse(self, path: str, incdir: str, depth: int, where: str | None) -> None:
        real = os.path.realpath(path)
        self.stamps[path] = _stamp(path)  # before reading: a racing edit then only costs a reparse
        if real in self.visiting:
            self.notes.append(f"{where}: Include loop through {path}; not followed again")
            return
        if (real, incdir) in self.done:  # conditions are ignored, so a second parse adds nothing
            return
        text = self.read(path, where)
        if text is None:
            return
        self.visiting.add(real)
        for number, line in enumerate(text.split("\n"), 1):  # a NUL ends the line, as it does for ssh
            self.line(line.partition("\0")[0].strip(), f"{path}:{number}", incdir, depth)
        self.visiting.discard(real)
        self.done.add((real, incdir))

    def read(self, path: str, where: str | None) -> str | None:
        """The text; None for a directory, a missing top-level file, or (noted) anything unreadable."""
        fd = -1
        try:
            fd = os.open(path, _READ_FLAGS)  # never blocks on a FIFO
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                return None
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "not a regular file")
            chunks: list[bytes] = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", errors="replace")
        except OSError as exc:
            if where is not None or not isinstance(exc, FileNotFoundError | NotADirectoryError):
                self.notes.append(f"{where or path}: cannot read {path} ({exc.strerror}); skipped")
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    def line(self, line: str, origin: str, incdir: str, depth: int) -> None:
        m = _LINE.match(line)
        if not m or line.startswith("#"):
            return
        key = m[1].lower()
        keyword = "Include" if key == "include" else KEYWORDS.get(key)
        if keyword is None:
            return  # every other keyword (and garbage) names no file we care about
        args = _words(m[2])
        if not args:
            problem = "an unterminated quote" if args is None else "no value"
            self.notes.append(f"{origin}: {keyword} with {problem}; ignored")
            return
        if keyword == "Include":
            for arg in args:
                self.include(arg, origin, incdir, depth)
            return
        for arg in args if keyword in MULTI_KEYWORDS else args[:1]:
            self.value(keyword, arg, origin)

    def include(self, arg: str, origin: str, incdir: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            self.notes.append(f"{origin}: Include nested deeper than {MAX_DEPTH}; {arg} not followed")
            return
        # A glob with the wildcards as written; what was substituted (a home called `h[1]`) is literal.
        expanded = self.expand(arg, origin, globs.escape)
        if expanded is None:
            return
        pattern = os.path.normpath(os.path.join(globs.escape(incdir), expanded[0]))
        self.globs[pattern] = matches = tuple(sorted(glob.glob(pattern)))
        for path in matches:  # a pattern matching nothing is ignored, as OpenSSH does
            self.parse(path, incdir, depth + 1, origin)

    def value(self, keyword: str, arg: str, origin: str) -> None:
        if not arg or arg.lower() == "none":
            return
        name, wild = "", False
        if keyword == "IdentityAgent" and arg == "SSH_AUTH_SOCK":
            name = arg
        elif keyword == "IdentityAgent" and arg.startswith("$") and not arg.startswith("${"):
            name = arg[1:]
        if name:
            path = self.getenv(name)
            if path is None and name != "SSH_AUTH_SOCK":  # an unset SSH_AUTH_SOCK is ordinary
                self.notes.append(f"{origin}: ${name} is not set; {keyword} {arg} ignored")
        else:
            path, wild = self.expand(arg, origin) or (None, False)
            if wild:  # a glob only where a runtime token stood: the rest matches only itself
                path = (self.expand(arg, origin, globs.escape, globs.escape) or ("", False))[0]
        if path:
            # ssh would resolve a relative path against its cwd; the home directory is the likeliest.
            home = globs.escape(self.home) if wild else self.home
            path = os.path.normpath(os.path.join(home, path))
            self.paths.setdefault((path, keyword), SshPath(path, keyword, origin, wild))

    def expand(
        self, arg: str, origin: str, quote: Callable[[str], str] = str, quote_text: Callable[[str], str] = str
    ) -> tuple[str, bool] | None:
        """(text, whether a runtime token became `*`) after tilde, %-tokens and ${VAR}; None (with
        a note) if it cannot be expanded. `quote` is applied to what was substituted (home, a
        variable), `quote_text` to the text as written."""
        prefix = ""
        if arg == "~" or arg.startswith("~/"):
            prefix, arg = self.home, arg[1:]
        elif arg.startswith("~"):
            user, sep, rest = arg.partition("/")
            expanded = os.path.expanduser(user)
            if expanded == user:
                self.notes.append(f"{origin}: unknown user in {arg}; ignored")
                return None
            prefix, arg = expanded, sep + rest
        missing: list[str] = []
        out = [quote(prefix)]
        wild = False
        at = 0
        for m in _TOKEN.finditer(arg):
            out.append(quote_text(arg[at : m.start()]))
            at = m.end()
            if m[2] is None:
                value = {"d": self.home, "u": self.user, "i": str(self.uid), "%": "%"}.get(m[1])
                wild = wild or value is None
                out.append("*" if value is None else quote(value))
                continue
            value = self.getenv(m[2])
            if value is None:
                missing.append(m[2])
            out.append(quote(value or ""))
        out.append(quote_text(arg[at:]))
        if missing:
            self.notes.append(f"{origin}: ${{{missing[0]}}} is not set; {prefix}{arg} ignored")
            return None
        return "".join(out), wild


Result = tuple[tuple[SshPath, ...], tuple[str, ...]]
_cache: dict[tuple[str, str, int, str], tuple[_Walk, Result]] = {}


def _fresh(walk: _Walk, env: Mapping[str, str]) -> bool:
    """Nothing the walk depended on (files, include globs, environment) has changed."""
    return (
        all(env.get(name) == value for name, value in walk.env_used.items())
        and all(_stamp(path) == stamp for path, stamp in walk.stamps.items())
        and all(tuple(sorted(glob.glob(p))) == matches for p, matches in walk.globs.items())
    )


def system_config_file(env: Mapping[str, str], os_name: str = os.name) -> str:
    """OpenSSH's system-wide client config: %ProgramData%\\ssh\\ssh_config on Windows."""
    if os_name != "nt":
        return "/etc/ssh/ssh_config"
    data = next((v for k, v in env.items() if k.casefold() == "programdata" and v), "C:\\ProgramData")
    return ntpath.join(data, "ssh", "ssh_config")


def ssh_config_paths(
    home: str, env: Mapping[str, str], *, user: str, uid: int, system_config: str | None = None
) -> Result:
    """(paths, notes). Starts at <home>/.ssh/config and at system_config."""
    system_config = system_config or system_config_file(env)
    key = (home, user, uid, system_config)
    cached = _cache.get(key)
    if cached is not None and _fresh(cached[0], env):
        return cached[1]
    walk = _Walk(home, env, user, uid)
    user_dir = os.path.join(home, ".ssh")
    walk.parse(os.path.join(user_dir, "config"), user_dir, 0, None)
    walk.parse(system_config, os.path.dirname(system_config) or ".", 0, None)
    result = (tuple(walk.paths.values()), tuple(walk.notes))
    _cache[key] = (walk, result)
    return result
