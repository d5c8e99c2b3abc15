"""The audit trail: one JSON line per command or session, for people who just want a file.

Each line is appended with O_APPEND in a single write(2), so lines from concurrent stockade
processes do not interleave (on local Linux filesystems a write to a regular file holds the
inode lock; NFS gives no such promise). The file is opened per line, so it can be rotated
under a running session. A line holds the same facts as the span; never the environment, and
argv only with `record_argv`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, StockadeError

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)  # none on Windows


@dataclass(frozen=True)
class AuditConfig:
    path: str  # absolute
    record_argv: bool = False


def audit_path(value: Any, file: str | None, key: str) -> str:
    """An absolute path or `~/...`; a relative one would depend on where stockade was started."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(
            'must be a file path, e.g. "~/.local/state/stockade/audit.jsonl"', file=file, key=key
        )
    path = os.path.expanduser(value) if value == "~" or value.startswith("~/") else value
    if not os.path.isabs(path):
        raise ConfigError(f"{value!r}: must be an absolute path or ~/...", file=file, key=key)
    return os.path.normpath(path)


class AuditLog:
    """Appends records to the configured file (created 0600: it may name what ran)."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.path = config.path

    def check(self) -> None:
        """Open the file once now, so a bad path stops the command before it runs (fail closed)."""
        try:
            os.close(os.open(self.path, _FLAGS, 0o600))
        except OSError as exc:
            raise StockadeError(f"audit file {self.path}: {exc.strerror}") from None

    def write(self, line: Mapping[str, Any]) -> None:
        """Append one line. A failure is reported on stderr: the command has already run."""
        import json  # only when a line is written

        data = (json.dumps(line, ensure_ascii=True, separators=(",", ":"), default=str) + "\n").encode()
        try:
            fd = os.open(self.path, _FLAGS, 0o600)
            try:
                written = os.write(fd, data)
                while written < len(data):  # only on a full disk or a signal; finish the line
                    written += os.write(fd, data[written:])
            finally:
                os.close(fd)
        except OSError as exc:
            print(f"stockade: audit file {self.path}: {exc.strerror}; this line was lost", file=sys.stderr)


def record(
    kind: str,
    started: float,
    facts: Mapping[str, Any],
    outcome: Mapping[str, Any],
    argv: list[str] | None,
    denied: list[dict[str, Any]],
    events: dict[str, int],
) -> dict[str, Any]:
    """One audit line: the span's facts and outcome; argv only when given (opted in)."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line: dict[str, Any] = {"time": when, "kind": kind, **facts}
    if argv is not None:
        line["argv"] = argv
    line.update(outcome)
    if denied:
        line["denied"] = denied
    if events:
        line["events"] = events
    return line


def _printable(text: str, limit: int = 200) -> str:
    """Control characters escaped: a rule or host name must not drive the user's terminal."""
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def stderr_hint(what: str, rule: str, reason: str, profile: str) -> str:
    """The one line `stockade run` prints per thing the sandbox refused (and could see)."""
    where = f"{_printable(reason, 120)}; profile {_printable(profile, 80)}"
    return f"stockade: blocked {_printable(what)} by rule `{_printable(rule)}` ({where})"


def policy_hash(plan: Any) -> str:
    """A short, stable digest of what a Plan enforces (not its environment), to group commands.

    Takes a Plan (a dataclass) or its JSON mapping. `env`, `withheld` and `notes` are left out:
    they change from run to run and the environment may hold secrets. A Plan is hashed through
    the repr of its frozen fields (deterministic, and about ten times cheaper than its JSON).
    """
    import dataclasses
    import hashlib

    left_out = ("env", "withheld", "notes")
    if dataclasses.is_dataclass(plan):
        kept = [(f.name, getattr(plan, f.name)) for f in dataclasses.fields(plan) if f.name not in left_out]
        text = repr(kept)
    else:
        import json

        data = {k: v for k, v in dict(plan).items() if k not in left_out}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["AuditConfig", "AuditLog", "audit_path", "policy_hash", "record", "stderr_hint"]
