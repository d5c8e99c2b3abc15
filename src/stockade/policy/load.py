"""Config files and flags -> one validated Profile.

Layers, later ones winning: built-in profiles, `~/.config/stockade/config.toml`, each root's
`.stockade/config.toml`, `--config FILE`, then flags. Every mistake is a ConfigError naming the
file, the key and what would be valid; nothing is ever silently ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError
from ..globs import at_root, escape, is_pattern
from .builtin import BUILTIN, BUILTIN_FILE, DEFAULT_PROFILE, UNCONFINED
from .model import (
    ACCESS_VALUES,
    BACKENDS,
    GIT_MODES,
    LIMIT_KEYS,
    NETWORK_MODES,
    SPECIAL_KEYS,
    WORKSPACE_ROOTS,
    Access,
    EnvPolicy,
    FsRule,
    Limits,
    Profile,
    ProxyPolicy,
)

TOP_KEYS = ("profile", "profiles", "telemetry", "audit")
PROFILE_KEYS = (
    "extends",
    "description",
    "filesystem",
    "network",
    "env",
    "git",
    "glob_scan_max_depth",
    "skip_missing",
    "backend",
    "limits",
)
NETWORK_KEYS = ("mode", "allow", "deny", "allow_local_binding")
ENV_KEYS = ("pass", "set", "deny")
NOT_YET: dict[str, str] = {}
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_PATTERN = re.compile(r"^[A-Za-z0-9_*?\[\]!]+$")


def _suggest(word: str, valid: tuple[str, ...] | list[str]) -> str:
    import difflib  # only on the error path

    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"valid: {', '.join(valid)}{hint}"


@dataclass(frozen=True)
class Layer:
    """One parsed config file: its default profile name and its raw profile tables."""

    file: str
    profile: str | None
    profiles: dict[str, dict[str, Any]]
    stamp: tuple[int, int] = (0, 0)  # (mtime_ns, size) of the file when it was read
    telemetry: Any = None  # its [telemetry]/[audit] tables, validated (telemetry.config.LayerSettings)


def parse_layer(file: str, data: dict[str, Any]) -> Layer:
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown top-level key; {_suggest(key, TOP_KEYS)}", file=file, key=key)
    profile = data.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise ConfigError("must be a profile name (a string)", file=file, key="profile")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError("must be a table of [profiles.NAME]", file=file, key="profiles")
    for name, body in profiles.items():
        if not isinstance(body, dict):
            raise ConfigError("must be a table", file=file, key=f"profiles.{name}")
        for key in body:
            if key not in PROFILE_KEYS:
                raise ConfigError(
                    f"unknown key; {_suggest(key, PROFILE_KEYS)}",
                    file=file,
                    key=f"profiles.{name}.{key}",
                )
    settings = None
    if "telemetry" in data or "audit" in data:
        from ..telemetry.config import parse_tables  # validated now, like every other table

        settings = parse_tables(file, data.get("telemetry"), data.get("audit"))
    return Layer(file, profile, profiles, telemetry=settings)


_file_cache: dict[str, tuple[tuple[int, int], Layer]] = {}
_resolved: dict[tuple[str, tuple[tuple[str, tuple[int, int]], ...]], Profile] = {}


def read_layer(path: str, *, required: bool) -> Layer | None:
    """Parse one TOML file, cached by (mtime, size) so repeated runs in one process are cheap."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if required:
            raise ConfigError("config file does not exist", file=path) from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=path) from None
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _file_cache.get(path)
    if hit and hit[0] == stamp:
        return hit[1]
    import tomllib  # only when a config file exists: keeps `stockade run` start-up lean

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=path) from None
    layer = replace(parse_layer(path, data), stamp=stamp)
    _file_cache[path] = (stamp, layer)
    return layer


