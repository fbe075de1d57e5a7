"""Problems found in a file, each pointing at a line and a key path."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


KeyPath = tuple[str | int, ...]


def format_key_path(path: KeyPath) -> str:
    """``("channels", 0, "mirrors", 1, "schedule")`` → ``channels[0].mirrors[1].schedule``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(root)"


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int
    path: KeyPath
    message: str
    severity: Severity = Severity.ERROR

    def format(self) -> str:
        """``FILE:LINE: key.path: message`` (warnings say so after the line number)."""
        where = f"{self.file}:{self.line}:"
        if self.severity is Severity.WARNING:
            where += " warning:"
        return f"{where} {format_key_path(self.path)}: {self.message}"
