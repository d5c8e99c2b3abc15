"""Spawning sandboxed processes: the one spawn path every entry point shares."""

from .process import Result, Sandboxed, prepare, run

__all__ = ["Result", "Sandboxed", "prepare", "run"]
