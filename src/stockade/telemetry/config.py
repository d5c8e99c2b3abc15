"""`[telemetry]` and `[audit]` config tables, plus the standard `OTEL_*` variables, validated.

Everything is checked here, at config load, before any OpenTelemetry object exists: a bad
tracestate key or value is a ConfigError naming `telemetry.tracestate.MEMBER.FIELD`, never a
malformed header on the wire. Layering follows the profiles: later files win key by key
(`span_attributes` and `tracestate` merge by name). The `OTEL_*` variables fill in what the
files leave unset; `OTEL_SDK_DISABLED=true` turns tracing off whatever the files say.

A project config (`<root>/.stockade/config.toml`, from the checkout) may only add
`span_attributes` and `tracestate`: it cannot turn tracing on, choose where spans go, record
argv, or name an audit file, since a checkout must not decide where facts about this machine
are sent or which file gets appended to.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from . import tracestate as ts
from .audit import AuditConfig, audit_path

AttrValue = str | int | float | bool
Exporter = Literal["otlp", "console", "none"]
EXPORTERS: tuple[str, ...] = ("otlp", "console", "none")
TELEMETRY_KEYS = ("enabled", "exporter", "endpoint", "span_attributes", "tracestate", "record_argv")
AUDIT_KEYS = ("path", "record_argv")
PROJECT_KEYS = ("span_attributes", "tracestate")  # all a checkout's own config may set
DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
TRACES_PATH = "/v1/traces"
USER_CONFIG = "~/.config/stockade/config.toml"
# Attributes stockade sets itself: a static attribute must not overwrite them.
OWN_ATTRIBUTES = (
    "process.executable.name",
    "process.args_count",
    "process.command_args",
    "process.exit.code",
)


@dataclass(frozen=True)
class TelemetryConfig:
    """Validated tracing settings; build with `load` or `from_tables`, which check everything."""

    enabled: bool = True
    exporter: Exporter = "otlp"
    endpoint: str = DEFAULT_ENDPOINT  # the full OTLP/HTTP traces URL
    span_attributes: tuple[tuple[str, AttrValue], ...] = ()
    tracestate: tuple[ts.Member, ...] = ()
    record_argv: bool = False
    service_name: str = "stockade"
    resource_attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LayerSettings:
    """What one file's `[telemetry]` and `[audit]` tables set (validated, only keys present)."""

    file: str
    telemetry: Mapping[str, Any] | None
    audit: Mapping[str, Any] | None


def _invalid(what: str, word: str, valid: tuple[str, ...], file: str, key: str) -> ConfigError:
    from ..policy.load import _suggest  # only on the error path

    return ConfigError(f"{what}; {_suggest(word, valid)}", file=file, key=key)


