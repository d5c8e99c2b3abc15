#!/usr/bin/env bash
# stockade's Seatbelt backend on a real Mac (experimental): the allow/deny checks of the Linux
# enforcement tests, plus what only a path-based sandbox can get wrong (renames, hard links,
# case-insensitive names, firmlinks, odd characters in a profile string).
#
#   pip install -e . && bash scripts/smoke-macos.sh
#
# STOCKADE_SMOKE_RUN says how to run a command sandboxed; policy flags (--profile, --deny) and
# then `-- COMMAND` are appended. Default: "python3 -m stockade run --backend seatbelt".
# One line per check, then "smoke-macos: N passed, M failed" (exit 1 if any failed). A check
# whose premise this Mac lacks (no ssh key, no network) is skipped and says so.
set -u
[ "$(uname -s)" = Darwin ] || { echo "smoke-macos: run this on macOS" >&2; exit 2; }
read -r -a RUN <<<"${STOCKADE_SMOKE_RUN:-python3 -m stockade run --backend seatbelt}"

ws=$(mktemp -d "${TMPDIR:-/tmp}/stockade-smoke.XXXXXX") && cd "$ws" && ws=$(pwd -P) || exit 2
outside=$(mktemp -d "$HOME/.stockade-smoke-outside.XXXXXX") || exit 2
trap 'cd /; rm -rf "$ws" "$ws-moved" "$outside"' EXIT
git init -q . && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m init || exit 2
echo "TOKEN=hunter2" >.env
odd=$'we"ird (dir);\\x\nline'  # quote, parentheses, semicolon, backslash, newline
mkdir -p "$odd" open && echo secret >"$odd/f" && echo fine >open/f
export STOCKADE_SMOKE_ODD="$ws/$odd"
passed=0 failed=0 skipped=0

# check NAME EXPECT(ok|blocked) SCRIPT [policy flags...]
check() {
  local name=$1 want=$2 script=$3 got
  shift 3
  if "${RUN[@]}" "$@" -- /bin/sh -c "$script" >/dev/null 2>&1; then got=ok; else got=blocked; fi
  if [ "$got" = "$want" ]; then
    passed=$((passed + 1)) && echo "pass  $name ($got)"
  else
    failed=$((failed + 1)) && echo "FAIL  $name (expected $want, got $got)"
  fi
}
skip() { skipped=$((skipped + 1)) && echo "skip  $1"; }

# Allowed: what real tools do inside a workspace.
check "the profile loads and a command runs" ok 'true'
check "write in the workspace" ok 'echo hi > new.txt && test -s new.txt'
check "os.replace across directories" ok \
  'mkdir -p a b && echo x > a/f && python3 -c "import os; os.replace(\"a/f\", \"b/f\")"'
check "sqlite database with a journal" ok \
  'python3 -c "import sqlite3; c = sqlite3.connect(\"db.sqlite\"); c.execute(\"create table t(x)\"); c.commit()"'
check "git add and commit (via /usr/bin/git)" ok \
  'echo data > tracked && git add tracked && git -c user.name=t -c user.email=t@t commit -q -m inside'
check "tempfile in TMPDIR" ok 'python3 -c "import tempfile; tempfile.NamedTemporaryFile().write(b\"x\")"'
check "write in /tmp" ok 'echo x > /tmp/stockade-smoke-$$ && rm /tmp/stockade-smoke-$$'
check "run a script made in the workspace" ok 'printf "#!/bin/sh\necho hi\n" > s.sh && chmod +x s.sh && ./s.sh'
check ".env.example stays readable" ok 'echo EXAMPLE=1 > .env.example && cat .env.example'