def config_files(roots: list[str], home: str, extra: str | None) -> list[tuple[str, bool]]:
    """(path, required) for every config file that may apply, in layering order."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    files = [(os.path.join(xdg, "stockade", "config.toml"), False)]
    files += [(os.path.join(root, ".stockade", "config.toml"), False) for root in roots]
    if extra:
        files.append((os.path.abspath(extra), True))
    return files


def _access(value: Any, file: str, key: str) -> Access:
    if not isinstance(value, str) or value not in ACCESS_VALUES:
        shown = value if isinstance(value, str) else type(value).__name__
        raise ConfigError(
            f"invalid access {shown!r}; {_suggest(str(value), ACCESS_VALUES)}", file=file, key=key
        )
    return "deny" if value == "none" else value  # type: ignore[return-value]


def _is_glob(path: str) -> bool:
    return is_pattern(path)


SEPS = ("/", "\\") if os.name == "nt" else ("/",)
ABSOLUTE = "an absolute path with its drive (C:\\dir or C:/dir)" if os.name == "nt" else "an absolute path"


def _home_relative(path: str) -> bool:
    """`~` or `~/...` (`~\\...` too on Windows): the Plan's home directory."""
    return path == "~" or path.startswith(tuple("~" + sep for sep in SEPS))


def _absolute(path: str, file: str | None, key: str) -> bool:
    """Whether a key names an absolute path. On Windows that takes a drive or a UNC share: a path
    rooted on "the current drive" (`/opt`, `\\opt`) is refused rather than guessed."""
    if os.name != "nt":
        return path.startswith("/")
    drive, rest = os.path.splitdrive(path)
    if drive and rest[:1] in SEPS:
        return True
    if drive or path[:1] in SEPS:
        raise ConfigError(
            f"{path!r} names no full location on Windows; write {ABSOLUTE}, ~/..., or a path relative "
            "to the workspace roots",
            file=file,
            key=key,
        )
    return False


def _fs_rule(raw_key: str, value: Any, file: str, key: str) -> list[FsRule]:
    source = f"{file}: {key}"
    if raw_key.startswith(":"):
        if raw_key not in SPECIAL_KEYS:
            raise ConfigError(f"unknown special path; {_suggest(raw_key, SPECIAL_KEYS)}", file=file, key=key)
        if raw_key in NOT_YET:
            raise ConfigError(f"not yet supported (comes with {NOT_YET[raw_key]})", file=file, key=key)
        if isinstance(value, dict):
            if raw_key != WORKSPACE_ROOTS:
                raise ConfigError(
                    f'only {WORKSPACE_ROOTS} takes a table of sub-paths; write {raw_key} = "read"',
                    file=file,
                    key=key,
                )
            rules = []
            for sub, sub_value in value.items():
                sub_key = f"{key}.{sub!r}"
                rel = _relative(sub, file, sub_key)
                access = _access(sub_value, file, sub_key)
                rules.append(
                    _checked(FsRule(WORKSPACE_ROOTS, rel, access, f"{file}: {sub_key}"), file, sub_key)
                )
            return rules
        access = _access(value, file, key)
        if raw_key == ":ssh_keys" and access == "write":
            raise ConfigError(':ssh_keys can be "deny" or "read", not "write"', file=file, key=key)
        return [FsRule(raw_key, ".", access, source)]
    access = _access(value, file, key)
    if _absolute(raw_key, file, key):
        rule = FsRule(None, os.path.normpath(raw_key), access, source)
    elif _home_relative(raw_key):
        rule = FsRule(None, raw_key.rstrip("".join(SEPS)) or "~", access, source)
    elif raw_key.startswith("~"):
        raise ConfigError("only ~ and ~/... are supported, not ~user", file=file, key=key)
    else:
        rule = FsRule(WORKSPACE_ROOTS, _relative(raw_key, file, key), access, source)
    return [_checked(rule, file, key)]


def _relative(path: str, file: str, key: str) -> str:
    if path.startswith("~") or _absolute(path, file, key):
        raise ConfigError("sub-paths of :workspace_roots must be relative", file=file, key=key)
    norm = os.path.normpath(path) if path else "."
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise ConfigError(
            "relative paths must stay inside the root; use an absolute path", file=file, key=key
        )
    return norm