def _bool(value: Any, file: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError("must be true or false", file=file, key=key)
    return value


def _endpoint(value: Any, file: str | None, key: str, *, base: bool) -> str:
    """An http(s) URL; a base URL (OTEL_EXPORTER_OTLP_ENDPOINT's meaning) gets `/v1/traces`."""
    if not isinstance(value, str) or not value:
        raise ConfigError('must be a URL such as "http://collector:4318"', file=file, key=key)
    bad = ts.char_problem(value, " ")
    if bad:
        raise ConfigError(f"the URL {bad}", file=file, key=key)
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ConfigError(f"not a valid URL: {exc}", file=file, key=key) from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{value!r}: must be an http:// or https:// URL with a host", file=file, key=key)
    if url.username is not None or url.password is not None:
        raise ConfigError(
            "credentials do not belong in the URL; set OTEL_EXPORTER_OTLP_HEADERS", file=file, key=key
        )
    if base and not url.path.rstrip("/").endswith(TRACES_PATH):
        return value.rstrip("/") + TRACES_PATH
    return value


def _attributes(value: Any, file: str, key: str) -> dict[str, AttrValue]:
    if not isinstance(value, dict):
        raise ConfigError('must be a table, e.g. span_attributes = { team = "infra" }', file=file, key=key)
    out: dict[str, AttrValue] = {}
    for name, val in value.items():
        sub = f"{key}.{name}"
        if not name or ts.char_problem(name, ""):
            raise ConfigError("an attribute name must be printable ASCII", file=file, key=sub)
        if name.startswith("stockade.") or name in OWN_ATTRIBUTES:
            raise ConfigError("stockade sets this attribute itself; choose another name", file=file, key=sub)
        if isinstance(val, int) and not isinstance(val, bool) and not -(2**63) <= val < 2**63:
            raise ConfigError("integers must fit in 64 bits", file=file, key=sub)
        if isinstance(val, float) and not math.isfinite(val):
            raise ConfigError("must be a finite number", file=file, key=sub)
        if not isinstance(val, str | int | float | bool):
            raise ConfigError("must be a string, number or boolean", file=file, key=sub)
        out[name] = val
    return out


def _tracestate(value: Any, file: str, key: str) -> dict[str, dict[str, str]]:
    """member -> {field: value}, each checked against the W3C grammar and the field syntax."""
    if not isinstance(value, dict):
        raise ConfigError(
            'must be a table of members: [telemetry.tracestate.acme] s = "1"', file=file, key=key
        )
    out: dict[str, dict[str, str]] = {}
    for name, fields in value.items():
        try:
            out[name] = dict(ts.member(name, fields).fields)
        except ts.MemberError as exc:
            sub = f"{key}.{name}" + (f".{exc.field}" if exc.field is not None else "")
            raise ConfigError(str(exc), file=file, key=sub) from None
    return out


def parse_tables(file: str, telemetry: Any, audit: Any) -> LayerSettings:
    """Validate one file's tables (called by the config loader for every layer)."""
    tel: dict[str, Any] | None = None
    if telemetry is not None:
        if not isinstance(telemetry, dict):
            raise ConfigError("must be a table: [telemetry]", file=file, key="telemetry")
        tel = {}
        for key, value in telemetry.items():
            where = f"telemetry.{key}"
            if key not in TELEMETRY_KEYS:
                raise _invalid("unknown key", key, TELEMETRY_KEYS, file, where)
            if key in ("enabled", "record_argv"):
                tel[key] = _bool(value, file, where)
            elif key == "exporter":
                if value not in EXPORTERS:
                    raise _invalid(f"invalid exporter {value!r}", str(value), EXPORTERS, file, where)
                tel[key] = value
            elif key == "endpoint":
                tel[key] = _endpoint(value, file, where, base=True)
            elif key == "span_attributes":
                tel[key] = _attributes(value, file, where)
            else:
                tel[key] = _tracestate(value, file, where)
    aud: dict[str, Any] | None = None
    if audit is not None:
        if not isinstance(audit, dict):
            raise ConfigError("must be a table: [audit]", file=file, key="audit")
        aud = {}
        for key, value in audit.items():
            if key not in AUDIT_KEYS:
                raise _invalid("unknown key", key, AUDIT_KEYS, file, f"audit.{key}")
            if key == "record_argv":
                aud[key] = _bool(value, file, "audit.record_argv")
            else:
                aud[key] = audit_path(value, file, "audit.path")
    return LayerSettings(file, tel, aud)


def resolve(
    layers: Sequence[LayerSettings],
    *,
    environ: Mapping[str, str] | None = None,
    untrusted: Collection[str] = (),
    audit_file: str | None = None,
) -> tuple[TelemetryConfig | None, AuditConfig | None]:
    """Merge layers (later wins), apply `OTEL_*`; `untrusted` files are project configs."""
    env = os.environ if environ is None else environ
    tel: dict[str, Any] = {"span_attributes": {}, "tracestate": {}}
    aud: dict[str, Any] = {}
    on = False  # only a trusted file's [telemetry] turns tracing on
    for layer in layers:
        project = layer.file in untrusted
        for key, value in (layer.telemetry or {}).items():
            if project and key not in PROJECT_KEYS:
                why = "a project config can only add span_attributes and tracestate"
                raise ConfigError(
                    f"{why}; set this in {USER_CONFIG} or a --config file",
                    file=layer.file,
                    key=f"telemetry.{key}",
                )
            if key == "tracestate":
                for member, fields in value.items():
                    tel[key][member] = {**tel[key].get(member, {}), **fields}
                    _check_member(member, tel[key][member], layer.file)
            else:
                tel[key] = {**tel[key], **value} if key == "span_attributes" else value
        on = on or (layer.telemetry is not None and not project)
        if layer.audit is not None and project:
            raise ConfigError(
                f"a project config cannot name an audit file; set it in {USER_CONFIG}",
                file=layer.file,
                key="audit",
            )
        aud.update(layer.audit or {})
        if len(tel["tracestate"]) > ts.MAX_MEMBERS:
            why = f"{len(tel['tracestate'])} members; W3C allows at most {ts.MAX_MEMBERS}"
            raise ConfigError(why, file=layer.file, key="telemetry.tracestate")
    if audit_file is not None:
        aud["path"] = audit_path(audit_file, None, "--audit")
    if aud and "path" not in aud:
        where = next(layer.file for layer in reversed(layers) if layer.audit is not None)
        raise ConfigError("an [audit] table needs path = FILE", file=where, key="audit.path")
    audit = AuditConfig(aud["path"], aud.get("record_argv", False)) if aud else None
    if not on or not tel.get("enabled", True) or _env_bool(env, "OTEL_SDK_DISABLED"):
        return None, audit
    exporter = tel.get("exporter") or _env_exporter(env)
    if "endpoint" in tel and exporter != "otlp":
        where = next(ly.file for ly in reversed(layers) if "endpoint" in (ly.telemetry or {}))
        raise ConfigError(
            f'applies only to exporter = "otlp", not {exporter!r}', file=where, key="telemetry.endpoint"
        )
    resource = _resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    service = env.get("OTEL_SERVICE_NAME", "").strip() or resource.get("service.name") or "stockade"
    resource.pop("service.name", None)
    return TelemetryConfig(
        exporter=exporter,
        endpoint=tel.get("endpoint") or (_env_endpoint(env) if exporter == "otlp" else DEFAULT_ENDPOINT),
        span_attributes=tuple(tel["span_attributes"].items()),
        tracestate=tuple(ts.Member(k, tuple(f.items())) for k, f in tel["tracestate"].items()),
        record_argv=tel.get("record_argv", False),
        service_name=service,
        resource_attributes=tuple(resource.items()),
    ), audit


def _check_member(member: str, fields: dict[str, str], file: str) -> None:
    """Fields merged from several files must still fit in one member value."""
    problem = ts.check_value(ts.Member(member, tuple(fields.items())).value)
    if problem:
        raise ConfigError(f"the merged value {problem}", file=file, key=f"telemetry.tracestate.{member}")


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "true", "false"):
        raise ConfigError(f"{env[name]!r}: must be true or false", key=name)
    return raw == "true"


