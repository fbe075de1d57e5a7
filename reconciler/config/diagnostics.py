"""Problems found in a file, each pointing at a line and a key path."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


KeyPath = tuple[str | int, ...]

# Line breaks and other control characters, which would split or garble a message line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``), so one problem stays one line."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


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
        # Keys and values come from the file: a key holding a newline must not split the line.
        return f"{where} {printable(format_key_path(self.path))}: {printable(self.message)}"