def _checked(rule: FsRule, file: str, key: str) -> FsRule:
    if _is_glob(rule.path) and rule.access == "write":
        raise ConfigError(
            "globs can deny or reopen for reading, never grant write (every new match would "
            "widen the grant); list the writable paths one by one",
            file=file,
            key=key,
        )
    return rule


def check_bounded(profile: Profile) -> None:
    """A `**` pattern needs a depth bound; one at the filesystem root is never walked."""
    for rule in profile.filesystem:
        if "**" not in rule.path:
            continue
        file, _, key = rule.source.partition(": ")
        if rule.anchor is None and at_root(rule.path):
            raise ConfigError(
                f"{rule.path!r} would walk the whole filesystem; anchor the ** under a directory "
                "(a relative pattern applies under every workspace root, or write ~/... or /dir/**/...)",
                file=file if key else None,
                key=key or file,
            )
        if profile.glob_scan_max_depth is None:
            raise ConfigError(
                f"{rule.path!r} has no depth bound: set glob_scan_max_depth = N (1 to 64) in "
                f"[profiles.{profile.name}], or extend a built-in profile (which sets 8)",
                file=file if key else None,
                key=key or file,
            )


def _network(value: Any, file: str, key: str, proxy: ProxyPolicy) -> tuple[str, ProxyPolicy]:
    """(mode, proxy rules): a later layer's allow/deny lists replace an earlier one's."""
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, dict):
        raise ConfigError('must be a table, e.g. network = { mode = "off" }', file=file, key=key)
    for sub in value:
        if sub not in NETWORK_KEYS:
            raise ConfigError(f"unknown key; {_suggest(sub, NETWORK_KEYS)}", file=file, key=f"{key}.{sub}")
    mode = value.get("mode", "off")
    if mode not in NETWORK_MODES:
        raise ConfigError(
            f"invalid mode {mode!r}; {_suggest(str(mode), NETWORK_MODES)}", file=file, key=f"{key}.mode"
        )
    lists = {}
    for name in ("allow", "deny"):
        if name in value:
            lists[name] = _domains(value[name], file, f"{key}.{name}")
    local = value.get("allow_local_binding", proxy.allow_local_binding)
    if not isinstance(local, bool):
        raise ConfigError("must be true or false", file=file, key=f"{key}.allow_local_binding")
    if mode != "proxy" and (lists or "allow_local_binding" in value):
        extra = next(k for k in ("allow", "deny", "allow_local_binding") if k in value)
        why = f'applies only to mode = "proxy" (this table says mode = {mode!r})'
        raise ConfigError(why, file=file, key=f"{key}.{extra}")
    return mode, replace(proxy, **lists, allow_local_binding=local)