def _env_exporter(env: Mapping[str, str]) -> Exporter:
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"
    if exporter not in EXPORTERS:
        raise ConfigError(
            f"{exporter!r}: stockade supports {', '.join(EXPORTERS)}", key="OTEL_TRACES_EXPORTER"
        )
    return exporter  # type: ignore[return-value]


def _env_endpoint(env: Mapping[str, str]) -> str:
    """OTLP/HTTP over protobuf only: a grpc setting would otherwise fail silently at export."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ConfigError(f"{protocol!r}: stockade exports OTLP over http/protobuf only", key=name)
    for name, base in (("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", False), ("OTEL_EXPORTER_OTLP_ENDPOINT", True)):
        if env.get(name):
            return _endpoint(env[name], None, name, base=base)
    return DEFAULT_ENDPOINT


def _resource_attributes(raw: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES: `key=value,...`, values percent-encoded (W3C Baggage octets)."""
    out: dict[str, str] = {}
    for item in filter(str.strip, raw.split(",")):
        key, eq, value = (part.strip() for part in item.partition("="))
        try:
            decoded = unquote(value, errors="strict")
        except UnicodeDecodeError:
            decoded = None
        if not eq or not key or ts.char_problem(key, " ") or decoded is None or ts.char_problem(decoded, ""):
            why = "expected key=value, printable ASCII, the value percent-encoded"
            raise ConfigError(f"{item.strip()!r}: {why}", key="OTEL_RESOURCE_ATTRIBUTES")
        out[key] = decoded
    return out


def from_tables(
    telemetry: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    *,
    file: str = "<api>",
    environ: Mapping[str, str] | None = None,
) -> tuple[TelemetryConfig | None, AuditConfig | None]:
    """Validate tables given in code (the Python API) exactly as a config file's."""
    layer = parse_tables(
        file, dict(telemetry) if telemetry is not None else None, dict(audit) if audit is not None else None
    )
    return resolve([layer], environ=environ)


def load(
    *,
    roots: Sequence[str],
    home: str,
    config: str | None = None,
    audit_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[TelemetryConfig | None, AuditConfig | None]:
    """Telemetry and audit settings from the same config files as the profile (cached reads)."""
    from ..policy.load import config_files, read_layer

    layers = []
    for path, required in config_files(list(roots), home, config):
        layer = read_layer(path, required=required)
        if layer is not None and layer.telemetry is not None:
            layers.append(layer.telemetry)
    project = {os.path.join(root, ".stockade", "config.toml") for root in roots}
    if config:
        project.discard(os.path.abspath(config))  # named on the command line: the user chose it
    return resolve(layers, environ=environ, untrusted=project, audit_file=audit_file)


__all__ = [
    "AuditConfig",
    "LayerSettings",
    "TelemetryConfig",
    "from_tables",
    "load",
    "parse_tables",
    "resolve",
]