# Denied: writes outside, protected metadata, secrets.
check "write outside the workspace" blocked "echo x > '$outside/escaped'"
check "write in home" blocked 'echo x > "$HOME/.stockade-smoke-escaped"'
rm -f "$HOME/.stockade-smoke-escaped"
check "open .git/config for writing" blocked ': >> .git/config'
check "plant a git hook" blocked 'echo "#!/bin/sh" > .git/hooks/pre-commit'
rm -f .git/hooks/pre-commit
check "create .stockade (policy of the next run)" blocked 'mkdir -p .stockade && echo x > .stockade/config.toml'
check "rename .git away" blocked 'mv .git .git-moved'
[ -d .git-moved ] && mv .git-moved .git
check "rename the workspace away" blocked "mv '$ws' '$ws-moved'"
[ -d "$ws-moved" ] && mv "$ws-moved" "$ws"
check "read .env" blocked 'cat .env'
check "create a .env" blocked 'mkdir -p sub && echo x > sub/.env'
(sleep 1 && mkdir -p late && echo LATE=1 >late/.env) &
check "read a .env made after launch" blocked 'sleep 3 && cat late/.env'
wait
check "hard link to .env, then read it" blocked 'ln .env hl && cat hl'
rm -f hl
check "hard link to .git/config, then write it" blocked 'ln .git/config cl && : >> cl'
rm -f cl
if [ -e .ENV ]; then  # a case-insensitive volume (the default)
  check "read .ENV (case variant)" blocked 'cat .ENV'
  check "write .GIT/CONFIG (case variant)" blocked ': >> .GIT/CONFIG'
else
  skip "case variants: this volume is case-sensitive"
fi
check "read a path with odd characters, denied" blocked 'cat "$STOCKADE_SMOKE_ODD/f"' --deny "$ws/$odd"
check "its sibling stays readable" ok 'cat open/f' --deny "$ws/$odd"
key=$(ls "$HOME"/.ssh/id_* 2>/dev/null | head -n 1)
if [ -n "$key" ]; then
  check "read an ssh key" blocked "cat '$key'"
  check "read an ssh key through the Data volume" blocked "cat '/System/Volumes/Data$key'"
else
  skip "ssh key: no ~/.ssh/id_* here"
fi
if [ -f "$HOME/.ssh/known_hosts" ]; then
  check "known_hosts stays readable" ok 'cat "$HOME/.ssh/known_hosts"'
else
  skip "known_hosts: none here"
fi
check "signal a process outside" blocked "kill -0 $$"

# Network off: no connection, no name resolution, no host sockets.
if python3 -c 'import socket; socket.create_connection(("1.1.1.1", 443), timeout=3)' 2>/dev/null; then
  check "connect out (network off)" blocked \
    'python3 -c "import socket; socket.create_connection((\"1.1.1.1\", 443), timeout=3)"'
  check "resolve a name (network off)" blocked 'python3 -c "import socket; socket.getaddrinfo(\"example.com\", 443)"'
  # Proxy mode: the filtering proxy on a loopback port is the only way out.
  proxy=(--network proxy --allow-domain pypi.org)
  check "proxy: an allowed host" ok 'curl -fsS -o /dev/null https://pypi.org/simple/' "${proxy[@]}"
  check "proxy: a host not allowed" blocked 'curl -fsS -o /dev/null https://example.com/' "${proxy[@]}"
  check "proxy: around the proxy" blocked \
    'curl -fsS --noproxy "*" -o /dev/null https://pypi.org/simple/' "${proxy[@]}"
  python3 -m http.server --bind 127.0.0.1 47811 >/dev/null 2>&1 &  # a host service on loopback
  server=$!
  sleep 1
  check "proxy: a loopback service of the host" blocked \
    'python3 -c "import socket; socket.create_connection((\"127.0.0.1\", 47811), timeout=3)"' "${proxy[@]}"
  check "  (it is reachable unsandboxed)" ok \
    'python3 -c "import socket; socket.create_connection((\"127.0.0.1\", 47811), timeout=3)"' --profile full-access
  kill "$server" 2>/dev/null
else
  skip "network: this Mac cannot connect out unsandboxed"
fi
if [ -S "${SSH_AUTH_SOCK:-}" ]; then
  check "reach ssh-agent's socket" blocked \
    "python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('$SSH_AUTH_SOCK')\""
else
  skip "ssh-agent: no SSH_AUTH_SOCK"
fi

# read-only: a private TMPDIR, nothing else writable.
check "read-only: write TMPDIR" ok 'echo x > "$TMPDIR/f" && test -s "$TMPDIR/f"' --profile read-only
check "read-only: write the workspace" blocked 'echo x > ro.txt' --profile read-only

echo "skipped: $skipped"
echo "smoke-macos: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