def _domains(value: Any, file: str, key: str) -> tuple[str, ...]:
    """Host rules, each checked now: a malformed one is an error, never a rule that never matches."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        example = '["pypi.org", "*.pythonhosted.org"]'
        raise ConfigError(f"must be a list of host names, e.g. {example}", file=file, key=key)
    from ..net.rules import check_rule

    for entry in value:
        problem = check_rule(entry)
        if problem:
            raise ConfigError(f"{entry!r}: {problem}", file=file, key=key)
    return tuple(value)


def _names(value: Any, file: str, key: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("must be a list of variable names", file=file, key=key)
    for v in value:
        if not pattern.match(v):
            raise ConfigError(f"{v!r} is not a valid environment variable name", file=file, key=key)
    return tuple(value)


def _env(value: Any, base: EnvPolicy, file: str, key: str) -> EnvPolicy:
    if not isinstance(value, dict):
        raise ConfigError("must be a table with pass, set, deny", file=file, key=key)
    for sub in value:
        if sub not in ENV_KEYS:
            raise ConfigError(f"unknown key; {_suggest(sub, ENV_KEYS)}", file=file, key=f"{key}.{sub}")
    passthrough = base.passthrough + _names(value.get("pass", []), file, f"{key}.pass", ENV_NAME)
    deny = base.deny + _names(value.get("deny", []), file, f"{key}.deny", ENV_PATTERN)
    fixed = dict(base.set)
    raw_set = value.get("set", {})
    if not isinstance(raw_set, dict):
        raise ConfigError('must be a table NAME = "value"', file=file, key=f"{key}.set")
    for name, val in raw_set.items():
        if not ENV_NAME.match(name) or not isinstance(val, str):
            raise ConfigError('must be NAME = "string value"', file=file, key=f"{key}.set.{name}")
        fixed[name] = val
    return EnvPolicy(passthrough, tuple(fixed.items()), deny)


SIZE = re.compile(r"^(\d+)\s*([KMGT]?)i?B?$", re.IGNORECASE)
SIZED = ("memory", "file_size")


def _limits(value: Any, base: Limits, file: str, key: str) -> Limits:
    """Counts are positive integers; `memory` and `file_size` also take "512M", "2G" (powers of 1024)."""
    if not isinstance(value, dict):
        raise ConfigError("must be a table of limit = value", file=file, key=key)
    found: dict[str, int] = {}
    for sub, raw in value.items():
        if sub not in LIMIT_KEYS:
            raise ConfigError(f"unknown limit; {_suggest(sub, LIMIT_KEYS)}", file=file, key=f"{key}.{sub}")
        size = SIZE.match(raw.strip()) if isinstance(raw, str) and sub in SIZED else None
        if size:
            raw = int(size.group(1)) << (10 * " KMGT".index(size.group(2).upper() or " "))
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
            hint = ' or a size like "512M"' if sub in SIZED else ""
            raise ConfigError(f"must be a positive integer{hint}, not {raw!r}", file=file, key=f"{key}.{sub}")
        found[sub] = raw
    return replace(base, **found)


def apply_body(profile: Profile, body: dict[str, Any], file: str, name: str) -> Profile:
    """Overlay one `[profiles.NAME]` table onto a profile."""
    prefix = f"profiles.{name}"
    if "description" in body:
        profile = replace(profile, description=str(body["description"]))
    if "filesystem" in body:
        fs = body["filesystem"]
        if not isinstance(fs, dict):
            raise ConfigError("must be a table of path = access", file=file, key=f"{prefix}.filesystem")
        rules: list[FsRule] = []
        for raw_key, value in fs.items():
            rules += _fs_rule(raw_key, value, file, f"{prefix}.filesystem.{raw_key!r}")
        profile = profile.with_rules(rules)
    if "network" in body:
        mode, proxy = _network(body["network"], file, f"{prefix}.network", profile.proxy)
        profile = replace(profile, network=mode, proxy=proxy)
    if "env" in body:
        profile = replace(profile, env=_env(body["env"], profile.env, file, f"{prefix}.env"))
    if "git" in body:
        git = body["git"]
        if git not in GIT_MODES:
            raise ConfigError(
                f"invalid value {git!r}; {_suggest(str(git), GIT_MODES)}", file=file, key=f"{prefix}.git"
            )
        profile = replace(profile, git=git)
    if "glob_scan_max_depth" in body:
        depth = body["glob_scan_max_depth"]
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 64:
            raise ConfigError(
                "must be an integer from 1 to 64", file=file, key=f"{prefix}.glob_scan_max_depth"
            )
        profile = replace(profile, glob_scan_max_depth=depth)
    if "backend" in body:
        backend = body["backend"]
        if backend not in BACKENDS:
            raise ConfigError(
                f"invalid backend {backend!r}; {_suggest(str(backend), BACKENDS)}",
                file=file,
                key=f"{prefix}.backend",
            )
        profile = replace(profile, backend=backend)
    if "limits" in body:
        profile = replace(profile, limits=_limits(body["limits"], profile.limits, file, f"{prefix}.limits"))
    if "skip_missing" in body:
        if not isinstance(body["skip_missing"], bool):
            raise ConfigError("must be true or false", file=file, key=f"{prefix}.skip_missing")
        profile = replace(profile, skip_missing=body["skip_missing"])
    return profile


BUILTIN_LAYER = parse_layer(BUILTIN_FILE, {"profiles": BUILTIN})


def available(layers: list[Layer]) -> dict[str, str]:
    """Profile name -> where it was (last) defined."""
    names: dict[str, str] = {}
    for layer in [BUILTIN_LAYER, *layers]:
        for name in layer.profiles:
            names[name] = layer.file
    return names


def resolve(
    name: str, layers: list[Layer], *, _seen: tuple[str, ...] = (), _where: str | None = None
) -> Profile:
    """Build profile `name`: its `extends` base, then every layer's table for it, in order."""
    all_layers = [BUILTIN_LAYER, *layers]
    defs = [(layer.file, layer.profiles[name]) for layer in all_layers if name in layer.profiles]
    if not defs:
        known = tuple(available(layers))
        if _seen:
            raise ConfigError(
                f"unknown profile {name!r}; {_suggest(name, known)}",
                file=_where,
                key=f"profiles.{_seen[-1]}.extends",
            )
        raise ConfigError(f"unknown profile {name!r}; {_suggest(name, known)}", key="--profile")
    if name in _seen:
        chain = " -> ".join((*_seen, name))
        raise ConfigError(
            f"profiles extend each other in a cycle: {chain}",
            file=defs[-1][0],
            key=f"profiles.{name}.extends",
        )
    extends, extends_file = None, None
    for file, body in defs:
        if "extends" in body:
            if not isinstance(body["extends"], str):
                raise ConfigError("must be a profile name", file=file, key=f"profiles.{name}.extends")
            extends, extends_file = body["extends"], file
    if extends in UNCONFINED:
        raise ConfigError(
            f"cannot extend {extends!r}: it is no sandbox; use it by name",
            file=extends_file,
            key=f"profiles.{name}.extends",
        )
    base = resolve(extends, layers, _seen=(*_seen, name), _where=extends_file) if extends else Profile(name)
    profile = replace(base, name=name, unconfined=name in UNCONFINED and not extends)
    for file, body in defs:
        profile = apply_body(profile, body, file, name)
    return profile


