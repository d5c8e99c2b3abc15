"""W3C trace context: `traceparent` and `tracestate`, parsed strictly and upserted safely.

A tracestate header is a list of `key=value` members. Vendors keep several sub-fields inside
one member value (`dd=s:1;o:rum`, OpenTelemetry's own `ot=th:8;rv:..`); stockade models a
member the same way: its value is `;`-separated parts, and a part `name:value` is a *field*.
Parts without a `:` are opaque and kept as they are. Upserting a configured member replaces
the fields it names, keeps every other part the caller propagated, and moves the member to the
front (W3C: a vendor that updates its member puts it first). Nothing this module emits can be a
malformed header: every key and value is checked against the W3C grammar, and an incoming
header that does not parse is dropped whole rather than forwarded half-understood.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_MEMBERS = 32
MAX_VALUE = 256
_KEY_CHARS = r"[a-z0-9_\-*/]"
SIMPLE_KEY = re.compile(rf"[a-z]{_KEY_CHARS}{{0,255}}")
TENANT_KEY = re.compile(rf"[a-z0-9]{_KEY_CHARS}{{0,240}}@[a-z]{_KEY_CHARS}{{0,13}}")
# value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
# A field value: printable, no space, and none of `,` `=` (tracestate) or `;` (the part separator).
FIELD_VALUE = re.compile(r"[\x21-\x2b\x2d-\x3a\x3c\x3e-\x7e]+")
TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
OWS = " \t"

Pairs = list[tuple[str, str]]


def char_problem(text: str, extra: str) -> str | None:
    """Name the first character that may not appear, so the error says what to fix."""
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F:
            return f"has a control character (0x{code:02x})"
        if code > 0x7E:
            return f"has a non-ASCII character {ch!r}"
        if ch in extra:
            return f"contains {ch!r}"
    return None


def check_key(key: str) -> str | None:
    """Why `key` is not a W3C tracestate key (simple, or multi-tenant `tenant@system`), or None."""
    if SIMPLE_KEY.fullmatch(key) or TENANT_KEY.fullmatch(key):
        return None
    if not key:
        return "is empty"
    bad = char_problem(key, ",= ")
    if bad:
        return bad
    if "@" in key:
        return (
            "is not a valid multi-tenant key `tenant@system`: tenant 1-241 and system 1-14 of "
            "a-z 0-9 _ - * /, the system starting with a letter"
        )
    return "must start with a-z and hold only a-z 0-9 _ - * / (at most 256 characters)"


def check_value(value: str) -> str | None:
    """Why `value` is not a W3C tracestate member value, or None."""
    if VALUE.fullmatch(value):
        return None
    if not value:
        return "is empty"
    bad = char_problem(value, ",=")
    if bad:
        return bad
    if len(value) > MAX_VALUE:
        return f"is {len(value)} characters long; at most {MAX_VALUE}"
    return "ends with a space"


def check_field_name(name: str) -> str | None:
    if FIELD_NAME.fullmatch(name):
        return None
    return (
        char_problem(name, ",=;: ") or "must be 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)"
    )


def check_field_value(value: str) -> str | None:
    if FIELD_VALUE.fullmatch(value):
        return None
    if not value:
        return "is empty"
    return char_problem(value, ",=; ") or "is not a valid field value"


@dataclass(frozen=True)
class Member:
    """A configured member: its key and the fields to upsert inside its value, in order."""

    key: str
    fields: tuple[tuple[str, str], ...]

    @property
    def value(self) -> str:
        return ";".join(f"{name}:{value}" for name, value in self.fields)


class MemberError(ValueError):
    """A configured member that cannot be sent: `field` names the field at fault, if one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def member(key: str, fields: Mapping[str, object]) -> Member:
    """A configured member, checked whole: key, field names and values, and the value's length."""
    problem = check_key(key)
    if problem:
        raise MemberError(f"invalid tracestate key {key!r}: {problem}")
    if not isinstance(fields, Mapping) or not fields:
        raise MemberError('must be a table of fields, e.g. { s = "1" }')
    checked: list[tuple[str, str]] = []
    for name, raw in fields.items():
        problem = check_field_name(name)
        if problem:
            raise MemberError(f"invalid field name {name!r}: {problem}", name)
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise MemberError("must be a string (or an integer)", name)
        problem = check_field_value(str(raw))
        if problem:
            raise MemberError(f"invalid field value {str(raw)!r}: {problem}", name)
        checked.append((name, str(raw)))
        length = len(Member(key, tuple(checked)).value)
        if length > MAX_VALUE:
            raise MemberError(
                f"makes the member's value {length} characters long; W3C allows {MAX_VALUE}", name
            )
    return Member(key, tuple(checked))


