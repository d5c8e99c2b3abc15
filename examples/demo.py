"""What a sandboxed command can and cannot do. Run it with:  stockade run -- python3 examples/demo.py"""

import os
import socket
import sys
import tempfile


def attempt(label: str, fn) -> None:
    try:
        fn()
        print(f"  allowed  {label}")
    except FileNotFoundError:
        print(f"  absent   {label}: there is none here to try")
    except OSError as exc:
        print(f"  blocked  {label}: {exc.strerror}")


def write(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("written inside the sandbox\n")
    os.unlink(path)


def read(path: str) -> None:
    with open(path) as fh:
        fh.read()


def connect() -> None:
    socket.create_connection(("pypi.org", 443), timeout=3).close()


def main() -> int:
    print(f"inside the sandbox, cwd {os.getcwd()}")
    attempt("write a file in the workspace", lambda: write("stockade-demo.txt"))
    attempt("write in $TMPDIR", lambda: tempfile.TemporaryFile().close())
    attempt("write in $HOME", lambda: write(os.path.expanduser("~/stockade-demo.txt")))
    attempt("write in /etc", lambda: write("/etc/stockade-demo.txt"))
    attempt("rewrite .git/config", lambda: open(".git/config", "a").close())
    attempt("read README.md", lambda: read("README.md"))
    attempt("read ~/.ssh/id_ed25519", lambda: read(os.path.expanduser("~/.ssh/id_ed25519")))
    attempt("read .env", lambda: read(".env"))
    attempt("connect to pypi.org:443", connect)
    leaked = [k for k in os.environ if "TOKEN" in k or "SECRET" in k or "KEY" in k]
    print(f"  secrets in the environment: {leaked or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
