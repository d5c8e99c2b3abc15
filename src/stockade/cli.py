"""The `stockade` command: run, explain, doctor, profiles.

Exit status: the command's own; 128+N when it died of signal N (or stockade got signal N);
124 on --timeout; 2 when stockade refused to run it (bad input, or no sandbox possible).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from .errors import StockadeError

TIMEOUT_EXIT = 124


def _policy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="NAME", help="profile to use (default: from config, else workspace)")
    p.add_argument("--config", metavar="FILE", help="an extra config file, read last")
    p.add_argument(
        "--root", metavar="DIR", action="append", default=[], help="workspace root (repeatable; default: cwd)"
    )
    p.add_argument(
        "--writable", metavar="DIR", action="append", default=[], help="extra writable directory (repeatable)"
    )
    p.add_argument(
        "--read", metavar="DIR", action="append", default=[], help="extra readable path (repeatable)"
    )
    p.add_argument(
        "--deny",
        metavar="PATH_OR_GLOB",
        action="append",
        default=[],
        help="path or glob to hide (repeatable)",
    )
    p.add_argument(
        "--network",
        choices=("off", "proxy", "on"),
        help="network access (default: from the profile); proxy: only the allowed hosts",
    )
    p.add_argument(
        "--allow-domain",
        metavar="HOST",
        action="append",
        default=[],
        help="with --network proxy: a host the proxy lets through (pypi.org, *.example.com, host:443)",
    )
    p.add_argument(
        "--deny-domain",
        metavar="HOST",
        action="append",
        default=[],
        help="a host the proxy refuses (beats allow)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "bwrap", "landlock", "seatbelt", "windows"),
        help=(
            "auto (default): bubblewrap where it works, else Landlock; seatbelt: macOS, windows: "
            "Windows (both experimental)"
        ),
    )
    p.add_argument(
        "--env",
        metavar="NAME[=VALUE]",
        action="append",
        default=[],
        help="let a variable through, or set it (repeatable)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockade", description="Run commands in an OS sandbox under a policy."
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run a command in the sandbox", usage="stockade run [options] -- COMMAND [ARGS...]"
    )
    _policy_flags(run)
    run.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="kill the whole sandbox after this long"
    )
    run.add_argument(
        "--log-network", metavar="FILE", help="append every proxy decision to FILE, one JSON line each"
    )
    run.add_argument(
        "--audit", metavar="FILE", help="append one JSON line per command to FILE (see [audit] in config)"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    explain = sub.add_parser("explain", help="print the materialized Plan")
    _policy_flags(explain)
    explain.add_argument("--json", action="store_true", help="print the Plan as JSON")
    explain.add_argument(
        "--platform",
        choices=("linux", "macos", "windows"),
        default="linux",
        help="macos: the Seatbelt profile; windows: the ACL, SID and firewall plan (experimental)",
    )
    explain.add_argument(
        "--windows-backend",
        choices=("elevated", "restricted"),
        default="elevated",
        help="with --platform windows: which Windows backend to render for",
    )
    sub.add_parser("doctor", help="say whether this host can sandbox, and how to fix it").add_argument(
        "--json", action="store_true"
    )
    mcp = sub.add_parser("mcp", help="serve sandboxed sessions to an agent over MCP (stdio)")
    mcp.add_argument("--profile", metavar="NAME", help="the profile every session runs under (fixed)")
    mcp.add_argument("--config", metavar="FILE", help="an extra config file, read last")
    mcp.add_argument(
        "--root", metavar="DIR", action="append", default=[], help="a workspace root (default: cwd)"
    )
    mcp.add_argument(
        "--backend",
        choices=("auto", "bwrap", "landlock", "seatbelt", "windows"),
        help="as for run (default: auto)",
    )
    mcp.add_argument("--audit", metavar="FILE", help="append one JSON line per session to FILE")
    profiles = sub.add_parser("profiles", help="list the profiles available here")
    profiles.add_argument("--config", metavar="FILE")
    profiles.add_argument("--root", metavar="DIR", action="append", default=[])
    return parser


def _plan(args: argparse.Namespace) -> Any:
    from .exec import prepare

    return prepare(
        profile=args.profile,
        roots=args.root,
        writable=args.writable,
        read=args.read,
        deny=args.deny,
        network=args.network,
        env=args.env,
        config=args.config,
        backend=args.backend,
        allow_domains=args.allow_domain,
        deny_domains=args.deny_domain,
    )


HINTS = 5  # refusals named on stderr after a command; the rest are counted


def cmd_run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise StockadeError("no command given: stockade run [options] -- COMMAND [ARGS...]")
    if args.timeout is not None and args.timeout <= 0:
        raise StockadeError(f"--timeout: must be a positive number of seconds, not {args.timeout}")
    import subprocess

    from .exec import Sandboxed
    from .exec.process import recorder_for

    plan = _plan(args)
    recorder = recorder_for(plan, args.config, args.audit)
    got: list[int] = []
    running: list[Sandboxed] = []

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        for sandboxed in running:
            sandboxed.kill()

    # Installed before launch, so a signal that arrives while the sandbox starts is not lost.
    hangup = getattr(signal, "SIGHUP", signal.SIGTERM)  # Windows has no SIGHUP
    for sig in (signal.SIGINT, signal.SIGTERM, hangup):
        signal.signal(sig, on_signal)
    on_event = None
    if args.log_network:
        from .net.proxy import json_lines

        try:
            on_event = json_lines(open(args.log_network, "a"))  # noqa: SIM115 (open while it runs)
        except OSError as exc:
            raise StockadeError(f"--log-network {args.log_network}: {exc.strerror}") from None
    sandboxed = Sandboxed(plan, command, network_log=on_event, recorder=recorder, parent_env=os.environ)
    running.append(sandboxed)
    if got:
        sandboxed.kill()
    try:
        sandboxed.proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sandboxed.timed_out = True
        sandboxed.kill()
    code = sandboxed.finish()
    for denial in sandboxed.denials[:HINTS]:
        print(denial.hint(plan.profile), file=sys.stderr)
    if len(sandboxed.denials) > HINTS:
        print(f"stockade: ... and {len(sandboxed.denials) - HINTS} more refusals", file=sys.stderr)
    recorder.close()  # bounded: a collector that is down costs at most a few seconds
    if got:
        return 128 + got[0]
    if sandboxed.timed_out:
        print(f"stockade: timed out after {args.timeout:g}s; the sandbox was killed", file=sys.stderr)
        return TIMEOUT_EXIT
    return code


def render_plan(plan: Any, backend: str) -> str:
    lines = [
        f"profile   {plan.profile}" + ("   (NO SANDBOX)" if plan.unconfined else ""),
        f"backend   {backend}",
        f"cwd       {plan.cwd}",
        f"roots     {', '.join(plan.roots)}",
        f"network   {plan.network}" + _proxy_line(plan),
        f"TMPDIR    {plan.tmpdir}",
    ]
    if plan.limits.items():
        lines.append("limits: " + " ".join(f"{k}={v}" for k, v in plan.limits.items()))
    if plan.rules:
        width = max(len(r.path) for r in plan.rules)
        lines += ["", f"{'ACCESS':7} {'PATH':{width}}  WHY"]
        for r in plan.rules:
            access = "tmpfs" if r.kind == "scratch" else r.access
            extra = f" (via {r.lexical})" if r.lexical != r.path else ""
            pin = " [pinned]" if r.pinned else ""
            lines.append(f"{access:7} {r.path:{width}}  {r.reason}{extra}{pin}")
        lines.append("(any path under no entry is not visible inside)")
    if plan.placeholders:
        lines += ["", "created before launch if missing, so they cannot be created inside; removed after:"]
        lines += [f"  {p.path} ({p.kind})" for p in plan.placeholders]
    if plan.withheld:
        lines += ["", "environment withheld (let one through with --env NAME):"]
        lines += [f"  {name}: {why}" for name, why in sorted(plan.withheld.items())]
    if plan.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in plan.notes]
    return "\n".join(lines)


def _proxy_line(plan: Any) -> str:
    if plan.proxy is None:
        return ""
    allow = ", ".join(plan.proxy.allow) or "(nothing)"
    deny = f"; deny {', '.join(plan.proxy.deny)}" if plan.proxy.deny else ""
    local = "; local addresses allowed" if plan.proxy.allow_local_binding else ""
    return f" (allow {allow}{deny}{local})"


def _backend_line(plan: Any) -> str:
    """Which backend will run (and why), and what the other one would refuse."""
    if plan.unconfined:
        return "none: full-access runs unconfined"
    from .backends import select_backend

    try:
        chosen = select_backend(plan)
    except StockadeError as exc:
        return f"UNAVAILABLE: {exc}"
    line = chosen.describe() + ("" if plan.backend == "auto" else f" (asked for: {plan.backend})")
    try:
        chosen.check(plan)
    except StockadeError as exc:
        return f"{line}\n          REFUSED: {exc}"
    from .backends import llexec
    from .backends.landlock import MIN_ABI, kernel_abi, translate

    if chosen.name == "landlock":
        guarded = translate(plan, kernel_abi(), guard=llexec.launcher() is not None).guarded
        if guarded:
            line += f"\n          {len(guarded)} entr(ies) inside writable directories held by the guard"
    elif kernel_abi() >= MIN_ABI:
        try:
            translate(plan, kernel_abi(), guard=llexec.launcher() is not None)
            line += "\n          landlock could hold this Plan too"
        except StockadeError as exc:
            refused = "".join(f"\n            {r.strip()}" for r in str(exc).splitlines()[1:])
            line += "\n          landlock would refuse:" + refused
    return line


def cmd_explain(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if args.platform == "macos":
        from .backends.seatbelt import render

        print(";; the Plan materialized on this host, rendered for sandbox-exec -p (experimental)")
        print(render(plan, proxy_port=3128 if plan.network == "proxy" else None), end="")
        return 0
    if args.platform == "windows":
        return _explain_windows(plan, args)
    if args.json:
        import json

        data = plan.to_json()
        data["backend"] = _backend_line(plan)
        print(json.dumps(data, indent=2))
    else:
        print(render_plan(plan, _backend_line(plan)))
    return 0


def _explain_windows(plan: Any, args: argparse.Namespace) -> int:
    import json

    from .backends.windows import HostFs, SidStore, with_private_tmp
    from .backends.windows import render as render_windows

    state = SidStore(None)  # explain never writes the SID map
    ports = (3128,) if plan.network == "proxy" else ()
    plan = with_private_tmp(plan)  # a run gets a fresh directory in its place
    wp = render_windows(plan, backend=args.windows_backend, state=state, fs=HostFs(), proxy_ports=ports)
    if args.json:
        print(json.dumps(wp.to_json(), indent=2))
    else:
        print("# the Plan materialized on this host, as a Windows enforcement plan (experimental)")
        print(wp.describe(), end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from .doctor import diagnose

    report = diagnose()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0 if report.can_sandbox else 1


def cmd_profiles(args: argparse.Namespace) -> int:
    import os

    from .policy.load import list_profiles

    roots = [os.path.abspath(r) for r in args.root] or [os.getcwd()]
    for name, description, where in list_profiles(roots, os.path.expanduser("~"), args.config):
        print(f"{name:14} {description}  [{where}]")
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    if sys.platform == "win32":
        raise StockadeError("stockade mcp serves sessions, which are not available on Windows yet")
    try:
        from .mcp_server import serve
    except ImportError as exc:
        raise StockadeError(str(exc)) from None
    return serve(
        roots=args.root, profile=args.profile, config=args.config, backend=args.backend, audit=args.audit
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "explain": cmd_explain,
        "doctor": cmd_doctor,
        "profiles": cmd_profiles,
        "mcp": cmd_mcp,
    }[args.cmd]
    try:
        return handler(args)
    except StockadeError as exc:
        print(f"stockade: {exc}", file=sys.stderr)
        if args.cmd == "run":
            print("stockade: nothing was run", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
