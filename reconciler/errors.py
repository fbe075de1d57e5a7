"""Errors a user can fix, and the exit codes the command line maps them to.

Anything that is not a :class:`ReconcileError` is a bug in conda-reconcile and is
reported as such by the CLI's error boundary.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # user-facing error or failed apply
    CHANGES = 2  # plan --detailed-exitcode: changes present
    BUG = 3  # internal error
    INTERRUPTED = 130


class ReconcileError(Exception):
    """A condition the user can fix; ``hint`` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(ReconcileError):
    """The configuration file is missing, unreadable or invalid."""


class NotImplementedYet(ReconcileError):
    """A command that exists in the interface but has no implementation yet."""

    def __init__(self, command: str) -> None:
        super().__init__(
            f"`reconcile {command}` is not implemented yet",
            hint="see README.md for the commands available in this version",
        )


class PackageError(ReconcileError):
    """A package file that cannot be read or is not what its name says."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