@dataclass(frozen=True)
class Overrides:
    """What flags (or the Python API's keyword arguments) add on top of the config files."""

    writable: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    network: str | None = None
    env: tuple[str, ...] = ()  # NAME (pass through) or NAME=VALUE (set)
    backend: str | None = None
    allow_domains: tuple[str, ...] = ()  # added to the proxy's allow list (--allow-domain)
    deny_domains: tuple[str, ...] = ()


def _flag_rules(paths: tuple[str, ...], access: Access, flag: str, cwd: str) -> list[FsRule]:
    """--read and --writable name directories (the shell has expanded any glob: the rest is a
    name); --deny may be a glob. cwd is a literal prefix either way."""
    rules = []
    for raw in paths:
        text = raw if access == "deny" else escape(raw)
        if _home_relative(raw):
            rule = FsRule(None, text.rstrip("".join(SEPS)) or "~", access, f"{flag} {raw}")  # the Plan's HOME
        elif raw.startswith("~"):
            raise ConfigError("only ~ and ~/... are supported, not ~user", key=f"{flag} {raw}")
        else:
            rule = FsRule(None, os.path.normpath(os.path.join(escape(cwd), text)), access, f"{flag} {raw}")
        rules.append(_checked(rule, flag, raw))
    return rules


def apply_overrides(profile: Profile, o: Overrides, cwd: str) -> Profile:
    widened = o.writable or o.read or o.deny or o.network or o.allow_domains or o.deny_domains
    if profile.unconfined and widened:
        raise ConfigError(
            f"profile {profile.name!r} runs without a sandbox, so --writable/--read/--deny/--network "
            "cannot apply; pick a sandboxed profile",
            key="--profile",
        )
    rules = (
        _flag_rules(o.read, "read", "--read", cwd)
        + _flag_rules(o.writable, "write", "--writable", cwd)
        + _flag_rules(o.deny, "deny", "--deny", cwd)
    )
    profile = profile.with_rules(rules)
    if o.network is not None:
        mode, _ = _network(o.network, "--network", "value", profile.proxy)
        profile = replace(profile, network=mode)
    if o.allow_domains or o.deny_domains:
        if profile.network != "proxy":
            raise ConfigError(
                f"--allow-domain/--deny-domain need the proxy, but the network is {profile.network!r}; "
                "add --network proxy",
                key="--allow-domain" if o.allow_domains else "--deny-domain",
            )
        proxy = replace(
            profile.proxy,
            allow=profile.proxy.allow + _domains(list(o.allow_domains), "--allow-domain", "value"),
            deny=profile.proxy.deny + _domains(list(o.deny_domains), "--deny-domain", "value"),
        )
        profile = replace(profile, proxy=proxy)
    if o.backend is not None:
        if o.backend not in BACKENDS:
            raise ConfigError(
                f"invalid backend {o.backend!r}; {_suggest(o.backend, BACKENDS)}", key="--backend"
            )
        profile = replace(profile, backend=o.backend)
    if o.env:
        passthrough = list(profile.env.passthrough)
        fixed = dict(profile.env.set)
        for item in o.env:
            name, eq, value = item.partition("=")
            if not ENV_NAME.match(name):
                raise ConfigError(f"{item!r}: expected NAME or NAME=VALUE", key="--env")
            if eq:
                fixed[name] = value
            else:
                passthrough.append(name)
        profile = replace(
            profile, env=replace(profile.env, passthrough=tuple(passthrough), set=tuple(fixed.items()))
        )
    return profile


