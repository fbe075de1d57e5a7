"""The kill harness's summary line (shown whatever pytest's capture and verbosity), and
no fork server outliving the module that started it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def _close_fork_servers() -> Iterator[None]:
    yield
    from tests.crash.harness import close_fork_servers

    close_fork_servers()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.crash.harness import TALLIES, steps_line, summary_line

    if TALLIES:
        terminalreporter.write_line(summary_line(TALLIES))
        terminalreporter.write_line(steps_line(TALLIES))
