# The Linux enforcement checks, on a real Windows box, through stockade's Windows backend (experimental).
# Run from a checkout after `pip install -e .`, in an elevated PowerShell for the elevated backend:
#   python -m stockade.backends.windows.apply --state "$env:LOCALAPPDATA\stockade\windows-sids.json" --setup stockade-offline
#   powershell -ExecutionPolicy Bypass -File scripts\smoke-windows.ps1 [-Mode elevated|restricted]
# Prints one line per check and a summary: "smoke-windows: N passed, M failed".
param([ValidateSet("elevated", "restricted")][string]$Mode = "elevated")
$ErrorActionPreference = "Continue"
if ($env:OS -ne "Windows_NT") { Write-Error "smoke-windows: run this on Windows"; exit 2 }

# Both under home, not under TEMP: the workspace profile makes the tmp directory writable.
$tag = [guid]::NewGuid().ToString("N").Substring(0, 8)
$ws = Join-Path $env:USERPROFILE "stockade-smoke-$tag"
$outside = Join-Path $env:USERPROFILE "stockade-outside-$tag"
New-Item -ItemType Directory -Path $ws, $outside | Out-Null
Push-Location $ws
git init -q . ; git -c user.name=t -c user.email=t@t commit -q --allow-empty -m init
Set-Content -Path .env -Value "TOKEN=hunter2"
New-Item -ItemType Directory -Path src | Out-Null
Set-Content -Path src\.ENV.local -Value "TOKEN=hunter2"  # NTFS ignores case: `**/.env.*` covers it

# One .cmd file through the one spawn path (Sandboxed) with the Windows backend; exits with its status.
$runner = @'
import sys
import stockade
from stockade.backends.windows import WindowsBackend
from stockade.exec.process import Sandboxed

script, mode, profile, config = sys.argv[1:5]
plan = stockade.explain(profile=profile, config=None if config == "-" else config)
with Sandboxed(plan, ["cmd.exe", "/d", "/c", script], backend=WindowsBackend(mode)) as run:
    sys.exit(run.finish())
'@
$runnerFile = Join-Path $outside "run.py"
Set-Content -Path $runnerFile -Value $runner
# The restricted backend refuses read denials and network = off (it cannot enforce them), so it is
# checked with a profile it can hold; that it refuses the workspace profile is a check of its own.
$config = Join-Path $outside "restricted.toml"
Set-Content -Path $config -Encoding ascii -Value @'
[profiles.smoke-restricted]
glob_scan_max_depth = 8

[profiles.smoke-restricted.filesystem]
":root" = "read"
":tmpdir" = "write"

[profiles.smoke-restricted.filesystem.":workspace_roots"]
"." = "write"

[profiles.smoke-restricted.network]
mode = "on"
'@
$proxyConfig = Join-Path $outside "proxy.toml"
Set-Content -Path $proxyConfig -Encoding ascii -Value @'
[profiles.smoke-proxy]
extends = "workspace"

[profiles.smoke-proxy.network]
mode = "proxy"
allow = ["pypi.org", "files.pythonhosted.org"]
'@
$smokeProfile, $smokeConfig = "workspace", "-"  # "-": no config file (PowerShell drops empty arguments)
if ($Mode -eq "restricted") { $smokeProfile, $smokeConfig = "smoke-restricted", $config }

# A loopback service on the host, which the offline account must not reach.
$listener = [Net.Sockets.TcpListener]::new([Net.IPAddress]::Loopback, 0)
$listener.Start()
$hostPort = $listener.LocalEndpoint.Port

