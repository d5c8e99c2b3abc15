#!/usr/bin/env bash
# The Linux enforcement checks, on a real Mac, through stockade's Seatbelt backend (experimental).
# Run from a checkout after `pip install -e .`:  bash scripts/smoke-macos.sh
# Prints one line per check and a summary: "smoke-macos: N passed, M failed".
set -u
[ "$(uname -s)" = Darwin ] || { echo "smoke-macos: run this on macOS" >&2; exit 2; }
ws=$(mktemp -d "${TMPDIR:-/tmp}/stockade-smoke.XXXXXX")
outside=$(mktemp -d "${TMPDIR:-/tmp}/stockade-outside.XXXXXX")
trap 'rm -rf "$ws" "$outside"' EXIT
cd "$ws" || exit 2
git init -q . && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m init
echo "TOKEN=hunter2" > .env
passed=0; failed=0
check() {  # check NAME EXPECT(ok|blocked) SHELL-SCRIPT
  if python3 -m stockade run --backend seatbelt -- /bin/sh -c "$3" >/dev/null 2>&1; then got=ok; else got=blocked; fi
  if [ "$got" = "$2" ]; then passed=$((passed + 1)); echo "pass  $1 ($got)"
  else failed=$((failed + 1)); echo "FAIL  $1 (expected $2, got $got)"; fi
}
check "write in the workspace"          ok      'echo hi > new.txt && test -s new.txt'
check "os.replace across directories"   ok      'mkdir -p a b && echo x > a/f && python3 -c "import os; os.replace(\"a/f\", \"b/f\")"'
check "sqlite database"                 ok      'python3 -c "import sqlite3; c = sqlite3.connect(\"db.sqlite\"); c.execute(\"create table t(x)\"); c.commit()"'
check "git commit"                      ok      'git -c user.name=t -c user.email=t@t commit -q --allow-empty -m inside'
check "tempfile"                        ok      'python3 -c "import tempfile; tempfile.NamedTemporaryFile().write(b\"x\")"'
check "write outside the workspace"     blocked "echo x > '$outside/escaped'"
check "write in home"                   blocked 'echo x > "$HOME/.stockade-smoke"'
check "rewrite .git/config"             blocked 'echo "[x]" >> .git/config'
check "plant a git hook"                blocked 'echo "#!/bin/sh" > .git/hooks/pre-commit'
check "read .env"                       blocked 'cat .env'
check "read an ssh key"                 blocked 'cat "$HOME"/.ssh/id_* 2>/dev/null | head -c1 | grep -q .'
check "network is off"                  blocked 'python3 -c "import socket; socket.create_connection((\"1.1.1.1\", 443), timeout=3)"'
echo "smoke-macos: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