def _field_name(part: str) -> str | None:
    name, colon, _ = part.partition(":")
    return name if colon else None


def merge_member(existing: str | None, member: Member) -> str:
    """The member's new value: configured fields replace theirs in place, the rest are kept.

    Fields the caller propagated are dropped from the end only if the value would otherwise
    exceed 256 characters (the configured fields alone were checked to fit at config load).
    """
    wanted = dict(member.fields)
    parts: list[str] = []
    kept: list[int] = []  # indexes of parts that came from the caller, droppable
    done: set[str] = set()
    for part in existing.split(";") if existing else ():
        name = _field_name(part)
        if name in wanted:
            if name not in done:
                parts.append(f"{name}:{wanted[name]}")
                done.add(name)
        elif part:
            kept.append(len(parts))
            parts.append(part)
    parts += [f"{name}:{value}" for name, value in member.fields if name not in done]
    value = ";".join(parts)
    while len(value) > MAX_VALUE and kept:
        del parts[kept.pop()]
        value = ";".join(parts)
    return value


def parse(header: str | None) -> Pairs:
    """Members of an incoming tracestate; [] when absent or invalid (never forward a bad header)."""
    if not header:
        return []
    members: Pairs = []
    seen: set[str] = set()
    for raw in header.split(","):
        item = raw.strip(OWS)
        if not item:
            continue  # empty list members are allowed and skipped
        key, eq, value = item.partition("=")
        if not eq or check_key(key) or check_value(value) or key in seen:
            return []
        seen.add(key)
        members.append((key, value))
    return members if len(members) <= MAX_MEMBERS else []


def upsert(members: Sequence[tuple[str, str]], configured: Sequence[Member]) -> Pairs:
    """Configured members first (updated in place of the caller's), then the caller's others.

    Beyond 32 members the rightmost ones are dropped, as W3C recommends.
    """
    if not configured:
        return list(members)
    theirs = dict(members)
    ours = [(m.key, merge_member(theirs.get(m.key), m)) for m in configured]
    names = {m.key for m in configured}
    rest = [(k, v) for k, v in members if k not in names]
    return (ours + rest)[:MAX_MEMBERS]


def format_header(members: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{key}={value}" for key, value in members)


def parse_traceparent(header: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid `traceparent`, else None.

    Version 00 must be exactly 55 characters; a later version may carry more after a `-`.
    An all-zero trace or span id, version ff or upper-case hex makes it invalid.
    """
    if not header:
        return None
    text = header.strip(OWS)
    match = TRACEPARENT.match(text)
    if not match:
        return None
    version, trace, span, flags = match.groups()
    if version == "ff" or (version == "00" and len(text) != 55) or (len(text) > 55 and text[55] != "-"):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags, 16)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"


__all__ = [
    "MAX_MEMBERS",
    "MAX_VALUE",
    "Member",
    "MemberError",
    "char_problem",
    "check_field_name",
    "check_field_value",
    "check_key",
    "check_value",
    "format_header",
    "format_traceparent",
    "member",
    "merge_member",
    "parse",
    "parse_traceparent",
    "upsert",
]