$script:passed = 0; $script:failed = 0
function Check([string]$Name, [string]$Expect, [string]$Script) {
    $file = Join-Path $outside "check.cmd"  # a file, so no quoting passes through PowerShell
    Set-Content -Path $file -Value "@echo off`r`n$Script" -Encoding ascii
    python $runnerFile $file $Mode $smokeProfile $smokeConfig *> $null
    $got = if ($LASTEXITCODE -eq 0) { "ok" } else { "blocked" }
    if ($got -eq $Expect) { $script:passed++; Write-Output "pass  $Name ($got)" }
    else { $script:failed++; Write-Output "FAIL  $Name (expected $Expect, got $got)" }
}
function Py([string]$Code) { return "python -c `"$Code`"" }

Check "write in the workspace"          ok      "echo hi> new.txt && findstr hi new.txt"
Check "os.replace across directories"   ok      ("mkdir a b && echo x> a\f && " + (Py "import os; os.replace('a/f', 'b/f')"))
Check "replace a file in the root"      ok      ("echo 1> f && echo 2> f.tmp && " + (Py "import os; os.replace('f.tmp', 'f')"))
Check "sqlite database"                 ok      (Py "import sqlite3; c = sqlite3.connect('db.sqlite'); c.execute('create table t(x)'); c.commit()")
Check "git commit"                      ok      "git -c user.name=t -c user.email=t@t commit -q --allow-empty -m inside"
Check "tempfile and its cleanup"        ok      (Py "import tempfile, os; d = tempfile.mkdtemp(); open(os.path.join(d, 'x'), 'w').close(); __import__('shutil').rmtree(d)")
Check "write to NUL"                    ok      "echo x> NUL"
Check "write outside the workspace"     blocked "echo x> `"$outside\escaped`""
Check "write in home"                   blocked "echo x> `"%USERPROFILE%\.stockade-smoke`""
Check "rewrite .git/config"             blocked "echo [x]>> .git\config"
Check "plant a git hook"                blocked "echo exit 0> .git\hooks\pre-commit"
Check "swap .git/hooks out"             blocked "rename .git\hooks hooks-old"
Check "delete .git/config"              blocked "del /q .git\config && if exist .git\config exit 1"
Check "move .git away"                  blocked "rename .git git-old"
Check "change an ACL from inside"       blocked "icacls .git\config /grant *S-1-1-0:F"
if ($Mode -eq "elevated") {
    Check "read .env"                   blocked "type .env"
    Check "read an ssh key"             blocked "type `"%USERPROFILE%\.ssh\id_*`" 2>NUL | findstr ."
    Check "network is off"              blocked (Py "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)")
    Check "host loopback service is off" blocked (Py "import socket; socket.create_connection(('127.0.0.1', $hostPort), timeout=3)")
    Check "read src\.ENV.local"          blocked "type src\.ENV.local"
    # Proxy mode: the filtering proxy's loopback port is the only way out.
    $smokeProfile, $smokeConfig = "smoke-proxy", $proxyConfig
    Check "proxy: an allowed host"      ok      (Py "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/', timeout=20)")
    Check "proxy: a host not allowed"   blocked (Py "import urllib.request; urllib.request.urlopen('https://example.com/', timeout=20)")
    Check "proxy: around the proxy"     blocked (Py "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)")
    Check "proxy: host loopback service" blocked (Py "import socket; socket.create_connection(('127.0.0.1', $hostPort), timeout=3)")
    $smokeProfile, $smokeConfig = "workspace", "-"
    # read-only: nothing writable but a fresh private directory below TEMP, for this run only.
    $smokeProfile = "read-only"
    Check "read-only: write in the workspace" blocked "echo hi> ro.txt"
    Check "read-only: tempfile works"     ok      (Py "import tempfile; f = tempfile.NamedTemporaryFile(); f.write(b'x'); f.close()")
    Check "read-only: TEMP is private"    blocked "echo x> `"$env:TEMP\stockade-smoke-$tag`""
    $smokeProfile = "workspace"
} else {
    $smokeProfile, $smokeConfig = "workspace", "-"
    Check "workspace profile is refused" blocked "echo should not run"
}

# Outside the sandbox: stockade left no ACE on ~/.ssh (OpenSSH would reject the keys) nor on home.
foreach ($path in @("$env:USERPROFILE", "$env:USERPROFILE\.ssh")) {
    if (-not (Test-Path $path)) { continue }
    $acl = (icacls $path) -join "`n"
    if ($acl -match "S-1-15-3-|stockade-") { $script:failed++; Write-Output "FAIL  no stockade ACE on $path" }
    else { $script:passed++; Write-Output "pass  no stockade ACE on $path" }
}

$listener.Stop()
Pop-Location
Remove-Item -Recurse -Force $ws, $outside -ErrorAction SilentlyContinue
Write-Output "smoke-windows: $script:passed passed, $script:failed failed"
if ($script:failed -ne 0) { exit 1 }
