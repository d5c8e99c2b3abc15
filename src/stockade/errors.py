"""Errors a user can act on. None of them is ever shown as a traceback."""

from __future__ import annotations


class StockadeError(Exception):
    """Base class: the CLI prints the message and exits 2."""


class ConfigError(StockadeError):
    """A profile, config file or flag is invalid: names where, which key, and what is valid."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class UnsupportedPolicy(StockadeError):
    """The backend cannot enforce this Plan exactly, so nothing runs (fail closed)."""


class SandboxUnavailable(StockadeError):
    """This host cannot sandbox right now; the message is the doctor's explanation."""