def load_profile(
    name: str | None,
    *,
    roots: list[str],
    home: str,
    cwd: str,
    config: str | None = None,
    overrides: Overrides = Overrides(),
) -> Profile:
    """The whole parse step of the pipeline: files, then the named profile, then flags."""
    layers = [
        layer
        for path, required in config_files(roots, home, config)
        if (layer := read_layer(path, required=required)) is not None
    ]
    chosen, chosen_in = name, None
    if chosen is None:
        for layer in layers:
            if layer.profile is not None:
                chosen, chosen_in = layer.profile, layer.file
    key = (chosen or DEFAULT_PROFILE, tuple((layer.file, layer.stamp) for layer in layers))
    profile = _resolved.get(key)
    if profile is None:  # resolving is pure given the files' contents: remember it
        if len(_resolved) > 64:
            _resolved.clear()
        profile = _resolved[key] = resolve(key[0], layers)
    project = {os.path.join(root, ".stockade", "config.toml") for root in roots}
    if profile.unconfined and chosen_in in project:
        # A checkout must not turn the sandbox off for whoever runs commands in it.
        raise ConfigError(
            f"a project config cannot select {profile.name!r} (no sandbox); "
            f"pass --profile {profile.name} yourself if you mean it",
            file=chosen_in,
            key="profile",
        )
    profile = apply_overrides(profile, overrides, cwd)
    check_bounded(profile)
    return replace(profile, config_files=tuple(layer.file for layer in layers))


def list_profiles(roots: list[str], home: str, config: str | None = None) -> list[tuple[str, str, str]]:
    """(name, description, defined in) for `stockade profiles`."""
    layers = [
        layer
        for path, required in config_files(roots, home, config)
        if (layer := read_layer(path, required=required)) is not None
    ]
    out = []
    for name, file in available(layers).items():
        out.append((name, resolve(name, layers).description, file))
    return out


__all__ = ["Overrides", "list_profiles", "load_profile"]
